"""A program's start-up: `--help` exits 0 without loading TensorFlow, and a
signal before training ends it with one line (docs/robustness.md)."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

import sideways_tf
from sideways_tf.run import user_errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAMS = sorted(p.name for p in (ROOT / "bin").iterdir())
TF_NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cuda",
            "cpu_feature_guard", "cuInit", "I0000", "E0000")

# Runs `bin/<program> --help` as bin/ does, refusing any import of
# TensorFlow, Keras or NumPy (the refusal would be a traceback).
HELP_PROBE = """
import sys
class Refuse:
  def find_spec(self, fullname, path=None, target=None):
    if fullname.split(".")[0] in ("tensorflow", "keras", "numpy"):
      raise ImportError("--help imported " + fullname)
sys.meta_path.insert(0, Refuse())
sys.argv = ["bin/{program}", "--help"]
from sideways_tf.apps.{program} import run
run()
"""


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_exits_0_without_loading_tensorflow(program):
  result = subprocess.run(
      [sys.executable, "-c", HELP_PROBE.format(program=program)], cwd=ROOT,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"bin/{program}:\n  --" in result.stdout  # its own flags, listed
  assert result.stderr == ""


def test_train_help_names_every_algorithm_and_the_config_flag():
  result = subprocess.run([sys.executable, str(ROOT / "bin" / "train"),
                           "--help"], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0
  algorithm_help = re.search(r"--algorithm:(.*?)\n  --", result.stdout,
                             re.S).group(1)
  for name in sideways_tf.ALGORITHMS:
    assert name in algorithm_help, name
  assert "--config: Experiment config file" in result.stdout


def _handles_sigterm(pid) -> bool:
  """The process has its own SIGTERM handler (the kernel's mask of caught
  signals): quiet_start has run, TensorFlow is loading or loaded."""
  try:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
  except FileNotFoundError:
    return False
  caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M).group(1),
               16)
  return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(),
                    reason="reads the signal mask from /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_prints_one_line(tmp_path, signum):
  """Sent once the program handles signals, while TensorFlow loads (or,
  on a fast machine, just after): one line naming the signal, 128 + its
  number, no traceback or TensorFlow lines, nothing written."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  process = subprocess.Popen(
      [sys.executable, str(ROOT / "bin" / "train"),
       f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 300  # a bound, not an expected duration
    while not _handles_sigterm(process.pid):
      assert process.poll() is None and time.monotonic() < deadline
      time.sleep(0.01)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == user_errors.signal_exit_code(signum), output
  lines = [line for line in output.splitlines()
           if line.strip() and not line.startswith("Training ")]
  name = signal.Signals(signum).name
  assert len(lines) == 1, output[-3000:]
  assert re.fullmatch(rf"train: (stopped by {name}.*|interrupted)", lines[0])
  for noise in TF_NOISE:
    assert noise not in output, noise
  assert not (tmp_path / "run").exists()
