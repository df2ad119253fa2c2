"""Data parallel on one machine: R replicas x L stage devices.

``DataParallel(pipeline, devices)`` runs R replicas of one
:class:`~sideways_tf.engine.pipeline.Pipeline` under
``tf.distribute.MirroredStrategy``, replica r on ``devices[r]`` (one device per
stage, so each replica is itself depth parallel): 8 GPUs serve as 8x1, 4x2,
2x4 or 1x8. Every batch of B clips is split into R slices of B/R; replica r
computes the clip gradient of its slice with ``Pipeline.clip_gradients``
(whatever the algorithm: nothing here names one), and one optimizer step
applies their mean, which is the whole batch's clip gradient (every algorithm
normalises per example, and the replicas have equal slices and clip lengths).

How a replica that spans L devices sits in MirroredStrategy, which gives each
replica one device (it has no device groups):

* **The strategy** runs over the replicas' first stage devices. Inside the
  replica function the Pipeline places stage k's ops on the replica's own
  device k (an inner ``tf.device`` overrides the strategy's).
* **Weights** are created under the strategy's scope (:meth:`build`), so each
  is a MirroredVariable with one copy per replica, on the replica's first
  device; stage k > 0 reads its copy from there (on GPUs a device-to-device
  copy per read; free between the logical CPUs of the tests). The optimizer
  is created under the scope as well (its slots are mirrored the same way).
* **Gradients.** The Keras optimizer, called in every replica's context, sums
  the replicas' gradients with the strategy's all-reduce (the standard
  tf.distribute path, NCCL between GPUs) and applies the sum to every copy;
  each replica hands it its gradient divided by R, so the sum is the mean.
* **Sideways buffers** are each replica's own: every replica is a Pipeline of
  its own (``Pipeline.with_devices``) over the same stages, whose buffers are
  plain variables on its stage devices, created outside the scope. Each
  replica streams its own B/R clips.
* **Batch norm** (as across workers): each replica normalises with its own
  clips' statistics and keeps its own moving statistics (a MirroredVariable
  that is never aggregated updates the replica's copy only); checkpoints,
  evaluation and export use replica 0's.

The ``pipeline`` passed in stays the model as one replica: evaluation,
diagnostics, export and checkpoints use it (reading replica 0's copy of every
weight), so a checkpoint written with R replicas is the one-replica
checkpoint. One replica (``devices=None``) is the pipeline itself, with no
strategy: the trainer's single-device path. See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import tensorflow as tf

from sideways_tf.engine import checks
from sideways_tf.engine.algorithm import ClipResult
from sideways_tf.engine.pipeline import Pipeline

_SUM = tf.distribute.ReduceOp.SUM
_MEAN = tf.distribute.ReduceOp.MEAN


class DataParallel:
  """R replicas of `pipeline`, replica r on the stage devices ``devices[r]``.

  Args:
    pipeline: the model (its stages unbuilt, or built under :meth:`scope`).
    devices: ``None`` for one replica (the pipeline itself), or R rows of one
      device per stage, e.g. ``[["/GPU:0", "/GPU:1"], ["/GPU:2",
      "/GPU:3"]]`` (2 replicas x 2 stages). The rows' first devices must
      differ: they are the strategy's.

  Create the optimizer under :meth:`scope` and hand both to
  ``Trainer(pipeline, optimizer, algorithm, data_parallel=...)``.
  """

  def __init__(self, pipeline: Pipeline,
               devices: Optional[Sequence[Sequence[str]]] = None,
               strategy: Optional[tf.distribute.MirroredStrategy] = None):
    self.pipeline = pipeline
    self._built = False
    self._mean_fns = {}  # compute_gradients' traces, by algorithm
    if devices is None:
      self.strategy = None
      self.replicas = [pipeline]
      return
    rows = [list(row) for row in devices]
    for r, row in enumerate(rows):
      if len(row) != pipeline.num_modules or not all(row):
        raise ValueError(
            f"devices[{r}] must name one device per stage ("
            f"{pipeline.num_modules} stages), got {row!r}")
    if strategy is None:
      strategy = mirrored_strategy(rows)
    elif [_device_key(d) for d in strategy.extended.worker_devices] != [
        _device_key(row[0]) for row in rows]:
      raise ValueError(f"strategy runs on {strategy.extended.worker_devices},"
                       f" not on the replicas' first devices")
    self.strategy = strategy
    # Outside the scope: each replica's buffers are its own plain variables.
    self.replicas = [pipeline.with_devices(row) for row in rows]

  @property
  def num_replicas(self) -> int:
    return len(self.replicas)

  def scope(self):
    """The strategy's scope: create the optimizer (and build the stages)
    under it. A no-op for one replica."""
    if self.strategy is None:
      return contextlib.nullcontext()
    return self.strategy.scope()

  def build(self, frame_shape: Sequence[int], dtype=tf.float32) -> None:
    """Builds the stages (under the scope, so every weight is mirrored;
    ValueError if some were built before, outside it)."""
    if self._built:
      return
    with self.scope():
      self.pipeline.build(frame_shape, dtype)
    outside = [] if self.strategy is None else [
        v.path for v in self.pipeline.trainable_variables
        if not self.strategy.extended.variable_created_in_scope(v.value)]
    if outside:
      raise ValueError(
          f"data parallelism mirrors the weights, so the stages must be "
          f"built under DataParallel.scope() (or given unbuilt); "
          f"{len(outside)} weight(s) were built outside it, e.g. "
          f"{outside[0]}")
    self._built = True

  def check_optimizer(self, optimizer) -> None:
    """ValueError unless `optimizer` was created under :meth:`scope`."""
    if self.strategy is not None and not self.strategy.extended \
        .variable_created_in_scope(optimizer.iterations.value):
      raise ValueError(
          "with data parallelism the optimizer must be created under "
          "DataParallel.scope(), so its state is mirrored like the weights")

  def prepare_inputs(self, frames, labels, algorithm: str,
                     reset: bool = True):
    """Validates a batch, builds the stages and allocates every replica's
    buffers for its B/R clips (outside the scope); returns the whole batch
    as the trainer's step takes it."""
    if self.strategy is None:
      return self.pipeline.prepare_inputs(frames, labels, algorithm, reset)
    frames, labels = checks.check_clip(frames, labels, None)
    batch_size = int(frames.shape[0])
    if batch_size % self.num_replicas:
      raise ValueError(
          f"a batch of {batch_size} clips cannot be split evenly over "
          f"{self.num_replicas} replicas; use a batch size divisible by "
          f"{self.num_replicas}")
    self.build(frames.shape[2:], frames.dtype)
    self._follow_loss()
    share = batch_size // self.num_replicas
    for r, replica in enumerate(self.replicas):
      replica.prepare_inputs(frames[r * share:(r + 1) * share],
                             labels[r * share:(r + 1) * share], algorithm,
                             reset)
    return frames, tf.cast(labels, tf.int32)

  def compute_gradients(self, frames, labels, algorithm: str = "sideways"):
    """The gradient one step of the replicas applies (the mean of their
    clip gradients: the whole batch's), aligned with the pipeline's
    trainable_variables; applies nothing."""
    frames, labels = self.prepare_inputs(frames, labels, algorithm)
    if self.strategy is None:
      return self.pipeline.compute_gradients(frames, labels, algorithm)
    if algorithm not in self._mean_fns:
      def mean_gradient(replica_frames, replica_labels):
        gradients = self.clip_gradients(replica_frames, replica_labels,
                                         algorithm, reset=True).gradients
        return [self.strategy.reduce(_MEAN, g, axis=None) for g in gradients]
      self._mean_fns[algorithm] = tf.function(mean_gradient, autograph=False)
    with self.scope():
      return self._mean_fns[algorithm](frames, labels)

  def _follow_loss(self) -> None:
    """The replicas compute the pipeline's loss as it is now (a Keras
    compile replaces it); traces made with another are dropped."""
    if self.replicas[0].loss_fn is not self.pipeline.loss_fn:
      for replica in self.replicas:
        replica.loss_fn = self.pipeline.loss_fn
        replica._compiled.clear()  # pylint: disable=protected-access
      self._mean_fns.clear()

  def reset_state(self) -> None:
    """Zeroes every replica's buffers (a clip boundary)."""
    for replica in self.replicas:
      replica.reset_state()

  # ------------------------------------- inside the trainer's tf.function,
  # traced under scope() (the strategy's cross-replica context)

  def clip_gradients(self, frames, labels, algorithm: str, reset: bool,
                     loss_scale=None) -> ClipResult:
    """Every replica's clip gradient of its slice (per-replica values for
    :meth:`apply_gradients`), with the whole batch's loss, accuracy and
    number of loss terms."""
    if self.strategy is None:
      return self.pipeline.clip_gradients(frames, labels, algorithm, reset,
                                          loss_scale)

    def replica_clip(replica_frames, replica_labels):
      return self._replica().clip_gradients(
          replica_frames, replica_labels, algorithm, reset, loss_scale)

    result = self.strategy.run(
        replica_clip, args=(self._split(frames), self._split(labels)))
    # Equal slices of equal clips: every replica has the same number of
    # loss terms, so the mean of their means is the whole batch's.
    return ClipResult(
        result.gradients,
        self.strategy.reduce(_MEAN, result.loss, axis=None),
        self.strategy.reduce(_MEAN, result.accuracy, axis=None),
        self.strategy.reduce(_SUM, result.num_loss_terms, axis=None))

  def all_finite(self, gradients) -> tf.Tensor:
    """True iff every replica's gradients are all finite."""
    if self.strategy is None:
      return _all_finite(gradients)
    not_finite = self.strategy.run(
        lambda grads: 1.0 - tf.cast(_all_finite(grads), tf.float32),
        args=(gradients,))
    return tf.equal(self.strategy.reduce(_SUM, not_finite, axis=None), 0.0)

  def apply_gradients(self, optimizer, gradients) -> None:
    """One optimizer step with the mean of the replicas' gradients."""
    variables = self.pipeline.trainable_variables
    if self.strategy is None:
      optimizer.apply_gradients(zip(gradients, variables))
      return
    count = float(self.num_replicas)

    def apply(replica_gradients):
      # In a replica context the Keras optimizer all-reduces (sums) the
      # replicas' gradients before it updates every copy of the weights.
      optimizer.apply_gradients(zip(
          [g / tf.cast(count, g.dtype) for g in replica_gradients],
          variables))

    self.strategy.run(apply, args=(gradients,))

  def _split(self, tensor):
    """Replica r's slice [r*B/R, (r+1)*B/R) of a batch, on its device."""
    share = int(tensor.shape[0]) // self.num_replicas
    return self.strategy.experimental_distribute_values_from_function(
        lambda context: tensor[context.replica_id_in_sync_group * share:
                               (context.replica_id_in_sync_group + 1) * share])

  def _replica(self) -> Pipeline:
    """The Pipeline of the replica whose context this is."""
    replica_id = tf.get_static_value(
        tf.distribute.get_replica_context().replica_id_in_sync_group)
    return self.replicas[int(replica_id)]


def mirrored_strategy(devices: Sequence[Sequence[str]]
                      ) -> tf.distribute.MirroredStrategy:
  """The MirroredStrategy of replicas on the rows `devices` (over their
  first devices), for a :class:`DataParallel` whose stages must be built
  before its pipeline exists (under ``strategy.scope()``)."""
  rows = [list(row) for row in devices]
  if not rows or not all(rows):
    raise ValueError(f"devices must list every replica's devices, got "
                     f"{rows!r}")
  check_devices_exist([device for row in rows for device in row])
  firsts = [_device_key(row[0]) for row in rows]
  if len(set(firsts)) != len(firsts):
    raise ValueError(
        f"the replicas' first devices must differ (they are the "
        f"strategy's, one per replica), got {[row[0] for row in rows]}")
  return tf.distribute.MirroredStrategy(devices=[row[0] for row in rows])


def _device_key(device: str) -> tuple:
  """(type, index) of a device string, whatever job/replica prefix it has."""
  spec = tf.DeviceSpec.from_string(device)
  return (spec.device_type or "").upper(), spec.device_index


def check_devices_exist(devices) -> None:
  """ValueError naming a device TF does not see: the strategy would wait
  forever on a replica placed on it."""
  seen = {_device_key(d.name): d.name for d in tf.config.list_logical_devices()}
  missing = [d for d in devices if _device_key(d) not in seen]
  if missing:
    raise ValueError(
        f"data parallelism needs every replica's devices to exist; "
        f"TensorFlow does not see {sorted(set(missing))} (it sees "
        f"{sorted(seen.values())})")


def _all_finite(gradients) -> tf.Tensor:
  return tf.reduce_all(tf.stack(
      [tf.reduce_all(tf.math.is_finite(g)) for g in gradients]))
