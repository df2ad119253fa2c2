"""A training run's directory: what it holds and how it is checked.

  workdir/config.json        the config the run was started with
  workdir/model_info.json    num_classes, frame_shape, class_names (and the
                             split of config.model.balance, the choice of
                             replay_modules="auto")
  workdir/checkpoints/       tf.train.CheckpointManager (model, optimizer,
                             step, pipeline state)
  workdir/train/, eval/      TensorBoard event files
  workdir/eval.json          the last evaluation
  workdir/last_checkpoint.json  the newest checkpoint saved (step, path): a
                             workdir whose checkpoints/ lost it is refused
                             rather than trained again from step 0
  workdir/.lock              held by the running `bin/train` (run/workdir_lock.py)
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Dict

import ml_collections

from sideways_tf import configs
from sideways_tf.run import checkpoints
from sideways_tf.run import workdir_lock
from sideways_tf.run.files import atomic_write_text

# Keys that may change between a run and its resumption (how long, how often,
# how loud); anything else changing means a different experiment.
# train.learning_rate is one so that a run stopped on a NaN can resume with a
# smaller one. (run/run_keys.py re-exports them for the entry points.)
RESUMABLE_KEYS = ("train.num_steps", "train.learning_rate", "train.log_every",
                  "train.eval_every", "train.checkpoint_every",
                  "train.fidelity_every", "train.stage_time_every",
                  "train.keep_checkpoints", "eval.batch_size",
                  "eval.num_batches", "data.data_dir", "data.path", "devices",
                  "replicas", "distributed", "collective_timeout_seconds",
                  "start_timeout_seconds", "gpipe.micro_batch_frames",
                  "gpipe.rematerialize")


LAST_CHECKPOINT = "last_checkpoint.json"


def check(config, workdir: pathlib.Path, overwrite: bool) -> bool:
  """Checks that the workdir belongs to this experiment (writes nothing);
  True if --overwrite must delete the previous run."""
  config_path = workdir / "config.json"
  if config_path.exists():
    try:
      saved = ml_collections.ConfigDict(_read_json(config_path))
    except ValueError:
      if overwrite:  # an unreadable config.json: --overwrite deletes the run
        return True
      raise
    differences = config_differences(saved, config)
    if differences and not overwrite:
      shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in differences[:8])
      raise ValueError(
          f"workdir {workdir} holds a run with another config ({shown}). Use "
          f"another --workdir, or pass --overwrite to delete that run.")
    return bool(differences)
  return False


def prepare(config, workdir: pathlib.Path, delete: bool) -> None:
  """Creates the workdir (deleting the previous run if `delete`, but not the
  lock this process holds) and records the config."""
  if delete:
    print(f"--overwrite: deleting the previous run in {workdir}", flush=True)
    for child in workdir.iterdir():
      if child.name != workdir_lock.LOCK_NAME:
        (shutil.rmtree if child.is_dir() else os.remove)(child)
  workdir.mkdir(parents=True, exist_ok=True)
  atomic_write_text(workdir / "config.json",
                    config.to_json_best_effort(indent=2))


def config_differences(saved, config):
  """[(key, saved value, new value)] of the keys that may not change."""
  old, new = _flatten(saved.to_dict()), _flatten(
      json.loads(config.to_json_best_effort()))
  return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS]


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = list(value) if isinstance(value, tuple) else value
  return flat


def write_model_info(workdir: pathlib.Path, datasets, split=None,
                     replay=None) -> None:
  """`split`: config.model.balance's chosen split (builder.Setup.split);
  `replay`: replay_modules="auto"'s choice (builder.Setup.replay)."""
  atomic_write_text(workdir / "model_info.json", json.dumps(dict({
      "num_classes": datasets.num_classes,
      "frame_shape": list(datasets.frame_shape),
      "class_names": list(datasets.class_names)}, **(split or {}),
      **(replay or {})), indent=2))


def check_same_model(workdir: pathlib.Path, datasets) -> None:
  """Refuses data that builds another model than the run in `workdir`
  (data.path and data.data_dir may change on resume: the data may move,
  not become other data); writes nothing."""
  path = workdir / "model_info.json"
  if not path.exists():
    return
  saved = _read_json(path)
  new = {"num_classes": datasets.num_classes,
         "frame_shape": list(datasets.frame_shape),
         "class_names": list(datasets.class_names)}
  differences = [f"{key}: {_short(saved[key])} -> {_short(value)}"
                 for key, value in new.items()
                 if key in saved and saved[key] != value]
  if differences:
    raise ValueError(
        f"workdir {workdir} holds a model of other data "
        f"({'; '.join(differences)}). Use another --workdir, or pass "
        f"--overwrite to delete that run.")


def _short(value, items: int = 4) -> str:
  if isinstance(value, list) and len(value) > items:
    return f"[{', '.join(map(repr, value[:items]))}, ... ({len(value)})]"
  return repr(value)


def check_nothing_lost(workdir: pathlib.Path, overwrite: bool) -> None:
  """Refuses to start from step 0 in a workdir that recorded a checkpoint
  (last_checkpoint.json) when checkpoints/ no longer holds any: its logs
  and eval.json would describe another run (unless `overwrite`)."""
  path = workdir / LAST_CHECKPOINT
  if overwrite or not path.exists():
    return
  directory = workdir / "checkpoints"
  if checkpoints.checkpoint_steps(directory):
    return
  step = _read_json(path).get("step")
  raise checkpoints.CheckpointError(
      f"workdir {workdir} saved a checkpoint at step {step} ({path.name}) "
      f"but {directory} holds none (deleted?); refusing to start again "
      f"from step 0 over that run's logs. Put the checkpoints back, or pass "
      f"--overwrite to delete this run and start again.")


def load_model_info(workdir) -> Dict[str, object]:
  """num_classes, frame_shape and class_names, recorded when training began."""
  path = pathlib.Path(workdir) / "model_info.json"
  if not path.exists():
    raise ValueError(f"{path} not found: is {workdir} a training workdir?")
  return json.loads(path.read_text())


def saved_stage_sizes(workdir):
  """The split a balanced run chose (model_info.json), or None."""
  path = pathlib.Path(workdir) / "model_info.json"
  return json.loads(path.read_text()).get("stage_sizes") if path.exists() \
      else None


def saved_replay_modules(workdir):
  """The replay a replay_modules="auto" run chose (model_info.json), or
  None."""
  path = pathlib.Path(workdir) / "model_info.json"
  return json.loads(path.read_text()).get("replay_modules") if path.exists() \
      else None


def load_config(workdir) -> ml_collections.ConfigDict:
  """The run's config.json (keys added since it was written: defaults)."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise ValueError(f"{path} not found: is {workdir} a training workdir?")
  return configs.with_defaults(ml_collections.ConfigDict(_read_json(path)))


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except ValueError as error:
    raise ValueError(f"{path} is not valid JSON ({error}); fix it, or pass "
                     f"--overwrite to start the run again") from None


def require_checkpoints(workdir) -> None:
  """Fails before anything is built if workdir/checkpoints holds none."""
  directory = pathlib.Path(workdir) / "checkpoints"
  if not checkpoints.checkpoint_steps(directory):
    raise ValueError(f"no checkpoint in {directory}; train first")


def restore_latest(checkpoint, workdir) -> str:
  """Restores the newest readable checkpoint of workdir/checkpoints into
  `checkpoint` (for bin/evaluate, bin/export: a live run may rotate it away
  meanwhile, then the newest that still exists is read); returns its
  path."""
  return checkpoints.restore_newest(checkpoint,
                                    pathlib.Path(workdir) / "checkpoints")


def checkpoint_step(path: str) -> int:
  return int(path.rsplit("-", 1)[-1])


def save_checkpoint(setup, manager, step, lock=None) -> None:
  """Saves unless a saved variable (weights, buffers, optimizer slots) is
  NaN/Inf: a bad checkpoint is worse than none; or unless `lock` (the
  run's workdir_lock.WorkdirLock) was lost: another run may own the workdir
  now. The manager's directory is workdir/checkpoints;
  workdir/last_checkpoint.json records the save."""
  if lock is not None:
    lock.check(f"saving the checkpoint of step {step}")
  checkpoints.check_finite(saved_variables(setup), step,
                           manager.latest_checkpoint)
  path = manager.save(checkpoint_number=step)
  workdir = pathlib.Path(manager.directory).parent
  atomic_write_text(workdir / LAST_CHECKPOINT, json.dumps(
      {"step": int(step), "path": os.path.relpath(path, workdir)}))


def saved_variables(setup):
  """Every variable a checkpoint holds."""
  pipeline = setup.pipeline
  return (list(pipeline.trainable_variables)
          + [v for s in pipeline.stages for v in s.non_trainable_variables]
          + list(pipeline.state_variables) + list(setup.optimizer.variables))
