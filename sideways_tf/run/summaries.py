"""What a run shows in TensorBoard and on the console, written in one place.

Tags (see docs/tensorboard.md): train/loss, train/accuracy,
train/learning_rate, train/frames_per_second, eval/loss, eval/accuracy,
eval/frame_accuracy, stages/<k>/seconds, fidelity/cosine/<module>,
fidelity/norm_ratio/<module>, input/clips (images), config (text), and hparams.
"""

from __future__ import annotations

import json
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api


def gradient_fidelity(pipeline, sideways_gradients: Sequence,
                      bp_gradients: Sequence) -> Dict[str, Dict[str, float]]:
  """How close Sideways is to BP, per module (1-based, as in docs/algorithm.md).

  cosine: cosine similarity of the module's flattened clip gradients;
  norm_ratio: |sideways| / |bp|. Both 1.0 when Sideways equals BP.
  """
  fidelity, start = {}, 0
  for k, stage in enumerate(pipeline.stages, start=1):
    count = len(stage.trainable_variables)
    if count == 0:
      continue
    flat = [np.concatenate([np.ravel(np.asarray(g, np.float64))
                            for g in grads[start:start + count]])
            for grads in (sideways_gradients, bp_gradients)]
    start += count
    sideways_norm, bp_norm = (float(np.linalg.norm(v)) for v in flat)
    denominator = sideways_norm * bp_norm
    fidelity[f"module_{k}"] = {
        "cosine": float(flat[0] @ flat[1]) / denominator if denominator else 0.0,
        "norm_ratio": sideways_norm / bp_norm if bp_norm else float("inf"),
    }
  return fidelity


def write_scalars(writer, step: int, scalars: Dict[str, float]) -> None:
  with writer.as_default(step=step):
    for tag, value in scalars.items():
      tf.summary.scalar(tag, value)


def write_fidelity(writer, step: int, fidelity) -> None:
  write_scalars(writer, step, {
      f"fidelity/{measure}/{module}": value
      for module, measures in fidelity.items()
      for measure, value in measures.items()})


def write_stage_seconds(writer, step: int, seconds: Sequence[float]) -> None:
  write_scalars(writer, step, {f"stages/{k}/seconds": s
                               for k, s in enumerate(seconds, start=1)})


def write_input_clips(writer, step: int, videos, max_clips: int = 3,
                      max_frames: int = 8) -> None:
  """Each clip as one filmstrip image (its first frames side by side)."""
  clips = np.asarray(videos[:max_clips, :max_frames], np.float32)
  strips = np.concatenate(list(np.moveaxis(clips, 1, 0)), axis=2)
  with writer.as_default(step=step):
    tf.summary.image("input/clips", np.clip(strips, 0.0, 1.0),
                     max_outputs=max_clips)


def write_config(writer, config, hparams: Dict[str, object]) -> None:
  """The run's config as text, and hparams so runs compare in one table."""
  with writer.as_default(step=0):
    tf.summary.text("config", "```\n" + config.to_json_best_effort(
        indent=2) + "\n```")
    hparams_api.hparams({k: _hparam_value(v) for k, v in hparams.items()})


def _hparam_value(value):
  if isinstance(value, (bool, int, float, str)):
    return value
  return json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
