"""The commands a program prints for the user to run next work as shown,
outside the activated venv (bin/* then starts under a python without
TensorFlow unless the command names the interpreter)."""

import os
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_make_digit_videos_next_command_runs_as_printed(tmp_path):
  env = dict(os.environ, PATH="/usr/bin:/bin")  # no venv on PATH
  env.pop("VIRTUAL_ENV", None)
  made = subprocess.run(
      [sys.executable, "bin/make_digit_videos",
       f"--output_dir={tmp_path / 'videos'}", "--config.data.num_train=10",
       "--config.data.num_test=10", "--config.data.num_frames=4"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert made.returncode == 0, made.stderr[-3000:]
  lines = made.stdout.splitlines()
  following = lines[lines.index(next(l for l in lines
                                     if l.endswith("Next:"))) + 1:]
  prepare, train = (shlex.split(line) for line in following[:2])
  assert pathlib.Path(train[0]).resolve() == pathlib.Path(
      sys.executable).resolve()
  prepared = subprocess.run(prepare, cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  assert (tmp_path / "videos_prepared" / "metadata.json").is_file()
