"""bin/experiments stops when told: SIGTERM or Ctrl-C during an experiment's
runs (gap_map.run_plan) starts no queued run, forwards the signal once to
the running bin/train children (which save a checkpoint and exit), writes
no result.json for them (so the next run resumes them) and exits 143 / 130.

The plan runs in a subprocess (tests/experiments_stop_check.py) with fake
bin/train children that record the signal they get: no training here.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments import train_processes
from tests.experiments_stop_check import JOBS
from tests.experiments_stop_check import RUNS
from tests.experiments_stop_check import STUBBORN
from tests.faults.harness import wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHECK = str(ROOT / "tests" / "experiments_stop_check.py")
# A bound on a hang (a python start-up on a loaded 2-core machine takes
# seconds), not a timing the test measures.
BOUND_SECONDS = 120


def _started(outdir):
  return [json.loads(path.read_text())
          for path in sorted(outdir.glob("run*/started.json"))]


def _end(process):
  """Kills what a failed test leaves running (the plan, its fake runs)."""
  if process.poll() is None:
    process.kill()
    process.wait()


def _stop_plan(outdir, send, *flags):
  """Starts the plan (with `flags`), waits until its `JOBS` runs started,
  calls `send(plan)`; returns the plan's (exit code, stderr)."""
  plan = subprocess.Popen([sys.executable, CHECK, str(outdir), *flags],
                          cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)
  try:
    wait_for(lambda: len(_started(outdir)) == JOBS, plan, BOUND_SECONDS)
    send(plan)
    _, err = plan.communicate(timeout=BOUND_SECONDS)
  finally:
    _end(plan)
    for child in _started(outdir):
      try:
        os.kill(child["pid"], signal.SIGKILL)
      except ProcessLookupError:
        pass
  return plan.returncode, err


@pytest.mark.parametrize("signum, code, send", [
    (signal.SIGTERM, 143, lambda plan: plan.send_signal(signal.SIGTERM)),
    # Ctrl-C in a terminal: the signal goes to the whole process group.
    (signal.SIGINT, 130, lambda plan: os.killpg(plan.pid, signal.SIGINT)),
], ids=["sigterm_to_the_process", "ctrl_c_to_the_group"])
def test_a_signal_stops_the_runs_and_starts_no_queued_one(tmp_path, signum,
                                                         code, send):
  returncode, err = _stop_plan(tmp_path, send)
  assert returncode == code, err
  name = signal.Signals(signum).name
  started = sorted(path.parent for path in tmp_path.glob("run*/started.json"))
  assert len(started) == JOBS, err  # the queued runs never started
  for workdir in started:
    assert (workdir / "signal.txt").read_text() == name
  for run in _started(tmp_path):  # their own group: one signal, forwarded
    assert run["process_group"] == run["pid"] != os.getpgid(0)
  for seed in range(RUNS):
    workdir = tmp_path / f"run{seed}"
    assert not (workdir / "result.json").exists()  # not cached: resumed
    if workdir not in started:  # nothing written for a run never started
      assert not workdir.exists()
  assert (f"[stop_check] stopping: {name} sent to the {JOBS} running "
          f"run(s)") in err
  assert f"{RUNS - JOBS} queued run(s) not started" in err


def _gone(pid) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


def test_a_second_signal_kills_the_runs_at_once(tmp_path):
  """Runs slow to save (they ignore the forwarded signal here): a second
  SIGTERM while bin/experiments waits for them ends them and it, long
  before the stop timeout (the test's bound is below it)."""
  assert train_processes.STOP_TIMEOUT_SECONDS > BOUND_SECONDS
  def twice(plan):
    plan.send_signal(signal.SIGTERM)
    wait_for(lambda: len(list(tmp_path.glob("run*/signal.txt"))) == JOBS,
             plan, BOUND_SECONDS)
    plan.send_signal(signal.SIGTERM)
  returncode, err = _stop_plan(tmp_path, twice, STUBBORN)
  assert returncode == 143, err
  assert all(_gone(run["pid"]) for run in _started(tmp_path)), err
  assert not list(tmp_path.glob("run*/result.json"))


def test_runs_that_outlast_the_stop_timeout_are_killed_and_named(tmp_path):
  returncode, err = _stop_plan(
      tmp_path, lambda plan: plan.send_signal(signal.SIGTERM), STUBBORN,
      "--stop_timeout=1")
  assert returncode == 143, err
  assert all(_gone(run["pid"]) for run in _started(tmp_path)), err
  killed = [line for line in err.splitlines() if "killed after 1 s" in line]
  assert len(killed) == 1, err
  for seed in range(JOBS):
    assert str(tmp_path / f"run{seed}") in killed[0]


def test_a_run_stopped_by_its_signal_is_a_failed_run_without_result(
    tmp_path, monkeypatch):
  """run_one of a bin/train that exits 143 (stopped, checkpoint saved)
  raises, and writes no result.json: the next run resumes it."""
  monkeypatch.setattr(gap_map, "train_command", lambda *args: [
      sys.executable, "-c", "raise SystemExit(143)"])
  workdir = tmp_path / "run"
  with pytest.raises(RuntimeError, match="exit code 143"):
    gap_map.run_one(gap_map.CELLS[0], "bp", 0, workdir, 10)
  assert (workdir / "train.log").exists()
  assert not (workdir / "result.json").exists()


def test_no_run_starts_once_a_stop_began(tmp_path):
  processes = train_processes.TrainProcesses()
  processes.stop(signal.SIGTERM, "label", queued=[], timeout=0)
  with pytest.raises(train_processes.RunStopped):
    processes.start([sys.executable, "-c", ""], tmp_path / "run", {})
  assert not (tmp_path / "run").exists()
  processes.allow_starts()  # the next plan
  process = processes.start([sys.executable, "-c", ""], tmp_path / "run",
                            dict(os.environ))
  assert processes.wait(process) == 0


@pytest.mark.parametrize("stop, signum", [
    (KeyboardInterrupt(), signal.SIGINT),
    (SystemExit(143), signal.SIGTERM),
    (SystemExit(130), signal.SIGINT),
    (ValueError("an error in the plan"), signal.SIGTERM),
])
def test_the_forwarded_signal_is_the_one_that_stopped_the_plan(stop, signum):
  assert train_processes.signal_of(stop) == signum
