"""From a config to a trained, checkpointed, logged model: the training loop.

`bin/train`, `bin/evaluate` and `bin/export` are thin wrappers around
:func:`train`, :func:`evaluate` and :func:`restore_for_inference`. What a run
writes is in `workdir.py`; the periodic jobs (log, fidelity, stage time,
checkpoint, eval) are the hooks of `hooks.py`. The step loop, like each
hook, is given its own settings (:class:`LoopSettings`), read from the
config once, and never reads the config itself.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import tempfile
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from sideways_tf import configs
from sideways_tf.data import shard_check
from sideways_tf.run import checkpoints
from sideways_tf.run import distributed
from sideways_tf.run import distributed_start
from sideways_tf.run import summaries
from sideways_tf.run import workdir_lock
from sideways_tf.training import builder
from sideways_tf.training import config_check
from sideways_tf.training import hooks as hooks_lib
from sideways_tf.training import workdir as workdir_lib


def train(config, workdir, overwrite: bool = False) -> Dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the final metrics.

  With config.distributed, this process is one worker of the TF_CONFIG
  cluster (docs/scaling.md): only the chief writes to `workdir`; every
  worker resumes from the chief's checkpoints (a shared filesystem). The
  chief holds an exclusive lock on `workdir` while it runs
  (docs/robustness.md).
  """
  workdir = pathlib.Path(workdir)
  full = configs.with_defaults(config)
  config_check.check(full)  # before the workdir is touched
  # The replicas against the batch and the devices (with distributed=True,
  # refused before any device is listed: the cluster must start first).
  builder.check_replicas(full)
  with workdir_lock.hold(workdir, enabled=workdir_lock.is_chief_from_env()
                         if full.distributed else True) as lock:
    return _train(config, full, workdir, overwrite, lock)


def _train(config, full, workdir: pathlib.Path, overwrite: bool, lock):
  # MultiWorkerMirroredStrategy must start before any other TF op.
  cluster = (distributed_start.start_cluster(
      lambda: distributed.Cluster(full.collective_timeout_seconds),
      full.start_timeout_seconds) if full.distributed else None)
  is_chief = cluster is None or cluster.is_chief
  if cluster is not None:
    print(f"{cluster}; {distributed.tf_config_summary()}", flush=True)
  latest, delete = _resume_point(config, workdir, overwrite, is_chief)
  start_step = workdir_lib.checkpoint_step(latest) if latest else 0
  if start_step >= full.train.num_steps and cluster is None:
    print(f"Already at step {start_step} >= num_steps "
          f"{full.train.num_steps} ({latest}); nothing to do. Raise "
          f"--config.train.num_steps to train further.", flush=True)
    return {"step": start_step, "nothing_to_do": True}
  # A resumed run draws a new, still deterministic, data order.
  setup = builder.build(
      config, data_seed_offset=start_step, cluster=cluster,
      stage_sizes=workdir_lib.saved_stage_sizes(workdir) if latest else None,
      replay_modules=(workdir_lib.saved_replay_modules(workdir) if latest
                      else None))
  _check_clip_length(setup)
  _check_classes(setup)
  if is_chief and not delete:
    workdir_lib.check_same_model(workdir, setup.datasets)
  if latest:
    _restore(setup, latest, workdir)
  if is_chief:  # written only now: a failed start leaves the workdir as it was
    workdir_lib.prepare(config, workdir, delete)
  ctx = _start(setup, config, workdir, latest, cluster, is_chief)
  ctx.lock = lock  # checked before every checkpoint save and eval.json
  try:
    return _run(ctx, cluster, is_chief)
  except Exception:
    if lock is not None:  # a workdir deleted during a write explains it
      lock.check(f"going on after step {int(setup.step)}")
    raise


def _resume_point(config, workdir, overwrite, is_chief):
  """(checkpoint to resume from or None, whether --overwrite deletes the
  previous run). The chief checks the workdir (writing nothing) and resumes
  from the newest readable checkpoint; the other workers from the chief's."""
  manager_dir = workdir / "checkpoints"
  if not is_chief:
    return tf.train.latest_checkpoint(str(manager_dir)), False
  checkpoints.clean_temp_files(workdir)
  delete = workdir_lib.check(config, workdir, overwrite)
  latest = None if delete else checkpoints.newest_readable(
      manager_dir, overwrite)[0]
  delete = delete or (overwrite and not latest and
                      bool(checkpoints.checkpoint_steps(manager_dir)))
  if not latest and not delete:
    workdir_lib.check_nothing_lost(workdir, overwrite)
  return latest, delete


def _check_clip_length(setup):
  """Fails now, before anything is written, if a clip cannot be trained on
  (e.g. fewer frames than modules)."""
  config = setup.config
  spec = setup.datasets.train.element_spec["video"]
  shape = [config.train.batch_size] + [
      d if d is not None else 1 for d in spec.shape[1:]]
  setup.trainer.data_parallel.prepare_inputs(
      tf.zeros(shape, spec.dtype), tf.zeros(shape[:1], tf.int32),
      config.algorithm)


def _check_classes(setup):
  """One class gives loss 0 and accuracy 1 from the first steps: a run
  that looks perfect and learned nothing."""
  datasets = setup.datasets
  if datasets.num_classes < 2:
    raise ValueError(
        f"the training data has {datasets.num_classes} class "
        f"({', '.join(map(str, datasets.class_names))}): a classifier has "
        f"nothing to tell apart. Give bin/prepare_videos one folder per "
        f"class, at least two (docs/data.md).")


def _restore(setup, latest, workdir):
  """Restores before anything is written: a checkpoint that does not fit
  this model refuses the run and leaves the workdir as it was."""
  try:
    setup.checkpoint.restore(latest).assert_existing_objects_matched()
  except (ValueError, AssertionError, tf.errors.OpError) as error:
    reason = " ".join(str(error).split())[:200]
    raise ValueError(
        f"checkpoint {latest} does not fit the model this config builds "
        f"({reason}): workdir {workdir} holds another model. Use another "
        f"--workdir, or pass --overwrite to delete that run.") from error
  # A resumable key: a resumed run may lower it (e.g. after a NaN stop).
  if hasattr(setup.optimizer.learning_rate, "assign"):
    setup.optimizer.learning_rate.assign(setup.config.train.learning_rate)


def _run(ctx, cluster, is_chief) -> Dict[str, object]:
  """The loop with its hooks, the final save, then the run's summary."""
  setup, workdir = ctx.setup, ctx.workdir
  log, evaluation, hooks = hooks_lib.make_hooks(setup.config, int(setup.step),
                                                is_chief)
  settings = LoopSettings.from_config(setup.config)
  first_step, run_start = int(setup.step), time.perf_counter()
  stop = _StopFlag()
  try:
    with log.progress:  # a warning never continues the progress bar's line
      frames_per_clip = _loop(ctx, settings, hooks, cluster, stop)
  except FloatingPointError:
    ctx.train_writer.flush()
    raise
  finally:
    stop.restore()
  step = int(setup.step)
  if is_chief and step > 0 and ctx.manager.latest_checkpoint != str(
      workdir / "checkpoints" / f"ckpt-{step}"):
    workdir_lib.save_checkpoint(setup, ctx.manager, step, ctx.lock)
  ctx.train_writer.flush()
  ctx.eval_writer.flush()
  wall = time.perf_counter() - run_start
  if not is_chief:
    return _worker_result(cluster, step, stop, log.last, workdir)
  if stop.requested:
    if cluster is None:
      print(f"\nStopped by signal at step {step} "
            f"({signal.Signals(stop.signum).name}); checkpoint saved. Rerun "
            f"the same command to resume.", flush=True)
    else:
      _print_cluster_stop(cluster, step, stop, workdir)
    return {"step": step, "interrupted": True, "signal": stop.signum}
  eval_metrics = evaluation.metrics or evaluation.run(ctx, step)
  return _summary(setup.config, workdir, step, step - first_step, wall,
                  frames_per_clip, log.last, eval_metrics)


def _start(setup, config, workdir, latest, cluster,
           is_chief) -> hooks_lib.Context:
  """Model info, checkpoint manager, worker sync, writers."""
  if is_chief:
    workdir_lib.write_model_info(workdir, setup.datasets, setup.split,
                                 setup.replay)
  manager = tf.train.CheckpointManager(
      setup.checkpoint, str(workdir / "checkpoints"),
      max_to_keep=setup.config.train.keep_checkpoints)
  if latest:  # restored by _train before anything was written
    print(f"Resumed from {latest} at step {int(setup.step)}.", flush=True)
  if cluster is not None:
    _sync_workers(setup, cluster, latest)
  if is_chief:
    train_writer = tf.summary.create_file_writer(str(workdir / "train"))
    eval_writer = tf.summary.create_file_writer(str(workdir / "eval"))
  else:  # only the chief logs
    train_writer = eval_writer = tf.summary.create_noop_writer()
  if not latest:
    summaries.write_config(train_writer, config,
                           _hparams(config, setup.pipeline.num_modules))
  return hooks_lib.Context(setup, workdir, manager, train_writer, eval_writer)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What the step loop needs from the config: the step to stop at and the
  data config its read errors are named after."""
  num_steps: int
  data: object  # config.data

  @classmethod
  def from_config(cls, config) -> "LoopSettings":
    return cls(config.train.num_steps, config.data)


def _loop(ctx, settings: LoopSettings, hooks, cluster,
          stop) -> Optional[int]:
  """Train steps until num_steps or a stop signal; returns frames per clip.

  With a cluster, a signal on any worker stops every worker after the same
  step: the signalled worker's vote rides on the next gradient all-reduce,
  so all of them leave the loop together and the chief saves that step.
  """
  setup, frames_per_clip = ctx.setup, None
  iterator = iter(setup.datasets.train)
  while int(setup.step) < settings.num_steps:
    if cluster is not None:
      cluster.vote_stop(stop.signum)
    elif stop.requested:
      break
    with shard_check.named_data_errors(settings.data):
      batch = next(iterator)
    step = int(setup.step) + 1
    frames, labels = batch["video"], batch["label"]
    frames_per_clip = int(frames.shape[0]) * int(frames.shape[1])
    for hook in hooks:
      hook.before_step(ctx, step, frames, labels)
    started = time.perf_counter()
    try:
      metrics = setup.trainer.train_step(frames, labels)
    except distributed.COLLECTIVE_ERRORS as error:
      if cluster is None:
        raise
      raise _worker_lost(ctx, cluster, step, error) from error
    elapsed = time.perf_counter() - started
    if not np.isfinite(metrics["loss"]):
      raise FloatingPointError(
          f"loss is {metrics['loss']} at step {step}; stopping. The weights "
          f"of this step were not saved; the last good checkpoint is "
          f"{ctx.manager.latest_checkpoint or '(none)'}: rerun with a smaller "
          f"--config.train.learning_rate to resume from it.")
    setup.step.assign(step)
    for hook in hooks:
      hook.after_step(ctx, step, frames, metrics, elapsed)
    if cluster is not None and cluster.agreed_stop() is not None:
      stop.agree(cluster.agreed_stop())
      break
  return frames_per_clip


def _worker_lost(ctx, cluster, step, error) -> distributed.WorkerLostError:
  """The chief saves its last complete step; the error names the newest
  checkpoint (not the manager's possibly stale view on a non-chief)."""
  manager_dir = ctx.workdir / "checkpoints"
  done = int(ctx.setup.step)
  if cluster.is_chief and done > 0 and not os.path.exists(
      manager_dir / f"ckpt-{done}.index"):
    workdir_lib.save_checkpoint(ctx.setup, ctx.manager, done, ctx.lock)
  return distributed.WorkerLostError(distributed.lost_worker_message(
      cluster, step, tf.train.latest_checkpoint(str(manager_dir)), error))


def _print_cluster_stop(cluster, step, stop, workdir):
  where = "this worker" if stop.own else "another worker"
  when = ("every worker stopped after this step" if stop.agreed else
          "the last step")
  print(f"\nStopped by signal at step {step} "
        f"({signal.Signals(stop.signum).name} on {where}; {when}): worker "
        f"{cluster.worker_index} of {cluster.num_workers}; the chief saved "
        f"{workdir / 'checkpoints' / f'ckpt-{step}'}. Start all workers again "
        f"with the same commands to resume.", flush=True)


def _worker_result(cluster, step, stop, last_train,
                   workdir) -> Dict[str, object]:
  if stop.requested:
    _print_cluster_stop(cluster, step, stop, workdir)
    return {"step": step, "interrupted": True, "signal": stop.signum,
            "train_loss": last_train["loss"]}
  print(f"\nDone: worker {cluster.worker_index} of {cluster.num_workers} at "
        f"step {step}; train loss {last_train['loss']:.4f} on this worker's "
        f"shard. The chief writes checkpoints, logs and evaluations.",
        flush=True)
  return {"step": step, "interrupted": stop.requested,
          "signal": stop.signum, "train_loss": last_train["loss"]}


def _summary(config, workdir, step, steps_run, wall, frames_per_clip,
             last_train, eval_metrics) -> Dict[str, object]:
  summary = {
      "step": step,
      "algorithm": config.algorithm,
      "train_loss": last_train["loss"],
      "train_accuracy": last_train["accuracy"],
      "eval_clip_accuracy": eval_metrics["clip_accuracy"],
      "eval_frame_accuracy": eval_metrics["frame_accuracy"],
      "wall_seconds": wall,
      "frames_per_second": (steps_run * (frames_per_clip or 0) / wall
                            if wall else 0.0),
  }
  print(f"\nDone: {config.algorithm}, {step} steps ({steps_run} this run) in "
        f"{wall:.0f} s; train accuracy {summary['train_accuracy']:.3f} "
        f"(last {config.train.log_every} steps), eval clip accuracy "
        f"{summary['eval_clip_accuracy']:.3f}, frame accuracy "
        f"{summary['eval_frame_accuracy']:.3f}. Outputs in {workdir}",
        flush=True)
  return summary


def evaluate(workdir, config=None, num_batches: Optional[int] = None,
             output_dir=None):
  """Evaluates the newest readable checkpoint in `workdir` on the eval
  split; eval.json and TensorBoard events go to `output_dir` (default: the
  workdir). A read-only workdir (an archived run) is still evaluated: the
  numbers are returned with a warning that nothing was written."""
  workdir = pathlib.Path(workdir)
  if config is None:
    config = workdir_lib.load_config(workdir)
  workdir_lib.require_checkpoints(workdir)
  output = pathlib.Path(output_dir) if output_dir else workdir
  if output_dir:
    output.mkdir(parents=True, exist_ok=True)
  why_not = _not_writable(output)
  if why_not and output_dir:
    raise why_not
  setup = builder.build(config,
                        stage_sizes=workdir_lib.saved_stage_sizes(workdir),
                        replay_modules=workdir_lib.saved_replay_modules(
                            workdir),
                        data_parallel=False)
  workdir_lib.restore_latest(setup.checkpoint, workdir)
  if why_not:
    checkpoints.warn(
        f"{output} is not writable ({why_not.strerror}): eval.json and the "
        f"TensorBoard events are not written. Pass --output_dir=DIR to "
        f"write them elsewhere.")
    writer = tf.summary.create_noop_writer()
  else:
    writer = tf.summary.create_file_writer(str(output / "eval"))
  metrics = hooks_lib.evaluate(
      setup, writer, int(setup.step), None if why_not else output,
      hooks_lib.EvalSettings.from_config(config, num_batches))
  writer.flush()
  return metrics


def _not_writable(directory: pathlib.Path) -> Optional[OSError]:
  """None if a file can be created in `directory`, else the OSError (a
  read-only mount, an immutable directory, no permission)."""
  try:
    with tempfile.TemporaryFile(dir=directory):
      return None
  except OSError as error:
    return OSError(error.errno, error.strerror, str(directory))


def restore_for_inference(workdir) -> builder.Setup:
  """The model of the newest readable checkpoint in `workdir`, without its
  data."""
  workdir = pathlib.Path(workdir)
  config = workdir_lib.load_config(workdir)
  info = workdir_lib.load_model_info(workdir)
  workdir_lib.require_checkpoints(workdir)
  setup = builder.build_model(config, info["num_classes"], info["frame_shape"],
                              stage_sizes=info.get("stage_sizes"),
                              replay_modules=info.get("replay_modules"),
                              data_parallel=False)
  workdir_lib.restore_latest(setup.checkpoint, workdir)
  return setup


def _sync_workers(setup, cluster, latest):
  """Every worker starts from the chief's step, weights and optimizer state."""
  local_step = int(setup.step)
  cluster.broadcast_from_chief([setup.step])
  if int(setup.step) != local_step:
    raise ValueError(
        f"worker {cluster.worker_index} would resume at step {local_step} "
        f"({latest or 'no checkpoint'}) but the chief at step "
        f"{int(setup.step)}: every worker must see the chief's workdir (a "
        f"shared filesystem), or start all from scratch")
  difference = cluster.broadcast_from_chief(
      list(setup.pipeline.trainable_variables) +
      list(setup.optimizer.variables))
  if difference:
    logging.warning("worker %d: initial weights differed from the chief's by "
                    "up to %g; using the chief's", cluster.worker_index,
                    difference)


def _hparams(config, num_modules: int) -> Dict[str, object]:
  return {"algorithm": config.algorithm, "model": config.model.name,
          "num_modules": num_modules,  # as built (num_modules="auto" too)
          "batch_size": config.train.batch_size,
          "learning_rate": config.train.learning_rate,
          "optimizer": config.train.optimizer,
          "num_frames": config.data.num_frames,
          "temporal_stride": config.data.temporal_stride,
          "update_every_ticks": config.train.update_every_ticks,
          "seed": config.seed}


class _StopFlag:
  """SIGTERM/SIGINT ask the loop to save and stop after the current step."""

  def __init__(self):
    self.requested = False
    self.signum = None
    self.own = False  # the signal came to this process
    self.agreed = False  # every worker of the cluster stops at this step
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._request)
      except ValueError:  # not the main thread: leave signals alone
        pass

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _request(self, signum, frame):
    del frame
    if self.requested:  # a second signal: stop now
      raise KeyboardInterrupt
    logging.warning("signal %d: saving a checkpoint and stopping", signum)
    self.requested = True
    self.signum = signum
    self.own = True

  def agree(self, signum):
    """The cluster agreed to stop on `signum` (this worker's or a peer's)."""
    self.agreed = True
    if not self.requested:
      self.requested, self.signum = True, signum
