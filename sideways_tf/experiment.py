"""From a config to a trained, checkpointed, logged model: the training loop.

`bin/train` and `bin/evaluate` are thin wrappers around :func:`train` and
:func:`evaluate`. Everything a run writes goes under its workdir:

  workdir/config.json        the config the run was started with
  workdir/checkpoints/       tf.train.CheckpointManager (model, optimizer,
                             step, pipeline state)
  workdir/train/, eval/      TensorBoard event files
  workdir/eval.json          the last evaluation
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import time
from typing import Dict, Optional

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from sideways_tf import auto_balance
from sideways_tf import data as data_lib
from sideways_tf import distributed
from sideways_tf import models
from sideways_tf import summaries
from sideways_tf.pipeline import Pipeline
from sideways_tf.trainer import DynamicLossScale, Trainer

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Keys that may change between a run and its resumption (how long, how often,
# how loud); anything else changing means a different experiment.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.eval_every",
                  "train.checkpoint_every", "train.fidelity_every",
                  "train.stage_time_every", "train.keep_checkpoints",
                  "eval.batch_size", "eval.num_batches", "data.data_dir",
                  "data.path", "devices", "distributed",
                  "collective_timeout_seconds",
                  # GPipe's gradient is exact whatever its micro-batches.
                  "gpipe.micro_batch_frames", "gpipe.rematerialize")


@dataclasses.dataclass
class Experiment:
  """Everything built from a config."""
  config: ml_collections.ConfigDict
  datasets: object
  pipeline: Pipeline
  optimizer: keras.optimizers.Optimizer
  trainer: Trainer
  step: tf.Variable
  checkpoint: tf.train.Checkpoint
  split: Optional[dict] = None  # config.model.balance: the chosen split


def build(config, data_seed_offset: int = 0,
          cluster: Optional[distributed.Cluster] = None,
          stage_sizes=None) -> Experiment:
  """Data, model, pipeline, optimizer and trainer for `config`.

  With a `cluster`, each worker trains on its own shard of the batches
  (config.train.batch_size is per worker) and the clip gradients are averaged
  across workers before every update.
  """
  keras.utils.set_random_seed(config.seed)
  datasets = data_lib.get_datasets(
      config.data, batch_size=config.train.batch_size,
      eval_batch_size=config.eval.batch_size,
      seed=config.seed + data_seed_offset)
  if cluster is not None:
    # Same seed on every worker: the same batch order, so worker i keeping
    # every num_workers-th batch gives the workers disjoint batches.
    datasets = dataclasses.replace(datasets,
                                   train=cluster.shard(datasets.train))
  return build_model(config, datasets.num_classes, datasets.frame_shape,
                     datasets, cluster, stage_sizes)


def build_model(config, num_classes: int, frame_shape, datasets=None,
                cluster: Optional[distributed.Cluster] = None,
                stage_sizes=None) -> Experiment:
  """Everything but the data (for export, or evaluation on other data).

  `stage_sizes`: a split saved in model_info.json (config.model.balance).
  """
  keras.utils.set_random_seed(config.seed)
  precision = config.get("mixed_precision", "") or "float32"
  if precision not in ("float32", "mixed_bfloat16", "mixed_float16"):
    raise ValueError(
        f"config.mixed_precision must be '', 'mixed_bfloat16' or "
        f"'mixed_float16', got {precision!r}")
  keras.mixed_precision.set_dtype_policy(precision)  # before the stages
  stages = models.build_stages(config.model, num_classes)
  stages, split = auto_balance.apply(config.model, stages, frame_shape,
                                     config.train.batch_size, stage_sizes)
  devices = resolve_devices(config.devices, len(stages))
  pipeline = Pipeline(stages, devices=devices,
                      skips=parse_skips(config.get("skips", "")),
                      skip_combine=config.get("skip_combine", "concat"),
                      **_gpipe_options(config))
  optimizer = make_optimizer(config.train)
  trainer = Trainer(
      pipeline, optimizer, config.algorithm,
      update_every_ticks=config.train.update_every_ticks,
      gradient_transform=cluster.all_reduce_mean if cluster else None,
      loss_scale=(DynamicLossScale() if precision == "mixed_float16"
                  else None))
  # Create every variable now (weights, buffers, optimizer slots) so that a
  # checkpoint restores into them at once.
  pipeline.allocate_state(config.train.batch_size, tuple(frame_shape))
  optimizer.build(pipeline.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  checkpoint = tf.train.Checkpoint(step=step, pipeline=pipeline,
                                   optimizer=optimizer)
  if trainer.loss_scale is not None:
    checkpoint.loss_scale = trainer.loss_scale
  return Experiment(config, datasets, pipeline, optimizer, trainer, step,
                    checkpoint, split)


def _gpipe_options(config) -> Dict[str, object]:
  """Pipeline kwargs of config.gpipe (absent in configs saved before it)."""
  gpipe = config.get("gpipe", None) or {}
  return {"gpipe_micro_batch_frames": gpipe.get("micro_batch_frames", 1),
          "gpipe_rematerialize": gpipe.get("rematerialize", False)}


def parse_skips(spec: str) -> Dict[int, list]:
  """"2:0; 3:0,1" -> {2: [0], 3: [0, 1]} (0-based stage indices)."""
  skips = {}
  for part in filter(None, (p.strip() for p in str(spec).split(";"))):
    target, _, sources = part.partition(":")
    try:
      skips[int(target)] = [int(j) for j in sources.split(",") if j.strip()]
    except ValueError:
      raise ValueError(
          f"config.skips must look like '2:0; 3:0,1' (stage: source "
          f"stages), got {spec!r}") from None
  return skips


def resolve_devices(devices, num_modules: int) -> Optional[list]:
  """config.devices -> one device per module, or None (default placement).

  "auto" (or ("auto",)) maps the modules onto every visible GPU: module k on
  GPU k * G // L, so with fewer GPUs than modules neighbouring modules share
  a GPU. Without a GPU it uses the logical CPUs if more than one is
  configured (a test set-up, see docs/scaling.md), else it is an error.
  """
  devices = [devices] if isinstance(devices, str) else list(devices or ())
  if devices != ["auto"]:
    return devices or None
  found = [d.name for d in tf.config.list_logical_devices("GPU")]
  if not found:
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    found = cpus if len(cpus) > 1 else []
  if not found:
    raise ValueError(
        "config.devices='auto' maps the modules onto GPUs, but TensorFlow "
        "sees no GPU (and only one CPU device). Use config.devices=() for "
        "default placement, or list devices explicitly.")
  return [found[k * len(found) // num_modules] if num_modules > len(found)
          else found[k] for k in range(num_modules)]


def make_optimizer(train_config) -> keras.optimizers.Optimizer:
  """Any Keras optimizer by name, e.g. "adam", "sgd", "adamw"."""
  try:
    return keras.optimizers.get({
        "class_name": train_config.optimizer,
        "config": {"learning_rate": train_config.learning_rate}})
  except ValueError as error:
    raise ValueError(
        f"unknown optimizer {train_config.optimizer!r} in "
        f"config.train.optimizer: {error}") from error


def train(config, workdir, overwrite: bool = False) -> Dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the final metrics.

  With config.distributed, this process is one worker of the TF_CONFIG
  cluster (docs/scaling.md): only the chief writes to `workdir`; every
  worker resumes from the chief's checkpoints (a shared filesystem).
  """
  workdir = pathlib.Path(workdir)
  # MultiWorkerMirroredStrategy must start before any other TF op.
  cluster = (distributed.Cluster(config.get("collective_timeout_seconds", 300))
             if config.get("distributed", False) else None)
  is_chief = cluster is None or cluster.is_chief
  if cluster is not None:
    print(f"{cluster}; {distributed.tf_config_summary()}", flush=True)
  if is_chief:
    _prepare_workdir(config, workdir, overwrite)
  manager_dir = workdir / "checkpoints"
  latest = tf.train.latest_checkpoint(str(manager_dir))
  start_step = _checkpoint_step(latest) if latest else 0
  # A resumed run draws a new, still deterministic, data order.
  exp = build(config, data_seed_offset=start_step, cluster=cluster,
              stage_sizes=_saved_stage_sizes(workdir) if latest else None)
  if is_chief:
    atomic_write_text(workdir / "model_info.json", json.dumps(dict({
        "num_classes": exp.datasets.num_classes,
        "frame_shape": list(exp.datasets.frame_shape),
        "class_names": list(exp.datasets.class_names)}, **(exp.split or {})),
                                                              indent=2))
  manager = tf.train.CheckpointManager(
      exp.checkpoint, str(manager_dir),
      max_to_keep=config.train.keep_checkpoints)
  if latest:
    exp.checkpoint.restore(latest).assert_existing_objects_matched()
    print(f"Resumed from {latest} at step {int(exp.step)}.", flush=True)
  if cluster is not None:
    _sync_workers(exp, cluster, latest)

  if is_chief:
    train_writer = tf.summary.create_file_writer(str(workdir / "train"))
    eval_writer = tf.summary.create_file_writer(str(workdir / "eval"))
  else:  # only the chief logs
    train_writer = eval_writer = tf.summary.create_noop_writer()
  if not latest:
    summaries.write_config(train_writer, config, _hparams(config))

  train_cfg = config.train
  frames_per_clip = None
  stop = _StopFlag()
  progress = keras.utils.Progbar(train_cfg.num_steps, stateful_metrics=[
      "loss", "accuracy", "frames/s"], unit_name="step")
  progress.update(int(exp.step))
  window = _Window()
  last_train = {"loss": float("nan"), "accuracy": float("nan")}
  eval_metrics: Dict[str, float] = {}
  iterator = iter(exp.datasets.train)
  run_start = time.perf_counter()
  first_step = int(exp.step)
  try:
    while int(exp.step) < train_cfg.num_steps and not stop.requested:
      batch = next(iterator)
      step = int(exp.step) + 1
      frames, labels = batch["video"], batch["label"]
      frames_per_clip = int(frames.shape[0]) * int(frames.shape[1])
      if is_chief and _due(step, train_cfg.fidelity_every):
        _log_fidelity(exp, train_writer, step, frames, labels)
      if is_chief and _due(step, train_cfg.stage_time_every):
        summaries.write_stage_seconds(
            train_writer, step,
            exp.pipeline.stage_tick_seconds(frames, labels, repeats=3))
      started = time.perf_counter()
      try:
        metrics = exp.trainer.train_step(frames, labels)
      except distributed.COLLECTIVE_ERRORS as error:
        if cluster is None:
          raise
        raise distributed.WorkerLostError(distributed.lost_worker_message(
            cluster, step, manager.latest_checkpoint, error)) from error
      elapsed = time.perf_counter() - started
      if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(
            f"loss is {metrics['loss']} at step {step}; stopping. The weights "
            f"of this step were not saved; the last good checkpoint is "
            f"{manager.latest_checkpoint or '(none)'}")
      exp.step.assign(step)
      window.add(metrics, frames_per_clip, elapsed)
      if step == 1:
        summaries.write_input_clips(train_writer, step, frames.numpy())
      if _due(step, train_cfg.log_every) or step == train_cfg.num_steps:
        averages = window.flush()
        summaries.write_scalars(train_writer, step, {
            "train/loss": averages["loss"],
            "train/accuracy": averages["accuracy"],
            "train/learning_rate": _learning_rate(exp.optimizer),
            "train/frames_per_second": averages["frames_per_second"]})
        progress.update(step, [("loss", averages["loss"]),
                               ("accuracy", averages["accuracy"]),
                               ("frames/s", averages["frames_per_second"])])
        last_train = averages
      if is_chief and _due(step, train_cfg.checkpoint_every):
        _save(exp, manager, step)
      if is_chief and (_due(step, train_cfg.eval_every) or
                       step == train_cfg.num_steps):
        eval_metrics = _evaluate(exp, eval_writer, step, workdir)
  except FloatingPointError:
    train_writer.flush()
    raise
  finally:
    stop.restore()
  step = int(exp.step)
  if is_chief and step > 0 and manager.latest_checkpoint != str(
      manager_dir / f"ckpt-{step}"):
    _save(exp, manager, step)
  train_writer.flush()
  eval_writer.flush()
  wall = time.perf_counter() - run_start
  if not is_chief:
    print(f"\nDone: worker {cluster.worker_index} of {cluster.num_workers} at "
          f"step {step}; train loss {last_train['loss']:.4f} on this worker's "
          f"shard. The chief writes checkpoints, logs and evaluations.",
          flush=True)
    return {"step": step, "interrupted": stop.requested,
            "train_loss": last_train["loss"]}
  if stop.requested:
    print(f"\nStopped by signal at step {step}; checkpoint saved. Rerun the "
          f"same command to resume.", flush=True)
    return {"step": step, "interrupted": True}
  if not eval_metrics:
    eval_metrics = _evaluate(exp, eval_writer, step, workdir)
  steps_run = step - first_step
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
        f"(last {train_cfg.log_every} steps), eval clip accuracy "
        f"{summary['eval_clip_accuracy']:.3f}, frame accuracy "
        f"{summary['eval_frame_accuracy']:.3f}. Outputs in {workdir}",
        flush=True)
  return summary


def evaluate(workdir, config=None, num_batches: Optional[int] = None):
  """Evaluates the latest checkpoint in `workdir` on the eval split."""
  workdir = pathlib.Path(workdir)
  if config is None:
    config = load_config(workdir)
  latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  if not latest:
    raise ValueError(f"no checkpoint in {workdir / 'checkpoints'}; train first")
  exp = build(config, stage_sizes=_saved_stage_sizes(workdir))
  exp.checkpoint.restore(latest).expect_partial()
  writer = tf.summary.create_file_writer(str(workdir / "eval"))
  metrics = _evaluate(exp, writer, int(exp.step), workdir, num_batches)
  writer.flush()
  return metrics


def restore_for_inference(workdir) -> Experiment:
  """The model of the latest checkpoint in `workdir`, without its data."""
  workdir = pathlib.Path(workdir)
  config = load_config(workdir)
  info = load_model_info(workdir)
  latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  if not latest:
    raise ValueError(f"no checkpoint in {workdir / 'checkpoints'}; train first")
  exp = build_model(config, info["num_classes"], info["frame_shape"],
                    stage_sizes=info.get("stage_sizes"))
  exp.checkpoint.restore(latest).expect_partial()
  return exp


def load_model_info(workdir) -> Dict[str, object]:
  """num_classes, frame_shape and class_names, recorded when training began."""
  path = pathlib.Path(workdir) / "model_info.json"
  if not path.exists():
    raise ValueError(f"{path} not found: is {workdir} a training workdir?")
  return json.loads(path.read_text())


def _saved_stage_sizes(workdir):
  """The split a balanced run chose (model_info.json), or None."""
  path = pathlib.Path(workdir) / "model_info.json"
  return json.loads(path.read_text()).get("stage_sizes") if path.exists() \
      else None


def load_config(workdir) -> ml_collections.ConfigDict:
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise ValueError(f"{path} not found: is {workdir} a training workdir?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


# ------------------------------------------------------------------ helpers

def _evaluate(exp, writer, step, workdir, num_batches=None):
  num_batches = num_batches or exp.config.eval.get("num_batches", 0) or None
  batches = exp.datasets.eval
  if num_batches:
    batches = batches.take(num_batches)
  metrics = exp.trainer.evaluate(batches)
  summaries.write_scalars(writer, step, {
      "eval/loss": metrics["loss"],
      "eval/accuracy": metrics["clip_accuracy"],
      "eval/frame_accuracy": metrics["frame_accuracy"]})
  atomic_write_text(pathlib.Path(workdir) / "eval.json",
                    json.dumps(dict(metrics, step=step), indent=2))
  return metrics


def _sync_workers(exp, cluster, latest):
  """Every worker starts from the chief's step, weights and optimizer state."""
  local_step = int(exp.step)
  cluster.broadcast_from_chief([exp.step])
  if int(exp.step) != local_step:
    raise ValueError(
        f"worker {cluster.worker_index} would resume at step {local_step} "
        f"({latest or 'no checkpoint'}) but the chief at step {int(exp.step)}:"
        f" every worker must see the chief's workdir (a shared filesystem), "
        f"or start all from scratch")
  difference = cluster.broadcast_from_chief(
      list(exp.pipeline.trainable_variables) + list(exp.optimizer.variables))
  if difference:
    logging.warning("worker %d: initial weights differed from the chief's by "
                    "up to %g; using the chief's", cluster.worker_index,
                    difference)


def _log_fidelity(exp, writer, step, frames, labels):
  sideways = exp.pipeline.compute_gradients(frames, labels, "sideways")
  bp = exp.pipeline.compute_gradients(frames, labels, "bp")
  summaries.write_fidelity(
      writer, step, summaries.gradient_fidelity(exp.pipeline, sideways, bp))


def _save(exp, manager, step):
  """Saves unless a weight is NaN/Inf: a bad checkpoint is worse than none."""
  for variable in exp.pipeline.trainable_variables:
    if not bool(tf.reduce_all(tf.math.is_finite(variable))):
      raise FloatingPointError(
          f"weight {variable.path} is not finite at step {step}; not saving. "
          f"The last good checkpoint is {manager.latest_checkpoint or '(none)'}")
  manager.save(checkpoint_number=step)


def _checkpoint_step(path: str) -> int:
  return int(path.rsplit("-", 1)[-1])


def _due(step: int, every: int) -> bool:
  return bool(every) and step % every == 0


def _learning_rate(optimizer) -> float:
  return float(np.asarray(optimizer.learning_rate))


def _hparams(config) -> Dict[str, object]:
  return {"algorithm": config.algorithm, "model": config.model.name,
          "num_modules": config.model.num_modules,
          "batch_size": config.train.batch_size,
          "learning_rate": config.train.learning_rate,
          "optimizer": config.train.optimizer,
          "num_frames": config.data.num_frames,
          "temporal_stride": config.data.temporal_stride,
          "update_every_ticks": config.train.update_every_ticks,
          "seed": config.seed}


def _prepare_workdir(config, workdir: pathlib.Path, overwrite: bool) -> None:
  """Creates the workdir, or checks that it belongs to this experiment."""
  config_path = workdir / "config.json"
  if config_path.exists():
    saved = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    differences = _config_differences(saved, config)
    if differences and not overwrite:
      shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in differences[:8])
      raise ValueError(
          f"workdir {workdir} holds a run with another config ({shown}). Use "
          f"another --workdir, or pass --overwrite to delete that run.")
    if differences:
      print(f"--overwrite: deleting the previous run in {workdir}", flush=True)
      shutil.rmtree(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  atomic_write_text(config_path, config.to_json_best_effort(indent=2))


def _config_differences(saved, config):
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


def atomic_write_text(path: pathlib.Path, text: str) -> None:
  """Write to a temporary name, then rename: readers never see half a file."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


class _Window:
  """Averages of the steps since the last log line."""

  def __init__(self):
    self._reset()

  def _reset(self):
    self.loss = self.accuracy = self.seconds = 0.0
    self.frames = self.steps = 0

  def add(self, metrics, frames, seconds):
    self.loss += metrics["loss"]
    self.accuracy += metrics["accuracy"]
    self.frames += frames
    self.seconds += seconds
    self.steps += 1

  def flush(self):
    steps = max(self.steps, 1)
    averages = {"loss": self.loss / steps, "accuracy": self.accuracy / steps,
                "frames_per_second": self.frames / max(self.seconds, 1e-9)}
    self._reset()
    return averages


class _StopFlag:
  """SIGTERM/SIGINT ask the loop to save and stop after the current step."""

  def __init__(self):
    self.requested = False
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
