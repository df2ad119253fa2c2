"""Everything built from a config: data, stages, pipeline, optimizer, trainer."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import keras
import ml_collections
import tensorflow as tf

from sideways_tf import configs
from sideways_tf import data as data_lib
from sideways_tf import models
from sideways_tf.engine import algorithms
from sideways_tf.engine.pipeline import Pipeline
from sideways_tf.run import distributed
from sideways_tf.training import auto_balance
from sideways_tf.training import auto_replay
from sideways_tf.training.trainer import DynamicLossScale, Trainer

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass
class Setup:
  """Everything built from a config."""
  config: ml_collections.ConfigDict
  datasets: object
  pipeline: Pipeline
  optimizer: keras.optimizers.Optimizer
  trainer: Trainer
  step: tf.Variable
  checkpoint: tf.train.Checkpoint
  split: Optional[dict] = None  # model.balance / num_modules="auto": split
  replay: Optional[dict] = None  # replay_modules="auto": the choice


def build(config, data_seed_offset: int = 0,
          cluster: Optional[distributed.Cluster] = None,
          stage_sizes=None, replay_modules: Optional[int] = None) -> Setup:
  """Data, model, pipeline, optimizer and trainer for `config`.

  With a `cluster`, each worker trains on its own shard of the batches
  (config.train.batch_size is per worker) and the clip gradients are averaged
  across workers before every update.
  """
  keras.utils.set_random_seed(config.seed)

  def make_datasets():
    return data_lib.get_datasets(
        config.data, batch_size=config.train.batch_size,
        eval_batch_size=config.eval.batch_size,
        seed=config.seed + data_seed_offset)

  datasets = make_datasets()
  if cluster is not None:
    # Same seed on every worker: the same batch order, so worker i keeping
    # every num_workers-th batch gives the workers disjoint batches.
    datasets = dataclasses.replace(datasets,
                                   train=cluster.shard(datasets.train))
  # replay_modules="auto" measures on a fresh copy of the training data: the
  # run's first batches, without moving the run's own iterator.
  return build_model(config, datasets.num_classes, datasets.frame_shape,
                     datasets, cluster, stage_sizes, replay_modules,
                     training_batches=lambda: make_datasets().train)


def build_model(config, num_classes: int, frame_shape, datasets=None,
                cluster: Optional[distributed.Cluster] = None,
                stage_sizes=None, replay_modules: Optional[int] = None,
                training_batches=None) -> Setup:
  """Everything but the data (for export, or evaluation on other data).

  `stage_sizes`: a split saved in model_info.json (config.model.balance or
  num_modules="auto"). `replay_modules`: the choice saved there by a
  replay_modules="auto" run; else `training_batches()` (a fresh training
  dataset) is measured to make it (training/auto_replay.py).
  """
  config = configs.with_defaults(config)
  keras.utils.set_random_seed(config.seed)
  precision = config.mixed_precision or "float32"
  if precision not in PRECISIONS:
    raise ValueError(
        f"config.mixed_precision must be '', 'mixed_bfloat16' or "
        f"'mixed_float16', got {precision!r}")
  keras.mixed_precision.set_dtype_policy(precision)  # before the stages
  auto_balance.check_num_modules(config.model)
  stages = models.build_stages(config.model, num_classes)
  algorithm = algorithms.get(config.algorithm)

  stages, split = auto_balance.apply(
      config.model, stages, frame_shape, config.train.batch_size, stage_sizes,
      num_devices=count_devices(config.devices),
      replay_modules=(
          (lambda n: algorithm.replay_modules(
              n, auto_replay.known(config, replay_modules)))
          if algorithm.streams else 0),
      skips=parse_skips(config.skips), skip_align=bool(config.skip_align))
  devices = resolve_devices(config.devices, len(stages))

  def make_pipeline(replay):
    # The algorithm may fix the replay (pipelined_bp: L-1).
    return Pipeline(stages, devices=devices, skips=parse_skips(config.skips),
                    skip_combine=config.skip_combine,
                    skip_align=bool(config.skip_align),
                    replay_modules=algorithm.replay_modules(len(stages),
                                                            replay),
                    **algorithms.options_from_config(config))

  replay, replay_info = auto_replay.resolve(
      config, make_pipeline, training_batches, replay_modules)
  pipeline = make_pipeline(replay)
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
  return Setup(config, datasets, pipeline, optimizer, trainer, step,
               checkpoint, split, replay_info)


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
  found = _auto_devices()
  return [found[k * len(found) // num_modules] if num_modules > len(found)
          else found[k] for k in range(num_modules)]


def count_devices(devices) -> int:
  """How many devices config.devices names: the list's length, the devices
  "auto" finds, or 0 for default placement."""
  devices = [devices] if isinstance(devices, str) else list(devices or ())
  return len(_auto_devices()) if devices == ["auto"] else len(devices)


def _auto_devices() -> list:
  found = [d.name for d in tf.config.list_logical_devices("GPU")]
  if not found:
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    found = cpus if len(cpus) > 1 else []
  if not found:
    raise ValueError(
        "config.devices='auto' maps the modules onto GPUs, but TensorFlow "
        "sees no GPU (and only one CPU device). Use config.devices=() for "
        "default placement, or list devices explicitly.")
  return found


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
