"""What a user hands SidewaysModel, checked and put in the engine's terms.

Keras accepts many shapes of input (tuples, dicts, arrays, string losses and
metrics, compile options); the Pipeline takes one: float videos [B, T, H, W,
C], integer labels [B], a per-example loss ``fn(labels, logits) -> [B]``.
Everything here turns the former into the latter, or raises a ValueError
that names what to give instead. No model state: SidewaysModel calls these.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from sideways_tf.engine import pipeline as pipeline_lib

# Logs every SidewaysModel writes itself; a user metric may not take them.
OWN_LOGS = ("loss", "accuracy", "clip_accuracy", "frame_accuracy")


def unpack(data, need_labels: bool):
  """A dataset element -> (video, label or None).

  Elements are ``(video, label)`` tuples or ``{"video", "label"}`` dicts
  (Keras wraps a bare video as ``(video,)``).
  """
  if isinstance(data, dict):
    missing = [k for k in ("video", "label") if k not in data and (
        k == "video" or need_labels)]
    if missing:
      raise ValueError(
          f"dataset elements that are dicts need the keys 'video' and "
          f"'label'; missing {missing} in keys {sorted(data)}")
    video, label = data["video"], data.get("label")
  elif isinstance(data, (tuple, list)):
    if not 1 <= len(data) <= 3:
      raise ValueError(
          f"dataset elements must be (video, label) or {{'video', 'label'}},"
          f" got a tuple of {len(data)} items")
    video = data[0]
    label = data[1] if len(data) > 1 else None
    if len(data) == 3 and data[2] is not None:
      raise ValueError("sample weights are not supported: every clip of a "
                       "Sideways batch weighs the same")
  else:
    video, label = data, None
  return _checked_video(video), (
      _checked_label(label) if need_labels else label)


def _checked_video(video):
  video = tf.convert_to_tensor(video)
  if video.shape.rank != 5:
    raise ValueError(
        f"video must have shape [B, T, H, W, C], got shape {video.shape}")
  if not video.dtype.is_floating:
    raise ValueError(
        f"video must be float (e.g. uint8 / 255), got dtype {video.dtype.name}")
  return video


def _checked_label(label):
  if label is None:
    raise ValueError("training and evaluation need labels: give "
                     "(video, label) or {'video', 'label'} elements")
  label = tf.convert_to_tensor(label)
  if not label.dtype.is_integer or label.shape.rank != 1:
    raise ValueError(
        f"label must be integer class ids of shape [B], got dtype "
        f"{label.dtype.name} and shape {label.shape}")
  return label


def training_input_shape(x, batch_size=None):
  """[B, T, H, W, C] of the batches `fit(x, batch_size=...)` will train on:
  from a dataset's element spec (or its first element when the spec leaves
  B, H, W or C open), or from arrays of videos and the batch size."""
  if isinstance(x, tf.data.Dataset):
    spec = x.element_spec
    video_spec = (spec["video"] if isinstance(spec, dict) else
                  spec[0] if isinstance(spec, tuple) else spec)
    shape = tuple(getattr(video_spec, "shape", ()))
    if len(shape) != 5:
      raise ValueError(f"dataset elements must hold a video of shape "
                       f"[B, T, H, W, C], got element_spec {spec}")
    if shape[0] is None or None in shape[2:]:
      shape = tuple(unpack(next(iter(x)), True)[0].shape)
    return shape
  if isinstance(x, dict) or x is None:
    raise ValueError("fit takes a tf.data.Dataset of (video, label) or "
                     "{'video', 'label'} batches, or arrays x=videos, "
                     f"y=labels; got x={type(x)!r}")
  shape = tuple(np.shape(x))
  if len(shape) != 5:
    raise ValueError(
        f"x must be videos [N, T, H, W, C], got shape {shape}")
  return (min(batch_size or 32, shape[0]),) + shape[1:]


def first_clips(x, batch_size, count: int) -> list:
  """The first `count` batches of videos `fit(x, batch_size=...)` will see
  (what replay_modules="auto" measures): from a dataset (a new iterator of
  it), or from arrays of videos."""
  if isinstance(x, tf.data.Dataset):
    return [unpack(element, need_labels=False)[0]
            for element in x.take(count)]
  videos = np.asarray(x)
  size = min(batch_size or 32, len(videos))
  return [tf.convert_to_tensor(videos[i:i + size], tf.float32)
          for i in range(0, min(len(videos), count * size), size)
          if len(videos[i:i + size]) == size]


def batch_and_frame_shape(input_shape):
  """`build`'s [B, T, H, W, C] -> (B, (H, W, C)); T may be unknown."""
  shape = tuple(input_shape)
  if len(shape) != 5 or any(d is None for d in shape[:1] + shape[2:]):
    raise ValueError(f"input_shape must be [B, T, H, W, C] with B, H, W, C "
                     f"known, got {input_shape}")
  return int(shape[0]), tuple(int(d) for d in shape[2:])


def check_batch(batch_size, frame_shape, built_batch_size, built_frame_shape,
                fixed_batch: bool) -> None:
  """A training batch fits the model's buffers: the frame shape it was built
  for and, for an algorithm that keeps state across ticks (`fixed_batch`),
  its batch size."""
  if built_frame_shape is not None and tuple(frame_shape) != built_frame_shape:
    raise ValueError(f"frames of shape {list(frame_shape)} but the model "
                     f"was built for frames of shape {list(built_frame_shape)}")
  if (fixed_batch and built_batch_size is not None and
      batch_size != built_batch_size):
    raise ValueError(
        f"a Sideways training batch of {batch_size} clips, but the model's "
        f"buffers hold batches of {built_batch_size}: batch the "
        f"training data to a fixed size (drop_remainder=True)")


def check_compile_options(options) -> None:
  """Only Keras' defaults: the steps run the Pipeline's own compiled
  functions, so Keras' tracing, XLA and step-bundling options cannot apply."""
  defaults = {"run_eagerly": (False,), "jit_compile": ("auto", False),
              "steps_per_execution": (1,)}
  for key, value in options.items():
    if not any(type(value) is type(d) and value == d
               for d in defaults.get(key, ())):
      raise ValueError(
          f"compile({key}={value!r}) is not supported by SidewaysModel: "
          f"the steps run the Pipeline's own compiled functions")


def per_example_loss(loss):
  """compile's `loss` -> the Pipeline's ``fn(labels, logits) -> [B]``."""
  if isinstance(loss, str):
    raise ValueError(
        f"loss={loss!r}: give None (per-frame sparse cross-entropy on "
        f"logits), a keras.losses.Loss instance or fn(labels, logits) -> [B]")
  if loss is None:
    return pipeline_lib.sparse_softmax_cross_entropy
  if isinstance(loss, keras.losses.Loss):
    return loss.call  # per-example, unreduced
  if callable(loss):
    return loss
  raise ValueError(f"loss must be None, a keras.losses.Loss or a "
                   f"callable, got {loss!r}")


def clip_metrics(metrics):
  """compile's `metrics` -> Keras metrics of (labels, clip logits)."""
  checked = []
  for metric in metrics or []:
    if metric in ("accuracy", "acc"):
      raise ValueError(
          f"metrics={metric!r}: accuracy is always reported (fit: "
          f"'accuracy', evaluate: 'clip_accuracy' and 'frame_accuracy')")
    metric = keras.metrics.get(metric)
    if not isinstance(metric, keras.metrics.Metric):
      raise ValueError(f"metrics must be names or keras.metrics.Metric "
                       f"instances, got {metric!r}")
    if metric.name in OWN_LOGS:
      raise ValueError(f"metric name {metric.name!r} is taken by the "
                       f"model's own logs; name the metric otherwise")
    checked.append(metric)
  return checked
