"""SavedModel export: clip inference and streaming inference, TF-only to load.

Signatures (inspect with `saved_model_cli show --all --dir DIR`):

* ``serving_default(video)``: uint8 ``[B, T, H, W, C]`` (B, T, H, W free; frames
  are scaled to [0, 1] and resized to the model's size inside) ->
  ``logits [B, classes]`` (mean of per-frame logits), ``frame_logits
  [B, T, classes]``, ``probabilities [B, classes]``.
* ``init_state(batch_size)`` -> the streaming state: ``activation_k`` (the
  input held by module k = 2..L), ``skip_k_from_j`` (Skip-Sideways models
  only) and ``ticks`` ``[B]`` (frames seen).
* ``step(frame, activation_2, ..., ticks)``: uint8 ``[B, H, W, C]`` plus the
  state -> ``logits`` of the frame leaving the pipeline this tick (frame
  t-L+1), ``valid`` (True once a real frame has left it, t >= L) and the new
  state under the same names. The state is explicit input/output, as in
  MoViNet's streaming exports, so the batch size stays free.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Sequence

import keras
import tensorflow as tf

from sideways_tf.pipeline import Pipeline


def preprocess(video_uint8, image_size: Sequence[int]):
  """uint8 frames [..., H, W, C] -> float32 in [0, 1] at `image_size`."""
  video = tf.cast(video_uint8, tf.float32) / 255.0
  shape = tf.shape(video)
  frames = tf.reshape(video, tf.concat([[-1], shape[-3:]], axis=0))
  same_size = tf.reduce_all(tf.equal(shape[-3:-1], image_size))
  frames = tf.cond(same_size, lambda: frames,
                   lambda: tf.image.resize(frames, image_size))
  return tf.reshape(frames, tf.concat(
      [shape[:-3], image_size, shape[-1:]], axis=0))


def export_saved_model(pipeline: Pipeline, frame_shape: Sequence[int],
                       output_dir, overwrite: bool = False) -> pathlib.Path:
  """Writes the SavedModel to `output_dir` (atomically: temp dir, rename)."""
  output_dir = pathlib.Path(output_dir)
  if output_dir.exists() and not overwrite:
    raise ValueError(f"{output_dir} exists; pass --overwrite (bin/export) or overwrite=True "
                     f"(export_saved_model) to replace it")
  height, width, channels = (int(d) for d in frame_shape)
  image_size = [height, width]
  state_specs = pipeline.stream_state_specs((height, width, channels))
  state_names = [name for name, _, _ in state_specs]

  def serve(video):
    frame_logits = pipeline.frame_logits(preprocess(video, image_size))
    logits = tf.reduce_mean(frame_logits, axis=1)
    return {"logits": logits, "frame_logits": frame_logits,
            "probabilities": tf.nn.softmax(logits)}

  def init_state(batch_size):
    state = {name: tf.zeros(tf.concat([[batch_size], shape], axis=0), dtype)
             for name, shape, dtype in state_specs}
    state["ticks"] = tf.zeros([batch_size], tf.int64)
    return state

  def step(frame, state):
    activations = [state[name] for name in state_names]
    logits, new_activations = pipeline.stream_tick(
        preprocess(frame, image_size), activations)
    ticks = state["ticks"] + 1
    outputs = dict(zip(state_names, new_activations))
    outputs.update(ticks=ticks, logits=logits,
                   valid=ticks >= pipeline.num_modules)
    return outputs

  archive = keras.export.ExportArchive()
  for stage in pipeline.stages:
    archive.track(stage)
  archive.add_endpoint("serving_default", serve, input_signature=[
      tf.TensorSpec([None, None, None, None, channels], tf.uint8, "video")])
  archive.add_endpoint("init_state", init_state, input_signature=[
      tf.TensorSpec([], tf.int32, "batch_size")])
  archive.add_endpoint("step", step, input_signature=[
      tf.TensorSpec([None, None, None, channels], tf.uint8, "frame"),
      dict({name: tf.TensorSpec([None, *shape], dtype, name)
            for name, shape, dtype in state_specs},
           ticks=tf.TensorSpec([None], tf.int64, "ticks"))])

  tmp = output_dir.with_name(f".{output_dir.name}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  archive.write_out(str(tmp), verbose=False)
  if output_dir.exists():
    shutil.rmtree(output_dir)
  tmp.rename(output_dir)
  return output_dir
