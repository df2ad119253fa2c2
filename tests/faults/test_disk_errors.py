"""A full disk or a read-only workdir is the user's to fix: exit 2 with the
path and what to do, never a traceback; bin/evaluate still evaluates a
read-only (archived) run.

The real file systems (a small tmpfs, a read-only bind mount) need root;
without it a read-only directory is made with chmod, and a full disk is
only tested through the error mapping.
"""

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from sideways_tf.run import checkpoints
from sideways_tf.run import user_errors
from tests.faults import harness


def _mount(*args):
  if os.geteuid() != 0:
    return False
  return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def _read_only(directory, view):
  """`view`: `directory` read-only (a bind mount as root, else chmod)."""
  view.mkdir()
  if _mount("--bind", str(directory), str(view)):
    try:
      if not _mount("-o", "remount,bind,ro", str(view)):
        pytest.skip("cannot remount a bind mount read-only here")
      yield view
    finally:
      subprocess.run(["umount", str(view)], check=True)
  elif os.geteuid() != 0:
    view.rmdir()
    shutil.copytree(directory, view)
    for path in [view, *view.rglob("*")]:
      path.chmod(path.stat().st_mode & ~0o222)
    try:
      yield view
    finally:
      for path in [view, *view.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
  else:
    pytest.skip("root without mount: no read-only directory to test with")


def _run(tool, *args):
  return subprocess.run([sys.executable, str(harness.ROOT / "bin" / tool),
                         *args], capture_output=True, text=True, timeout=600)


def _short_error(result, *expected):
  """Exit 2; the error is at most 3 lines (from `<tool>: error:` on)."""
  assert result.returncode == user_errors.EXIT_USER, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  first = [i for i, line in enumerate(lines) if ": error: " in line]
  assert first, lines
  lines = lines[first[0]:]
  assert len(lines) <= 3, lines
  for text in expected:
    assert text in "\n".join(lines), lines


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device", "/w/eval.json"),
    tf.errors.ResourceExhaustedError(
        None, None, "{{function_node __wrapped__SaveV2_dtypes_36_device_/"
        "job:localhost/replica:0/task:0/device:CPU:0}} /w/checkpoints/"
        "ckpt-11_temp/part-00000-of-00001.index.tempstate1; No space left "
        "on device [Op:SaveV2]"),
    OSError(errno.EROFS, "Read-only file system", "/w/.lock"),
    tf.errors.PermissionDeniedError(
        None, None, "/w/eval/events.out.tfevents.1; Read-only file system\n"
        "\tCreating writable file /w/eval/events.out.tfevents.1"),
])
def test_storage_errors_exit_2_with_the_path_and_the_fix(error, capsys):
  def main(argv):
    raise error

  with pytest.raises(SystemExit) as exit_info:
    user_errors.guard(main)(["train"])
  assert exit_info.value.code == user_errors.EXIT_USER
  err = capsys.readouterr().err
  assert re.search(r"error: /w/[\w.]", err.splitlines()[0]), err
  assert ("Free space there" if "space" in str(error) else "writable") in err


@pytest.mark.slow  # four bin/ processes
def test_read_only_workdir(trained, data_dir, tmp_path):
  with _read_only(trained, tmp_path / "read_only") as view:
    before = {p.name: p.stat().st_mtime for p in view.rglob("*")}
    refused = _run("train", f"--config={harness.TINY}", f"--workdir={view}",
                   f"--config.data.data_dir={data_dir}",
                   "--config.train.num_steps=6")
    _short_error(refused, str(view))
    evaluated = _run("evaluate", f"--workdir={view}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    printed = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
    assert 0 <= printed["clip_accuracy"] <= 1
    assert f"{view} is not writable" in evaluated.stderr
    assert "--output_dir" in evaluated.stderr
    elsewhere = _run("evaluate", f"--workdir={view}",
                     f"--output_dir={tmp_path / 'out'}")
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written == dict(printed, step=4)
    assert list((tmp_path / "out" / "eval").glob("events.out.tfevents.*"))
    exported = _run("export", f"--workdir={view}",
                    f"--output={tmp_path / 'exported'}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert {p.name: p.stat().st_mtime for p in view.rglob("*")} == before


@pytest.mark.slow  # two bin/train processes
def test_full_disk_stops_with_exit_2_and_the_run_resumes(trained, data_dir,
                                                         tmp_path):
  disk = tmp_path / "disk"
  disk.mkdir()
  if not _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)):
    pytest.skip("no tmpfs mount (needs root)")
  try:
    workdir = disk / "run"
    shutil.copytree(trained, workdir)
    # Leave room for a few checkpoints of the tiny model, not for 200.
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(bytes(free - 120 * 1024))
    args = [f"--config={harness.TINY}", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}",
            "--config.train.num_steps=200", "--config.train.eval_every=0",
            "--config.train.checkpoint_every=1",
            "--config.train.keep_checkpoints=200"]
    full = _run("train", *args)
    _short_error(full, f"error: {workdir}/",
                 "No space left on device", "Free space there")
    saved = checkpoints.checkpoint_steps(workdir / "checkpoints")
    assert saved[0] > 4  # it trained until the disk was full
    assert checkpoints.verify(harness.ckpt(workdir, saved[0], "")) is None
    (disk / "filler").unlink()
    resumed = _run("train", *args[:-3], "--config.train.num_steps="
                   f"{saved[0] + 2}", "--config.train.checkpoint_every=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {harness.ckpt(workdir, saved[0], '')} at step " \
        f"{saved[0]}." in resumed.stdout
  finally:
    subprocess.run(["umount", str(disk)], check=True)
