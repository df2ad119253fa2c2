"""An experiment's plan with fake bin/train runs, to be stopped by a signal.

Usage: python tests/experiments_stop_check.py OUTDIR [--stubborn]
    [--stop_timeout=SECONDS]
  gap_map.run_plan of 4 runs (OUTDIR/run0 .. run3), --jobs=2, under
  user_errors.guard as bin/experiments runs it; each run is this file with
  --child instead of bin/train. --stop_timeout sets
  train_processes.STOP_TIMEOUT_SECONDS.
python tests/experiments_stop_check.py --child WORKDIR [--stubborn]
  The fake bin/train: writes WORKDIR/started.json (its pid and process
  group), waits for SIGINT or SIGTERM, writes the signal's name to
  WORKDIR/signal.txt and exits 128 + its number, as bin/train does after
  saving its checkpoint. --stubborn: it records the signal and goes on
  waiting (a save that never ends), until it is killed.

No TensorFlow: the plan's plumbing only (tests/test_experiments_stop.py).
"""

import json
import os
import pathlib
import signal
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sideways_tf.paper_experiments import gap_map  # noqa: E402
from sideways_tf.paper_experiments import train_processes  # noqa: E402
from sideways_tf.run import user_errors  # noqa: E402

RUNS = 4
JOBS = 2
STUBBORN = "--stubborn"


def fake_train(workdir: pathlib.Path, stubborn: bool) -> int:
  """Waits for the stop signal (blocked first, so none is missed)."""
  stops = {signal.SIGINT, signal.SIGTERM}
  signal.pthread_sigmask(signal.SIG_BLOCK, stops)
  (workdir / "started.json").write_text(json.dumps(
      {"pid": os.getpid(), "process_group": os.getpgid(0)}))
  received = signal.sigwait(stops)
  (workdir / "signal.txt").write_text(signal.Signals(received).name)
  while stubborn:
    signal.sigwait(stops)
  return user_errors.signal_exit_code(received)


def run_plan(argv) -> None:
  outdir = pathlib.Path(argv[1])
  child = [sys.executable, __file__, "--child"]
  for flag in argv[2:]:
    if flag == STUBBORN:
      child.append(STUBBORN)
    else:
      train_processes.STOP_TIMEOUT_SECONDS = float(flag.split("=")[1])
  gap_map.train_command = lambda cell, algorithm, seed, workdir, *_: [
      *child, str(workdir)]
  todo = [(gap_map.CELLS[0], "bp", seed, outdir / f"run{seed}")
          for seed in range(RUNS)]
  gap_map.run_plan("stop_check", todo, steps=10, jobs=JOBS)


if __name__ == "__main__":
  if sys.argv[1] == "--child":
    sys.exit(fake_train(pathlib.Path(sys.argv[-1]), STUBBORN in sys.argv))
  sys.exit(user_errors.guard(run_plan)(sys.argv))
