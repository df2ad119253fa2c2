"""The training loop's periodic jobs, one small hook each.

Like tensorflow/models' `official/core/actions.py`: the loop runs the train
step; every hook decides on its own whether a step is due. Before the step:
:class:`FidelityHook`, :class:`StageTimeHook` (they look at the clip the step
trains on). After it: :class:`LogHook`, :class:`CheckpointHook`,
:class:`EvalHook`, in that order.

Each hook is given its own settings when it is made (:func:`make_hooks`, the
one place that reads the config for them) and never reads the config
itself, so a new periodic job touches this file and not the loop.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Dict, List, Optional, Tuple

import numpy as np

from absl import logging

from sideways_tf.data import shard_check
from sideways_tf.engine import algorithms
from sideways_tf.engine import state
from sideways_tf.run import summaries
from sideways_tf.run.files import atomic_write_text
from sideways_tf.training import diagnostics
from sideways_tf.training import progress
from sideways_tf.training import workdir as workdir_lib


@dataclasses.dataclass
class Context:
  """What the hooks of one run share."""
  setup: object  # builder.Setup
  workdir: pathlib.Path
  manager: object  # tf.train.CheckpointManager
  train_writer: object
  eval_writer: object
  lock: object = None  # workdir_lock.WorkdirLock of the chief, else None


def due(step: int, every: int) -> bool:
  return bool(every) and step % every == 0


class Hook:
  """A periodic job: `before_step` sees the clip, `after_step` the metrics."""

  def before_step(self, ctx: Context, step: int, frames, labels) -> None:
    pass

  def after_step(self, ctx: Context, step: int, frames, metrics,
                 seconds: float) -> None:
    pass


class FidelityHook(Hook):
  """How close Sideways is to BP on this run's data (docs/fidelity.md).

  Per module: the cosine and norm ratio of the two clip gradients, the
  cosine of the steps the optimizer would take with each (`update_cosine`),
  and `lag_change`, how much the module's input changes over its gradient
  lag. `fidelity/risk` is the largest lag_change of a module that Sideways
  approximates (replayed modules pair their gradient with the right input).

  The warning's statistic is the one docs/fidelity.md pre-registers: the
  largest `fidelity/risk` logged at a step <= RISK_WINDOW. A Sideways run
  warns once, at the first such step where it exceeds RISK_THRESHOLD, and
  says which replay would bring it below (:func:`diagnostics.replay_for`).
  A high risk says the approximation is coarse on this data, not that
  accuracy is lost (the easy moving-shapes default is above it and shows no
  gap).
  """

  RISK_THRESHOLD = diagnostics.RISK_THRESHOLD
  RISK_WINDOW = diagnostics.RISK_WINDOW

  def __init__(self, every: int, algorithm: str):
    self.every, self.algorithm = every, algorithm
    self.warned = False

  def before_step(self, ctx, step, frames, labels):
    if due(step, self.every):
      pipeline = ctx.setup.pipeline
      sideways = pipeline.compute_gradients(frames, labels, "sideways")
      bp = pipeline.compute_gradients(frames, labels, "bp")
      fidelity = summaries.gradient_fidelity(pipeline, sideways, bp)
      for module, value in diagnostics.update_cosine(
          pipeline, ctx.setup.optimizer, sideways, bp).items():
        fidelity[module]["update_cosine"] = value
      if frames.shape[0] > 1 and frames.shape[1] > 2 * (
          pipeline.num_modules - 1):
        for module, value in diagnostics.lag_change(pipeline, frames).items():
          fidelity.setdefault(module, {})["lag_change"] = value
      summaries.write_fidelity(ctx.train_writer, step, fidelity)
      risk = diagnostics.risk(pipeline, fidelity)
      if risk is not None:
        summaries.write_scalars(ctx.train_writer, step, {"fidelity/risk": risk})
        self._warn(ctx, step, risk, fidelity)

  def _warn(self, ctx, step, risk, fidelity):
    if (self.warned or step > self.RISK_WINDOW
        or risk <= self.RISK_THRESHOLD
        or algorithms.get(self.algorithm).exact):
      return
    self.warned = True
    logging.warning(
        "step %d: fidelity/risk = %.2f > %.2f: over their gradient lag the "
        "inputs of the Sideways modules change by a large part of the "
        "difference between two videos, so the approximation is coarse on "
        "this data; on hard tasks that costs accuracy (docs/fidelity.md). "
        "Compare with a short --config.algorithm=bp run, or %s", step, risk,
        self.RISK_THRESHOLD, replay_advice(ctx.setup.pipeline, fidelity,
                                           self.RISK_THRESHOLD))


def replay_advice(pipeline, fidelity, threshold) -> str:
  """What to do about a high risk, for this model: the replay that brings
  every approximated module's lag_change below the threshold."""
  lag_changes = {module: measures["lag_change"]
                 for module, measures in fidelity.items()
                 if "lag_change" in measures}
  has_skips = any(pipeline.skip_sources)
  batch_norm = state.has_batch_norm(pipeline.stages)
  count = diagnostics.replay_for(lag_changes, pipeline.num_modules, threshold,
                                 has_skips, batch_norm)
  if has_skips:
    return (f"use --config.replay_modules={count} (every module below the "
            f"top: with Skip-Sideways skips, replaying only some modules "
            f"trained no better than none; docs/skip_sideways.md).")
  if batch_norm:
    return (f"use --config.replay_modules={count} (every module below the "
            f"top: with batch norm, replaying only some modules collapsed "
            f"to chance on the map; docs/fidelity.md).")
  moved = sorted(int(m.split("_")[1]) for m, v in lag_changes.items()
                 if v > threshold)
  return (f"use --config.replay_modules={count} (replays modules 1..{count};"
          f" modules {moved} change by more than {threshold} over their "
          f"lag), or replay_modules='auto', or fewer modules.")


class StageTimeHook(Hook):
  """Each module's tick time (`stages/<k>/seconds`)."""

  def __init__(self, every: int):
    self.every = every

  def before_step(self, ctx, step, frames, labels):
    if due(step, self.every):
      summaries.write_stage_seconds(
          ctx.train_writer, step,
          ctx.setup.pipeline.stage_tick_seconds(frames, labels, repeats=3))


class LogHook(Hook):
  """Train loss, accuracy, learning rate and speed, averaged since the last
  log line; the progress bar; the first step's input clips; one warning if
  the loss diverges."""

  # A run starts near the cross-entropy of a uniform guess, ln C, and goes
  # down. At this many times ln C the model gives the right class a
  # probability of about C^-10 on average: it is confidently wrong on most
  # frames, i.e. the optimisation diverges (a NaN stop may never come: the
  # loss can stay large and finite).
  DIVERGENCE_FACTOR = 10.0

  def __init__(self, every: int, num_steps: int, first_step: int):
    self.every, self.num_steps = every, num_steps
    self.warned_divergence = False
    self.window = Window()
    self.last = {"loss": float("nan"), "accuracy": float("nan")}
    # `with log.progress:` around the loop keeps warnings off its line.
    self.progress = progress.ProgressBar(
        num_steps, first_step, stateful_metrics=["loss", "accuracy",
                                                 "frames/s"],
        unit_name="step")

  def after_step(self, ctx, step, frames, metrics, seconds):
    self.window.add(metrics, int(frames.shape[0]) * int(frames.shape[1]),
                    seconds)
    if step == 1:
      summaries.write_input_clips(ctx.train_writer, step, frames.numpy())
    if due(step, self.every) or step == self.num_steps:
      averages = self.window.flush()
      summaries.write_scalars(ctx.train_writer, step, {
          "train/loss": averages["loss"],
          "train/accuracy": averages["accuracy"],
          "train/learning_rate": learning_rate(ctx.setup.optimizer),
          "train/frames_per_second": averages["frames_per_second"]})
      self.progress.update(step, [
          ("loss", averages["loss"]), ("accuracy", averages["accuracy"]),
          ("frames/s", averages["frames_per_second"])])
      self.last = averages
      self._warn_if_diverging(ctx, step, averages["loss"])

  def _warn_if_diverging(self, ctx, step, loss):
    num_classes = ctx.setup.datasets.num_classes
    chance = float(np.log(num_classes))
    if self.warned_divergence or not loss > self.DIVERGENCE_FACTOR * chance:
      return
    self.warned_divergence = True
    logging.warning(
        "step %d: train/loss = %.3g is over %g times the loss of a uniform "
        "guess over %d classes (ln %d = %.2f): training is diverging. Stop "
        "it and rerun with a smaller --config.train.learning_rate (now "
        "%g).", step, loss,
        self.DIVERGENCE_FACTOR, num_classes, num_classes, chance,
        learning_rate(ctx.setup.optimizer))


class CheckpointHook(Hook):
  """Saves every `every` steps (refusing a non-finite saved variable)."""

  def __init__(self, every: int):
    self.every = every

  def after_step(self, ctx, step, frames, metrics, seconds):
    if due(step, self.every):
      workdir_lib.save_checkpoint(ctx.setup, ctx.manager, step, ctx.lock)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What an evaluation needs from the config: how many eval batches (None:
  the whole split) and the data config its read errors are named after."""
  num_batches: Optional[int]
  data: object  # config.data

  @classmethod
  def from_config(cls, config, num_batches: Optional[int] = None):
    return cls(num_batches or config.eval.num_batches or None, config.data)


class EvalHook(Hook):
  """Evaluates every `every` steps and after the last one."""

  def __init__(self, every: int, num_steps: int, settings: EvalSettings):
    self.every, self.num_steps, self.settings = every, num_steps, settings
    self.metrics: Dict[str, float] = {}

  def after_step(self, ctx, step, frames, metrics, seconds):
    if due(step, self.every) or step == self.num_steps:
      self.run(ctx, step)

  def run(self, ctx, step) -> Dict[str, float]:
    if ctx.lock is not None:
      ctx.lock.check("writing eval.json")
    self.metrics = evaluate(ctx.setup, ctx.eval_writer, step, ctx.workdir,
                            self.settings)
    return self.metrics


def make_hooks(config, first_step: int,
               is_chief: bool) -> Tuple[LogHook, EvalHook, List[Hook]]:
  """The run's hooks in the order they run, each with its settings from
  `config`; also the log and eval hooks, whose results the loop reports.
  Only the chief runs more than the log hook."""
  train = config.train
  log = LogHook(train.log_every, train.num_steps, first_step)
  evaluation = EvalHook(train.eval_every, train.num_steps,
                        EvalSettings.from_config(config))
  if not is_chief:
    return log, evaluation, [log]
  return log, evaluation, [
      log, FidelityHook(train.fidelity_every, config.algorithm),
      StageTimeHook(train.stage_time_every),
      CheckpointHook(train.checkpoint_every), evaluation]


def evaluate(setup, writer, step, workdir, settings: EvalSettings):
  """Clip and frame accuracy on the eval split -> TensorBoard,
  workdir/eval.json (not written if `workdir` is None)."""
  batches = setup.datasets.eval
  if settings.num_batches:
    batches = batches.take(settings.num_batches)
  with shard_check.named_data_errors(settings.data):
    metrics = setup.trainer.evaluate(batches, setup.datasets.label_parts)
  summaries.write_scalars(writer, step, dict({
      "eval/loss": metrics["loss"],
      "eval/accuracy": metrics["clip_accuracy"],
      "eval/frame_accuracy": metrics["frame_accuracy"]}, **{
          f"eval/accuracy/{key.split('/', 1)[1]}": value
          for key, value in metrics.items()
          if key.startswith("clip_accuracy/")}))
  if workdir is not None:
    atomic_write_text(pathlib.Path(workdir) / "eval.json",
                      json.dumps(dict(metrics, step=step), indent=2))
  return metrics


def learning_rate(optimizer) -> float:
  return float(np.asarray(optimizer.learning_rate))


class Window:
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
