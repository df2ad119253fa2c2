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
from sideways_tf.engine import balance
from sideways_tf.engine.pipeline import Pipeline
from sideways_tf.run import distributed
from sideways_tf.training import auto_balance
from sideways_tf.training import auto_replay
from sideways_tf.training import data_parallel as data_parallel_lib
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
          stage_sizes=None, replay_modules: Optional[int] = None,
          data_parallel: bool = True) -> Setup:
  """Data, model, pipeline, optimizer and trainer for `config`.

  With a `cluster`, each worker trains on its own shard of the batches
  (config.train.batch_size is per worker) and the clip gradients are averaged
  across workers before every update. With config.replicas = R > 1 (and
  `data_parallel`), the trainer splits every batch over R replicas on this
  machine (training/data_parallel.py).
  """
  check_replicas(configs.with_defaults(config))  # before reading any data
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
                     training_batches=lambda: make_datasets().train,
                     data_parallel=data_parallel)


def build_model(config, num_classes: int, frame_shape, datasets=None,
                cluster: Optional[distributed.Cluster] = None,
                stage_sizes=None, replay_modules: Optional[int] = None,
                training_batches=None, data_parallel: bool = True) -> Setup:
  """Everything but the data (for export, or evaluation on other data).

  `stage_sizes`: a split saved in model_info.json (config.model.balance or
  num_modules="auto"). `replay_modules`: the choice saved there by a
  replay_modules="auto" run; else `training_batches()` (a fresh training
  dataset) is measured to make it (training/auto_replay.py).
  `data_parallel=False` builds one replica whatever config.replicas says
  (on the first replica's devices), for evaluation and export: the
  checkpoint is the same.
  """
  config = configs.with_defaults(config)
  keras.utils.set_random_seed(config.seed)
  precision = _set_precision(config)  # before the stages
  auto_balance.check_num_modules(config.model)
  replicas = check_replicas(config)
  stages, split = _cut_stages(config, num_classes, frame_shape, stage_sizes,
                              replay_modules, replicas)
  all_rows = device_rows(config.devices, len(stages), replicas)
  pipeline, parallel, replay_info = _make_pipeline(
      config, stages, frame_shape, all_rows,
      all_rows if data_parallel and replicas > 1 else None,
      training_batches, replay_modules)
  with parallel.scope():
    optimizer = make_optimizer(config.train)
  trainer = Trainer(
      pipeline, optimizer, config.algorithm,
      update_every_ticks=config.train.update_every_ticks,
      gradient_transform=cluster.all_reduce_mean if cluster else None,
      loss_scale=(DynamicLossScale() if precision == "mixed_float16"
                  else None), data_parallel=parallel)
  # Create every variable now (weights, buffers, optimizer slots) so that a
  # checkpoint restores into them at once. The replicas' own buffers are not
  # saved (every clip of bin/train starts from zero buffers).
  pipeline.allocate_state(config.train.batch_size, tuple(frame_shape))
  with parallel.scope():
    optimizer.build(pipeline.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  checkpoint = tf.train.Checkpoint(step=step, pipeline=pipeline,
                                   optimizer=optimizer)
  if trainer.loss_scale is not None:
    checkpoint.loss_scale = trainer.loss_scale
  return Setup(config, datasets, pipeline, optimizer, trainer, step,
               checkpoint, split, replay_info)


def _set_precision(config) -> str:
  """Sets Keras' dtype policy from config.mixed_precision; returns it."""
  precision = config.mixed_precision or "float32"
  if precision not in PRECISIONS:
    raise ValueError(
        f"config.mixed_precision must be '', 'mixed_bfloat16' or "
        f"'mixed_float16', got {precision!r}")
  keras.mixed_precision.set_dtype_policy(precision)
  return precision


def _make_pipeline(config, stages, frame_shape, all_rows, rows,
                   training_batches, replay_modules):
  """The Pipeline of `stages` on the first row of `all_rows` and its
  replicas (`rows`: one row of stage devices per replica, or None):
  (pipeline, DataParallel, the replay_modules="auto" choice or None)."""
  algorithm = algorithms.get(config.algorithm)

  def make_pipeline(replay):
    # The algorithm may fix the replay (pipelined_bp: L-1).
    return Pipeline(stages, devices=all_rows[0],
                    skips=parse_skips(config.skips),
                    skip_combine=config.skip_combine,
                    skip_align=bool(config.skip_align),
                    replay_modules=algorithm.replay_modules(len(stages),
                                                            replay),
                    **algorithms.options_from_config(config))

  # Replicas: the weights are mirrored, so the strategy builds the stages
  # before replay_modules="auto" runs them.
  strategy = data_parallel_lib.mirrored_strategy(rows) if rows else None
  if strategy is not None:
    with strategy.scope():
      make_pipeline(auto_replay.known(config, replay_modules)).build(
          frame_shape)
  replay, replay_info = auto_replay.resolve(
      config, make_pipeline, training_batches, replay_modules)
  pipeline = make_pipeline(replay)
  parallel = data_parallel_lib.DataParallel(pipeline, rows, strategy)
  parallel.build(frame_shape)
  return pipeline, parallel, replay_info


def _cut_stages(config, num_classes, frame_shape, stage_sizes, replay_modules,
                replicas):
  """The model's stages, unbuilt unless balancing had to build them (one
  replica only): (stages, the split of config.model.balance, or {})."""
  algorithm = algorithms.get(config.algorithm)
  stages, split = auto_balance.apply(
      config.model, models.build_stages(config.model, num_classes),
      frame_shape, config.train.batch_size, stage_sizes,
      num_devices=count_devices(config.devices) // replicas,
      replay_modules=(
          (lambda n: algorithm.replay_modules(
              n, auto_replay.known(config, replay_modules)))
          if algorithm.streams else 0),
      skips=parse_skips(config.skips), skip_align=bool(config.skip_align))
  if replicas > 1 and split and any(stage.built for stage in stages):
    # Balancing by time built the layers to time them, outside the
    # replicas' strategy, which must create the weights (mirrored): the same
    # layers again from the same seed (the same initial weights as one
    # replica), cut as measured.
    keras.utils.set_random_seed(config.seed)
    layers = [layer for stage in models.build_stages(config.model,
                                                     num_classes)
              for layer in stage.layers]
    stages = balance.to_stages(layers, split["stage_sizes"])
  return stages, split


def check_replicas(config) -> int:
  """config.replicas as an int R >= 1 that the batch and the devices
  allow (ValueError naming the problem otherwise)."""
  replicas = config.get("replicas", 1)
  if isinstance(replicas, bool) or not isinstance(replicas, int) or \
      replicas < 1:
    raise ValueError(f"--config.replicas must be a positive integer (data "
                     f"parallel replicas on this machine), got {replicas!r}")
  if replicas == 1:
    return 1
  batch_size = config.train.batch_size
  if batch_size % replicas:
    raise ValueError(
        f"--config.replicas={replicas} must divide --config.train.batch_size"
        f"={batch_size}: each replica trains on batch_size / replicas clips")
  if config.distributed:
    raise ValueError(
        f"--config.replicas={replicas} with --config.distributed=True is not "
        f"supported: use replicas on one machine, or one worker per machine")
  num_devices = count_devices(config.devices)
  if num_devices < replicas:
    raise ValueError(
        f"--config.replicas={replicas} needs at least {replicas} devices, "
        f"but --config.devices={config.devices!r} names {num_devices}; list "
        f"R x (devices per replica) devices, or use --config.devices=auto")
  if num_devices % replicas:
    raise ValueError(
        f"--config.replicas={replicas} must divide the {num_devices} "
        f"devices of --config.devices (each replica takes an equal group)")
  listed = [config.devices] if isinstance(config.devices, str) else list(
      config.devices)
  if listed != ["auto"]:
    data_parallel_lib.check_devices_exist(listed)
  return replicas


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
  return _map_modules(_auto_devices(), num_modules)


def _map_modules(found: list, num_modules: int) -> list:
  """Module k on device k*G//L of G devices (neighbours share when there
  are fewer devices than modules), else on the first L."""
  return [found[k * len(found) // num_modules] if num_modules > len(found)
          else found[k] for k in range(num_modules)]


def device_rows(devices, num_modules: int, replicas: int = 1) -> list:
  """config.devices -> one row of devices per replica, one per module (a
  row is None for default placement, one replica only).

  The devices (a list, or "auto") fall into `replicas` equal consecutive
  groups, replica r taking the r-th; "auto" maps a replica's modules onto its
  group as :func:`resolve_devices` does for one pipeline, a list must give
  every replica one device per module.
  """
  if replicas == 1:
    return [resolve_devices(devices, num_modules)]
  listed = [devices] if isinstance(devices, str) else list(devices or ())
  found = _auto_devices() if listed == ["auto"] else listed
  share = len(found) // replicas
  if listed != ["auto"] and share != num_modules:
    raise ValueError(
        f"config.devices lists {len(found)} devices for {replicas} replicas "
        f"of {num_modules} modules: list replicas x modules = "
        f"{replicas * num_modules} (replica r takes the r-th {num_modules}), "
        f"or use config.devices='auto'")
  return [_map_modules(found[r * share:(r + 1) * share], num_modules)
          for r in range(replicas)]


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
