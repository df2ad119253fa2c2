"""Checkpoint integrity: find the newest readable checkpoint, set bad ones aside.

A run resumes from the newest checkpoint whose every tensor reads back (the
index parses, the data is not truncated, the checksums match, every value is
finite). Checkpoints that fail are moved to `checkpoints/corrupt/` with a
warning that names them, so that the keep-N rotation never deletes the good
ones and a bad one is never picked again. If checkpoint files exist but none
is readable, the run refuses to start from scratch (pass --overwrite).

The `checkpoint` state file is rewritten to list every good checkpoint on
disk, with the timestamps tf.train.CheckpointManager needs to rotate them:
keep-N applies to what is on disk, whatever the state file said before.
Readers (bin/evaluate, bin/export) may race a live run's rotation: they read
the newest checkpoint that still exists.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import sys
from typing import Iterable, List, Optional, Tuple

_CKPT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")
_CKPT_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")


class CheckpointError(ValueError):
  """Checkpoints exist but none can be used; the message says what to do."""


def warn(message: str) -> None:
  print(f"WARNING: {message}", file=sys.stderr, flush=True)


def checkpoint_steps(directory) -> List[int]:
  """Steps of every ckpt-N in `directory` (an index or a data file), newest
  first."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  steps = {int(m.group(1)) for p in directory.iterdir()
           if (m := _CKPT_FILE.match(p.name))}
  return sorted(steps, reverse=True)


def verify(prefix) -> Optional[str]:
  """None if every tensor of checkpoint `prefix` reads back and is finite,
  else why not (one line)."""
  import numpy as np  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415
  prefix = str(prefix)
  if not os.path.exists(prefix + ".index"):
    return f"{os.path.basename(prefix)}.index is missing"
  try:
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    for name in sorted(reader.get_variable_to_shape_map()):
      value = reader.get_tensor(name)
      if dtypes[name].is_floating and not np.all(np.isfinite(value)):
        return f"{name} holds non-finite values"
  except Exception as error:  # noqa: BLE001  (any read error means unusable)
    text = " ".join(str(error).split())
    return f"unreadable ({type(error).__name__}: {text[:160]})"
  return None


def newest_readable(directory, overwrite: bool = False
                    ) -> Tuple[Optional[str], List[Tuple[str, str]]]:
  """(prefix of the newest good checkpoint or None, [(bad prefix, why)]).

  Bad checkpoints newer than the good one are moved to `corrupt/` and the
  `checkpoint` state file is rewritten to list the good ones, so that
  tf.train.CheckpointManager continues from the good one. Raises
  CheckpointError if checkpoint files exist but none is good (unless
  `overwrite`).
  """
  directory = pathlib.Path(directory)
  bad: List[Tuple[str, str]] = []
  good: List[str] = []
  for step in checkpoint_steps(directory):
    prefix = str(directory / f"ckpt-{step}")
    if good:  # older ones: keep, the manager's rotation handles them
      if os.path.exists(prefix + ".index"):
        good.append(prefix)
      continue
    problem = verify(prefix)
    if problem is None:
      good.append(prefix)
    else:
      bad.append((prefix, problem))
  if bad and not good and not overwrite:
    names = ", ".join(os.path.basename(p) for p, _ in bad)
    raise CheckpointError(
        f"no readable checkpoint in {directory} ({names}: {bad[0][1]}); "
        f"refusing to start from step 0 over them. Pass --overwrite to "
        f"delete this run and start again.")
  for prefix, problem in bad:
    target = _quarantine(prefix)
    warn(f"checkpoint {prefix} is unusable: {problem}; moved it to {target}"
         + (f"; resuming from the previous good checkpoint {good[0]}"
            if good else ""))
  state = directory / "checkpoint"
  listed = _state_lists(state, good)
  if good and (bad or listed is not True):
    if not bad and listed is not None:
      warn(f"{state} is missing, unreadable or stale; resuming from the "
           f"newest readable checkpoint {good[0]}")
    _write_state(directory, good)
  return (good[0] if good else None), bad


def _state_lists(state: pathlib.Path, good: List[str]) -> Optional[bool]:
  """True if the state file names good[0] as the latest and lists exactly
  the checkpoints `good` with their timestamps (so the manager rotates all
  of them); None if only the list of older ones differs; else False."""
  import tensorflow as tf  # noqa: PLC0415
  try:
    parsed = tf.train.get_checkpoint_state(str(state.parent))
  except Exception:  # noqa: BLE001  (garbage in the state file)
    return False
  if parsed is None or not good or os.path.basename(
      parsed.model_checkpoint_path) != os.path.basename(good[0]):
    return False
  listed = [os.path.basename(p) for p in parsed.all_model_checkpoint_paths]
  return (sorted(listed) == sorted(os.path.basename(p) for p in good)
          and len(parsed.all_model_checkpoint_timestamps) == len(listed)) \
      or None


def _write_state(directory: pathlib.Path, good: List[str]) -> None:
  """Lists `good` (newest first) in the state file, oldest first, each with
  its index file's time. Without timestamps tf.train.CheckpointManager
  treats every listed checkpoint as preserved and never rotates it."""
  import tensorflow as tf  # noqa: PLC0415
  oldest_first = list(reversed(good))
  times = [os.path.getmtime(p + ".index") for p in oldest_first]
  state = directory / "checkpoint"
  if state.exists():
    state.unlink()  # garbage would make the update fail to parse it
  # The one TF function that writes this file is deprecated (for
  # CheckpointManager, which cannot list checkpoints it did not save): its
  # notice would print on every rewrite.
  from tensorflow.python.util import deprecation  # noqa: PLC0415
  with deprecation.silence():
    tf.compat.v1.train.update_checkpoint_state(
        str(directory), os.path.basename(oldest_first[-1]),
        all_model_checkpoint_paths=[os.path.basename(p)
                                    for p in oldest_first],
        all_model_checkpoint_timestamps=times, last_preserved_timestamp=0.0)


def _quarantine(prefix: str) -> str:
  """Moves ckpt-N.* to corrupt/ (kept for inspection, never used again)."""
  path = pathlib.Path(prefix)
  target = path.parent / "corrupt"
  target.mkdir(exist_ok=True)
  for file in path.parent.glob(path.name + ".*"):
    os.replace(file, target / file.name)
  return str(target / path.name)


def check_finite(variables: Iterable, step: int, latest: Optional[str]) -> None:
  """Raises FloatingPointError naming the first non-finite variable (weights,
  buffers and optimizer slots alike): a bad checkpoint is worse than none."""
  import tensorflow as tf  # noqa: PLC0415
  for variable in variables:
    value = tf.convert_to_tensor(variable)
    if not value.dtype.is_floating:
      continue
    if not bool(tf.reduce_all(tf.math.is_finite(value))):
      name = getattr(variable, "path", None) or variable.name
      raise FloatingPointError(
          f"variable {name} is not finite at step {step}; not saving. The "
          f"last good checkpoint is {latest or '(none)'}: rerun with a "
          f"smaller --config.train.learning_rate to resume from it.")


def clean_temp_files(workdir) -> List[str]:
  """Removes what a killed run may leave: checkpoint.tmp*, ckpt-N_temp/ and
  .NAME.tmp-PID files of dead processes. Returns the removed paths."""
  workdir = pathlib.Path(workdir)
  removed = []
  candidates = []
  ckpt_dir = workdir / "checkpoints"
  if ckpt_dir.is_dir():
    candidates += list(ckpt_dir.glob("checkpoint.tmp*"))
    candidates += list(ckpt_dir.glob("*_temp"))
    candidates += list(ckpt_dir.glob("*_temp_*"))
  if workdir.is_dir():
    for path in workdir.glob(".*.tmp-*"):
      pid = path.name.rsplit("-", 1)[-1]
      if not (pid.isdigit() and _alive(int(pid))):
        candidates.append(path)
  for path in candidates:
    if path.is_dir():
      shutil.rmtree(path, ignore_errors=True)
    else:
      path.unlink(missing_ok=True)
    removed.append(str(path))
  return removed


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


# How often a reader looks again after a live run rotated away the
# checkpoint it was reading (each look is one listing of checkpoints/).
READ_ATTEMPTS = 10


def newest_verified(directory) -> Optional[str]:
  """For readers (bin/evaluate, bin/export): the newest checkpoint that
  verifies, warning about (but not moving) newer bad ones; None if none.

  One that disappears while it is read (a live run's keep-N rotation
  deleted it) is no fault: the listing is read again.
  """
  warned = set()
  for _ in range(READ_ATTEMPTS):
    rotated = False
    for step in checkpoint_steps(directory):
      prefix = str(pathlib.Path(directory) / f"ckpt-{step}")
      had_index = os.path.exists(prefix + ".index")
      problem = verify(prefix)
      if problem is None:
        return prefix
      if had_index and not os.path.exists(prefix + ".index"):
        rotated = True
        break
      if prefix not in warned:
        warned.add(prefix)
        warn(f"checkpoint {prefix} is unusable: {problem}; using an older "
             f"one")
    if not rotated:
      return None
  return None


def restore_newest(checkpoint, directory) -> str:
  """Restores the newest checkpoint that verifies into `checkpoint` (a
  tf.train.Checkpoint; for readers) and returns its prefix.

  A live run's rotation may delete that checkpoint between the listing and
  the read; then the newest one that still exists is read instead. `read`,
  not `restore`: a failed `restore` leaves the root's save_counter waiting
  for the deleted checkpoint, and the next `restore` fails on it.
  """
  for _ in range(READ_ATTEMPTS):
    prefix = newest_verified(directory)
    if prefix is None:
      raise CheckpointError(f"no readable checkpoint in {directory}; train "
                            f"first")
    try:
      checkpoint.read(prefix).expect_partial()
      return prefix
    except Exception:  # noqa: BLE001  (re-raised unless rotated away)
      if os.path.exists(prefix + ".index"):
        raise
  raise CheckpointError(
      f"the checkpoints in {directory} were deleted while being read, "
      f"{READ_ATTEMPTS} times: a run in that workdir keeps very few "
      f"(train.keep_checkpoints) and saves very often; retry, or read a "
      f"copy of the workdir")
