"""The Pipeline, its replicas and the Trainer behind a SidewaysModel.

A SidewaysModel owns no engine of its own: it makes a
:class:`sideways_tf.Pipeline` of its stages (with the replay the algorithm
asks for, and weight stashing when it updates inside a clip), a
:class:`DataParallel` of it (one replica, or one per row of devices under a
``MirroredStrategy``) and, once compiled, a :class:`Trainer` over both.
``replay_modules="auto"`` is chosen on the first batches `fit` sees, which
replaces the pipeline (training/auto_replay.py).

:class:`PipelineMethods` is a mixin of :class:`SidewaysModel` (model.py):
the attributes it sets (``_pipeline_args``, whose stages Keras tracks,
``pipeline``, ``data_parallel``, ``sideways_modules``) are the model's, set
in the same order as before they moved here, so saved weights keep their
layout.
"""

from __future__ import annotations

from sideways_tf.engine import algorithms
from sideways_tf.engine import pipeline as pipeline_lib
from sideways_tf.training import auto_replay
from sideways_tf.training import data_parallel as data_parallel_lib
from sideways_tf.training.trainer import Trainer


class PipelineMethods:
  """How :class:`SidewaysModel` makes its pipeline and trainer (a mixin: it
  reads the model's `algorithm`, `update_every_ticks` and `optimizer`)."""

  def _init_pipeline(self, stages, devices, skips, skip_combine,
                     replay_modules):
    """The first pipeline (called once, by __init__). `devices`: one per
    stage, or one row of stage devices per replica."""
    self._replay_auto = replay_modules == auto_replay.AUTO and (
        algorithms.get(self.algorithm).streams)
    # Data parallel: one row of stage devices per replica, one strategy for
    # every pipeline the model makes (the weights are built under it).
    self._replica_rows = (
        None if not devices or isinstance(devices[0], (str, type(None)))
        else [list(row) for row in devices])
    self._strategy = (data_parallel_lib.mirrored_strategy(self._replica_rows)
                      if self._replica_rows else None)
    self._pipeline_args = dict(
        stages=stages, skips=skips, skip_combine=skip_combine,
        devices=self._replica_rows[0] if self._replica_rows else devices)
    self.pipeline = self._new_pipeline(
        0 if replay_modules == auto_replay.AUTO else replay_modules)
    # Keras tracks the modules (and through them the stages and buffers) for
    # save_weights / BackupAndRestore / ModelCheckpoint; with "auto", the
    # modules of the pipeline the first fit chooses (_choose_replay).
    if not self._replay_auto:
      self.sideways_modules = list(self.pipeline.modules)

  @property
  def replay_modules(self):
    """The replayed modules (an int), or "auto" until the first fit chose."""
    return auto_replay.AUTO if self._replay_auto else (
        self.pipeline.replay_modules)

  def _new_pipeline(self, replay_modules: int):
    pipeline = pipeline_lib.Pipeline(
        replay_modules=algorithms.get(self.algorithm).replay_modules(
            len(self._pipeline_args["stages"]), replay_modules),
        **self._pipeline_args)
    if self.update_every_ticks and algorithms.get(self.algorithm).streams:
      pipeline.stash_replay_weights()  # before the modules are tracked
    # Not tracked by Keras (a plain object): the weights are the pipeline's,
    # the replicas' own buffers are not saved (as bin/train).
    self.data_parallel = data_parallel_lib.DataParallel(
        pipeline, self._replica_rows, self._strategy)
    return pipeline

  def _new_trainer(self) -> Trainer:
    return Trainer(self.pipeline, self.optimizer, self.algorithm,
                   update_every_ticks=self.update_every_ticks,
                   data_parallel=self.data_parallel)

  def _choose_replay(self, clips):
    """replay_modules="auto": measured on `clips`, before anything is built;
    a new pipeline (and trainer) with the chosen replay."""
    clips = list(clips)
    if clips:  # replicas: the weights are built (mirrored) before they run
      self.data_parallel.build(tuple(clips[0].shape[2:]))
    count, _ = auto_replay.choose(self.pipeline, clips)
    self._replay_auto = False
    if count:
      loss_fn = self.pipeline.loss_fn
      self.pipeline = self._new_pipeline(count)
      self.pipeline.loss_fn = loss_fn
      if self.trainer is not None:
        self.trainer = self._new_trainer()
    self.sideways_modules = list(self.pipeline.modules)
