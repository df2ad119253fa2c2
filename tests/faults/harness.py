"""What the fault-injection tests share: the tiny config, a trained run to
copy, checkpoint paths, file damage, and `bin/train` as a subprocess."""

import pathlib
import shutil
import sys
import time

from sideways_tf.training import train_lib
from tests.faults import tiny_config as tiny

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
TINY = str(ROOT / "tests" / "faults" / "tiny_config.py")


def config(data_dir, **train):
  """The tiny config on the synthetic data in `data_dir`, with `train`
  overrides."""
  cfg = tiny.get_config()
  cfg.data.data_dir = str(data_dir)
  cfg.train.update(train)
  return cfg


def train_once(workdir, data_dir):
  """A 4-step run with checkpoints ckpt-2 and ckpt-4 (for a module-scoped
  fixture; tests copy it with `copy_run`)."""
  result = train_lib.train(config(data_dir), workdir)
  assert result["step"] == 4
  return workdir


def copy_run(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


def ckpt(workdir, step, suffix=".index"):
  """workdir/checkpoints/ckpt-<step><suffix>; suffix ".data": its data
  file, "": the prefix."""
  if suffix == ".data":
    return next((workdir / "checkpoints").glob(f"ckpt-{step}.data-*"))
  return workdir / "checkpoints" / f"ckpt-{step}{suffix}"


def truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def flip(path):
  data = bytearray(path.read_bytes())
  for i in range(len(data) // 4, len(data) // 2):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def train_cmd(workdir, data_dir, *extra):
  """bin/train on the tiny config."""
  return [sys.executable, str(ROOT / "bin" / "train"), f"--config={TINY}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          *extra]


def wait_for(predicate, process, seconds=600):
  """Polls `predicate` until true; fails if `process` ends first or after
  `seconds` (a bound on a hang: a bin/train start-up takes minutes on a
  loaded 2-core machine)."""
  deadline = time.time() + seconds
  while time.time() < deadline:
    if predicate():
      return
    assert process.poll() is None, process.communicate()
    time.sleep(0.2)
  raise AssertionError("timed out")
