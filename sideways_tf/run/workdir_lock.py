"""One training run per workdir: an exclusive lock on `workdir/.lock`.

The lock is an flock(2) on the file, so the kernel releases it on any exit,
kill -9 included; the file records the holder (PID, host, command, start
time) so that a refusal can name it, and a lock left by a process that no
longer runs is reported as stale and taken over.

An flock lives on the file, not on its path: if the workdir is deleted (or
moved) under a live run, a second run can lock a new file at the same path.
The holder therefore checks before each checkpoint save that the path still
names the file it locked (device and inode), and stops if not
(:class:`WorkdirLockLostError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import sys
import time

LOCK_NAME = ".lock"


class WorkdirLockedError(RuntimeError):
  """Another live process holds the workdir."""


class WorkdirLockLostError(RuntimeError):
  """The lock file this run holds is no longer at its path."""


class WorkdirLock:
  """Holds `workdir/.lock` from acquire() until release() or process exit."""

  def __init__(self, workdir):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_NAME
    self._fd = None

  def acquire(self) -> "WorkdirLock":
    if self.workdir.exists() and not self.workdir.is_dir():
      raise NotADirectoryError(
          f"--workdir {self.workdir} is a file, not a directory; pass a "
          f"directory path (it is created if missing)")
    self.workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      raise WorkdirLockedError(
          f"workdir {self.workdir} is in use by {describe(read_holder(self.path))}"
          f" (lock {self.path}). Wait for it to finish or stop it, or use "
          f"another --workdir.") from None
    previous = read_holder(self.path)
    if previous.get("pid") and not _same_process(previous):
      print(f"Note: took over a stale lock on {self.workdir} left by "
            f"{describe(previous)}, which is no longer running.",
            file=sys.stderr, flush=True)
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "command": " ".join(sys.argv), "started": time.strftime(
                  "%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    self._fd = fd
    return self

  def check(self, doing: str = "saving") -> None:
    """Raises WorkdirLockLostError unless `path` is still the file this
    process locked: the workdir was deleted, moved or replaced meanwhile,
    and another run may be writing there now."""
    if self._fd is None:
      return
    held = os.fstat(self._fd)
    try:
      now = os.stat(self.path)
    except OSError:
      now = None
    if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
      state = "gone" if now is None else "another file"
      raise WorkdirLockLostError(
          f"the lock {self.path} of this run is {state}: {self.workdir} was "
          f"deleted, moved or replaced while the run was running; stopped "
          f"before {doing}, so as not to write over another run.\nCheck "
          f"{self.workdir}, then rerun the same command (or use another "
          f"--workdir).")

  def release(self) -> None:
    if self._fd is None:
      return
    with contextlib.suppress(OSError):
      os.ftruncate(self._fd, 0)
    os.close(self._fd)  # closing drops the flock
    self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()

  def __del__(self):
    self.release()


def read_holder(path) -> dict:
  try:
    return json.loads(pathlib.Path(path).read_text() or "{}")
  except (OSError, ValueError):
    return {}


def describe(holder: dict) -> str:
  if not holder.get("pid"):
    return "another process"
  text = f"PID {holder['pid']} on {holder.get('host', '?')}"
  if holder.get("started"):
    text += f" since {holder['started']}"
  if holder.get("command"):
    text += f" ({holder['command']})"
  return text


def _same_process(holder: dict) -> bool:
  return (holder.get("pid") == os.getpid()
          and holder.get("host") == socket.gethostname())


def is_chief_from_env() -> bool:
  """Whether TF_CONFIG makes this process the chief (worker index 0), read
  without TensorFlow: only the chief writes, so only it takes the lock."""
  try:
    config = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
  except ValueError:
    return True
  task = config.get("task", {})
  has_chief = bool(config.get("cluster", {}).get("chief"))
  if task.get("type") == "chief":
    return True
  return not has_chief and int(task.get("index", 0)) == 0


@contextlib.contextmanager
def hold(workdir, enabled: bool = True):
  """`with hold(workdir):` the body runs with the workdir locked."""
  if not enabled:
    yield None
    return
  lock = WorkdirLock(workdir).acquire()
  try:
    yield lock
  finally:
    lock.release()
