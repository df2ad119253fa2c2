"""What an algorithm is: the one interface every way of computing a clip
gradient implements, and the result they all return.

An algorithm gets a :class:`~sideways_tf.engine.pipeline.Pipeline` (its
modules, their buffers, devices, skips, loss and options), a clip of frames
and its labels, and returns a :class:`ClipResult`: the clip gradient aligned
with ``Pipeline.trainable_variables`` plus the loss and accuracy of the same
forward passes. The algorithms themselves (`sideways.py`, `bp.py`,
`gpipe.py`, ...) live one per module below `pipeline.py` and are listed in
one table, `algorithms.py`; `Pipeline`, the trainer, the configs and the
command-line errors all read that table. This file sits below all of them,
so nothing imports in a circle.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, NamedTuple

import tensorflow as tf

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class ClipResult(NamedTuple):
  """Clip gradient plus what the trainer logs about the same forward passes."""
  gradients: List[tf.Tensor]  # aligned with Pipeline.trainable_variables
  loss: tf.Tensor             # mean per-example loss over the valid loss terms
  accuracy: tf.Tensor         # fraction of valid loss terms classified right
  num_loss_terms: tf.Tensor   # B * (number of ticks/frames with a valid loss)


def sparse_softmax_cross_entropy(labels, logits):
  """The default loss: per-example cross-entropy from logits, shape [B]."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(labels, tf.int32), logits=logits)


class Algorithm(abc.ABC):
  """One way to compute the clip gradient of a Pipeline.

  Subclasses set the class attributes and implement :meth:`clip_gradients`
  (and :meth:`validate` where they refuse some pipelines or clips).

  Attributes:
    name: the string users pass (``algorithm="..."``, ``--config.algorithm``).
    summary: one line for error messages and docs.
    exact: True if every term of the gradient is an exact BP gradient: BP's
      clip gradient (the mean per-frame loss over the batch and the clip),
      or for ``pipelined_bp`` BP's gradient of the frames whose gradient
      reaches each module within the clip; False for an approximation. The
      trainer warns about fidelity risk only for approximations.
    streams: True if the algorithm runs the tick engine: it keeps per-module
      buffers across calls (so a stream can be fed in chunks with
      ``reset=False``), needs them allocated for the batch size, and
      replays the bottom :meth:`replay_modules` modules.
    options: the Pipeline keyword arguments this algorithm adds, with their
      defaults (e.g. GPipe's ``gpipe_micro_batch_frames``).
    config_keys: for each option, the config field that sets it (dotted
      path), read by the trainer's builder.
  """
  name: str = ""
  summary: str = ""
  exact: bool = True
  streams: bool = False
  options: Dict[str, Any] = {}
  config_keys: Dict[str, str] = {}

  def make_options(self, **values) -> Any:
    """The validated options object (ValueError naming a bad value)."""
    return None

  def validate(self, pipeline, num_frames: int, reset: bool) -> None:
    """Raises ValueError if this pipeline cannot run a clip of T frames."""

  def replay_modules(self, num_modules: int, requested: int) -> int:
    """How many bottom modules the tick engine replays (streaming
    algorithms): the Pipeline's ``replay_modules`` (`requested`) unless the
    algorithm fixes it; the pipeline's buffers are allocated for it."""
    del num_modules
    return requested

  @abc.abstractmethod
  def clip_gradients(self, pipeline, frames, labels, reset: bool,
                     loss_scale) -> ClipResult:
    """Graph of the clip gradient (called inside ``tf.function``).

    `frames` [B, T, ...] and int32 `labels` [B] went through
    ``Pipeline.prepare_inputs``; `loss_scale` is a float32 scalar that
    multiplies the loss where it is differentiated (float16 stages), and the
    returned gradients and loss are divided by it again.
    """
