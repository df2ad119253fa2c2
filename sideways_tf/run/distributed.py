"""Across machines: data parallel (workers) x depth parallel (modules).

Every worker runs its own :class:`sideways_tf.Pipeline` (its modules on its own
local devices, its own Sideways buffers) on its own shard of the data. Once
per update the workers' clip gradients are averaged with a collective
all-reduce, so every worker applies the same step to the same weights. For
equal per-worker batches the mean of the workers' clip gradients is the clip
gradient of the concatenated batch (both Sideways and BP normalise per example;
batch norm is the exception: its statistics stay per worker).

The cluster comes from ``TF_CONFIG`` through the standard
``tf.distribute.MultiWorkerMirroredStrategy``, which sets up the collective
ops. The pipeline's variables are deliberately *not* created under
``strategy.scope()``: Sideways buffers are per-worker state and must not be
mirrored. The strategy is used for its all-reduce only.

  cluster = Cluster(timeout_seconds=300)       # reads TF_CONFIG
  trainer = Trainer(pipe, opt, gradient_transform=cluster.all_reduce_mean)
  cluster.broadcast_from_chief(pipe.trainable_variables)
  train_data = cluster.shard(train_data)

A stop signal on any worker reaches all of them through the same all-reduce
(`vote_stop` before a step, `agreed_stop` after it), so every worker stops
after the same step. See docs/scaling.md and docs/robustness.md.
"""

from __future__ import annotations

import json
import os
import signal
from typing import List, Optional, Sequence

import tensorflow as tf

# Raised by a collective whose peer died, timed out or aborted.
COLLECTIVE_ERRORS = (tf.errors.UnavailableError,
                     tf.errors.DeadlineExceededError,
                     tf.errors.CancelledError, tf.errors.AbortedError,
                     tf.errors.InternalError)


class WorkerLostError(RuntimeError):
  """A collective failed: another worker died, hung or is unreachable."""


class _OneReplicaPerWorker(
    tf.distribute.cluster_resolver.TFConfigClusterResolver):
  """TF_CONFIG, but one (host) replica per worker whatever its GPUs: the
  modules spread over a worker's GPUs by config.devices, not by replicas."""

  def num_accelerators(self, task_type=None, task_id=None,
                       config_proto=None):
    del task_type, task_id, config_proto
    return {}


def _worker_position(resolver):
  """(num_workers, task type, task id, worker index) from TF_CONFIG.

  The worker index is in [0, num_workers): the chief (if a "chief" job
  exists) is 0, the "worker" tasks follow.
  """
  spec = resolver.cluster_spec().as_dict()
  num_workers = sum(len(spec.get(job, ())) for job in
                    ("chief", "worker")) or 1
  task_type = resolver.task_type or "worker"
  task_id = int(resolver.task_id or 0)
  has_chief_job = bool(spec.get("chief"))
  worker_index = (0 if task_type == "chief" else
                  task_id + (1 if has_chief_job else 0))
  return num_workers, task_type, task_id, worker_index


class StopVote:
  """A stop signal on any worker ends every worker after the same step.

  This worker's vote ([SIGTERM, SIGINT]: which signal it got) rides along in
  the next gradient all-reduce, whose mean over the workers lands in
  `agreed`; so every worker reads the same agreement after the same step,
  without a collective of its own. Local state, not mirrored.
  """

  def __init__(self):
    self.vote = tf.Variable(tf.zeros([2]), trainable=False, name="stop_vote")
    self.agreed = tf.Variable(tf.zeros([2]), trainable=False,
                              name="stop_agreed")
    self._voted = None

  def cast(self, signum: Optional[int]) -> None:
    """Votes to stop with `signum` (None: to go on)."""
    if signum == self._voted:
      return
    self._voted = signum
    self.vote.assign([float(signum == signal.SIGTERM),
                      float(signum == signal.SIGINT)])

  def agreed_signal(self) -> Optional[int]:
    """The signal of the agreement (SIGTERM before SIGINT), or None."""
    term, interrupt = (float(v) for v in self.agreed.numpy())
    if term > 0:
      return int(signal.SIGTERM)
    if interrupt > 0:
      return int(signal.SIGINT)
    return None


class Cluster:
  """The workers of TF_CONFIG and the all-reduce of their clip gradients.

  Must be created before any other TensorFlow op runs in the process (a
  requirement of MultiWorkerMirroredStrategy). Without TF_CONFIG it is a
  cluster of one worker.

  Args:
    timeout_seconds: bound on every collective (0 = none). A worker that dies
      makes the others fail with :class:`WorkerLostError` (usually within
      seconds: the connection breaks; at worst after this timeout). It must
      exceed the longest time one worker can wait for another to reach the
      same all-reduce, i.e. the first step's tracing on the slowest worker.
  """

  def __init__(self, timeout_seconds: float = 300.0):
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=float(timeout_seconds) or None)
    self.strategy = tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=_OneReplicaPerWorker(),
        communication_options=options)
    (self.num_workers, self.task_type, self.task_id,
     self.worker_index) = _worker_position(self.strategy.cluster_resolver)
    self.is_chief = self.worker_index == 0
    if self.strategy.num_replicas_in_sync != self.num_workers:
      raise ValueError(
          f"config.distributed runs one pipeline per worker on the worker's "
          f"local devices, so TF sees one replica per worker; got "
          f"{self.strategy.num_replicas_in_sync} replicas for "
          f"{self.num_workers} workers. Place modules with config.devices, "
          f"not with more replicas per worker.")
    self._device = self.strategy.extended.worker_devices[0]
    self._stop = StopVote()

  def __repr__(self):
    return (f"Cluster(worker {self.worker_index} of {self.num_workers}, "
            f"{self.task_type}:{self.task_id}, chief={self.is_chief})")

  # ----------------------------------------------------------- all-reduce

  def all_reduce(self, tensors: Sequence[tf.Tensor],
                 op: tf.distribute.ReduceOp) -> List[tf.Tensor]:
    """Collective all-reduce of a list of tensors (graph or eager)."""
    tensors = list(tensors)
    if not tensors:
      return []

    def replica_fn(*values):
      # Tensors from a tf.function carry no device; the collective needs one.
      with tf.device(self._device):
        values = [tf.identity(v) for v in values]
      # One all-reduce per dtype (the strategy packs a list into one tensor).
      reduced = [None] * len(values)
      for dtype in sorted({v.dtype for v in values}, key=lambda d: d.name):
        group = [i for i, v in enumerate(values) if v.dtype == dtype]
        results = tf.distribute.get_replica_context().all_reduce(
            op, [values[i] for i in group])
        for i, result in zip(group, results):
          reduced[i] = result
      return reduced

    reduced = self.strategy.run(replica_fn, args=tuple(tensors))
    return list(reduced)

  def all_reduce_mean(self, gradients: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """The Trainer's gradient_transform: the mean of the workers' gradients.

    The workers' stop votes (:meth:`vote_stop`) ride along in the same
    all-reduce, so every worker learns of a stop at the same step
    (:meth:`agreed_stop`) without a collective of its own.
    """
    gradients = list(gradients)
    reduced = self.all_reduce(gradients + [self._stop.vote.read_value()],
                              tf.distribute.ReduceOp.MEAN)
    self._stop.agreed.assign(reduced[-1])
    return reduced[:-1]

  # ------------------------------------------------------------- stopping

  def vote_stop(self, signum: Optional[int]) -> None:
    """This worker's stop request (the signal it got, or None), sent with the
    next gradient all-reduce."""
    self._stop.cast(signum)

  def agreed_stop(self) -> Optional[int]:
    """The signal some worker voted to stop with at the last gradient
    all-reduce (SIGTERM before SIGINT), or None: the same on every worker."""
    return self._stop.agreed_signal()

  # ------------------------------------------------------------ start up

  def broadcast_from_chief(self, variables: Sequence[tf.Variable]) -> float:
    """Gives every worker the chief's values of `variables`.

    Returns the largest absolute difference this worker's values had from the
    chief's before (0.0 when every worker started from the same seed or the
    same checkpoint). A broadcast is an all-reduce SUM of the chief's values
    and zeros from everyone else: exact.
    """
    variables = list(variables)

    def broadcast(chief_flag):
      local = [tf.convert_to_tensor(v) for v in variables]
      contributions = [tf.where(chief_flag, x, tf.zeros_like(x))
                       for x in local]
      chief = self.all_reduce(contributions, tf.distribute.ReduceOp.SUM)
      differences = [tf.reduce_max(tf.abs(tf.cast(c - x, tf.float64)))
                     for c, x in zip(chief, local)]
      with tf.control_dependencies(differences):
        assigns = [v.assign(c) for v, c in zip(variables, chief)]
      with tf.control_dependencies(assigns):
        return tf.reduce_max(tf.stack(differences + [tf.constant(
            0.0, tf.float64)]))
    # A new function per call: it captures these variables (called once).
    return float(tf.function(broadcast, autograph=False)(
        tf.constant(self.is_chief)))

  def shard(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Worker i keeps every num_workers-th element starting at i.

    On a batched dataset that is drawn in the same order on every worker (same
    seed), the workers see disjoint batches; one global step consumes
    num_workers consecutive batches.
    """
    if self.num_workers == 1:
      return dataset
    return dataset.shard(self.num_workers, self.worker_index)


def tf_config_summary() -> str:
  """What TF_CONFIG says, for a start-up line."""
  raw = os.environ.get("TF_CONFIG", "")
  if not raw:
    return "TF_CONFIG not set: a cluster of one worker"
  config = json.loads(raw)
  return f"TF_CONFIG task {config.get('task')} of {config.get('cluster')}"


def lost_worker_message(cluster: Cluster, step: int, latest: str,
                        error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  # The line that says why (TF's first line is "Graph execution error:").
  reason = next((line for line in lines if any(
      word in line.lower() for word in ("aborted", "timed out", "deadline",
                                        "unavailable", "reset"))),
                lines[0] if lines else "")
  return (
      f"worker {cluster.worker_index} of {cluster.num_workers}: the gradient "
      f"all-reduce of step {step} failed ({type(error).__name__}: "
      f"{reason[:200]}). Another worker died, hung or is unreachable. "
      f"Stop every worker and start them all again with the same commands: "
      f"they resume from the chief's last checkpoint "
      f"({latest or 'none yet: from step 0'}).")
