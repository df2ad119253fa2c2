"""The bin/train processes of an experiment's runs, and stopping them.

`gap_map.run_plan` runs `--jobs` runs at once, each a `bin/train` child
started by a worker thread (`gap_map.run_one`). A signal reaches only the
main thread of bin/experiments (as KeyboardInterrupt or SystemExit, see
run/user_errors.py), so the children are kept here, where the main thread's
stop path can reach them: no new run starts once a stop began, the running
ones get the signal forwarded (bin/train then saves a checkpoint and exits
130 or 143, so the next bin/experiments resumes them), and they are waited
for, then killed if they outlast a bound.

Each child runs in its own process group, so a Ctrl-C in the terminal (or a
signal to bin/experiments' whole group) reaches only bin/experiments, which
forwards it once: bin/train takes a second signal as "stop now, without
saving".
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, Iterable, List, Optional, Sequence

# How long the stopped runs may take to save their checkpoint and exit (the
# step in progress, an evaluation due, the save) before they are killed.
STOP_TIMEOUT_SECONDS = 300


class RunStopped(Exception):
  """A run was not started: its plan is stopping."""


class TrainProcesses:
  """The running children of one plan; thread-safe (workers start and end
  runs while the main thread may stop them)."""

  def __init__(self):
    self._lock = threading.Lock()
    self._running: Dict[subprocess.Popen, pathlib.Path] = {}
    self._stopping = False
    self._refused = 0  # runs a worker took after the stop began

  def allow_starts(self) -> None:
    """A new plan: runs may start again (after an earlier plan stopped)."""
    with self._lock:
      self._stopping, self._refused = False, 0

  def start(self, command: Sequence[str], workdir: pathlib.Path,
            env: Dict[str, str]) -> subprocess.Popen:
    """Starts `command` with its output in workdir/train.log, unless the
    plan is stopping (RunStopped; nothing is written then). The check and
    the start are one step under the lock: a stop either sees this run or
    prevents it."""
    with self._lock:
      if self._stopping:
        self._refused += 1
        raise RunStopped(f"{workdir}: not started, the plan is stopping")
      workdir.mkdir(parents=True, exist_ok=True)
      with open(workdir / "train.log", "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, process_group=0)
      self._running[process] = workdir
      return process

  def wait(self, process: subprocess.Popen) -> int:
    """The exit code of a started run, once it ended."""
    try:
      return process.wait()
    finally:
      with self._lock:
        self._running.pop(process, None)

  def stop(self, signum: int, label: str,
           queued: Iterable[concurrent.futures.Future],
           timeout: Optional[float] = None) -> None:
    """Starts no more runs (cancels the `queued` futures), forwards `signum`
    to the running ones, says so in one line, and waits for them (`timeout`
    in all, then kills the rest). A second signal while waiting kills them
    at once."""
    timeout = STOP_TIMEOUT_SECONDS if timeout is None else timeout
    with self._lock:
      self._stopping = True  # first: a worker taking a run now cannot start it
      running = dict(self._running)
    try:
      cancelled = sum(future.cancel() for future in queued)
      for process in running:
        process.send_signal(signum)
      print(f"[{label}] stopping: {signal.Signals(signum).name} sent to the "
            f"{len(running)} running run(s), which save a checkpoint and "
            f"exit (a second signal kills them now); "
            f"{cancelled + self._refused} queued run(s) not started. Rerun "
            f"the same command to resume.", file=sys.stderr, flush=True)
      left = _wait_all(list(running), timeout)
    except BaseException:  # the second signal
      _kill(list(running))
      raise
    if left:
      print(f"[{label}] killed after {timeout:.0f} s (they resume from their "
            f"last checkpoint): {', '.join(str(running[p]) for p in left)}",
            file=sys.stderr, flush=True)
      _kill(left)


def _wait_all(processes: List[subprocess.Popen],
              timeout: float) -> List[subprocess.Popen]:
  """Waits for every process until `timeout` seconds in all have passed;
  returns those still running."""
  deadline = time.monotonic() + timeout
  for process in processes:
    try:
      process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      pass
  return [process for process in processes if process.poll() is None]


def _kill(processes: List[subprocess.Popen]) -> None:
  for process in processes:
    if process.poll() is None:
      process.kill()
      process.wait()


def signal_of(stop: BaseException) -> int:
  """The signal a stop of the main thread came from, to forward to the
  runs: SIGINT for Ctrl-C (KeyboardInterrupt), the signal of a
  SystemExit(128 + n) (user_errors: SIGTERM exits 143), else SIGTERM (an
  error: the runs save a checkpoint all the same)."""
  if isinstance(stop, KeyboardInterrupt):
    return signal.SIGINT
  code = getattr(stop, "code", None)
  if isinstance(stop, SystemExit) and isinstance(code, int) and code > 128:
    try:
      return signal.Signals(code - 128)
    except ValueError:
      pass
  return signal.SIGTERM
