"""SavedModel export: clip inference and streaming inference, TF-only to load.

Signatures (inspect with `saved_model_cli show --all --dir DIR`):

* ``serving_default(video)``: uint8 ``[B, T, H, W, C]`` (B, T, H, W free; frames
  are scaled to [0, 1] and resized to the model's size inside) ->
  ``logits [B, classes]`` (mean of per-frame logits), ``frame_logits
  [B, T, classes]``, ``probabilities [B, classes]``, ``labels [B]`` (the
  top class's name).
* ``init_state(batch_size)`` -> the streaming state: ``activation_k`` (the
  input held by module k = 2..L), ``skip_k_from_j`` (Skip-Sideways models
  only), ``temporal_k_i`` (models with causal temporal layers: the i-th
  layer of module k's last inputs) and ``ticks`` ``[B]`` (frames seen).
* ``step(frame, activation_2, ..., ticks)``: uint8 ``[B, H, W, C]`` plus the
  state -> ``logits`` of the frame leaving the pipeline this tick (frame
  t-L+1), ``valid`` (True once a real frame has left it, t >= L) and the new
  state under the same names. The state is explicit input/output, as in
  MoViNet's streaming exports, so the batch size stays free.

The class names also sit in ``assets.extra/class_names.txt`` (one a line, in
class-id order), so a server needs nothing from the training workdir.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Optional, Sequence

import keras
import tensorflow as tf

from sideways_tf.run import quiet
from sideways_tf.engine.pipeline import Pipeline


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


CLASS_NAMES_FILE = "assets.extra/class_names.txt"


def export_saved_model(pipeline: Pipeline, frame_shape: Sequence[int],
                       output_dir, overwrite: bool = False,
                       class_names: Optional[Sequence[str]] = None
                       ) -> pathlib.Path:
  """Writes the SavedModel to `output_dir` (atomically: temp dir, rename).

  `class_names` (default "0", "1", ...) become the `labels` output and
  assets.extra/class_names.txt.
  """
  output_dir = pathlib.Path(output_dir)
  if output_dir.exists() and not overwrite:
    raise ValueError(f"{output_dir} exists; pass --overwrite (bin/export) or overwrite=True "
                     f"(export_saved_model) to replace it")
  frame_shape = tuple(int(d) for d in frame_shape)
  class_names = _checked_class_names(pipeline, frame_shape, class_names)
  archive = _archive(pipeline, frame_shape, class_names)
  tmp = output_dir.with_name(f".{output_dir.name}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  archive.write_out(str(tmp), verbose=False)
  (tmp / CLASS_NAMES_FILE).parent.mkdir(exist_ok=True)
  (tmp / CLASS_NAMES_FILE).write_text("".join(c + "\n" for c in class_names))
  if output_dir.exists():
    shutil.rmtree(output_dir)
  tmp.rename(output_dir)
  return output_dir


def _checked_class_names(pipeline, frame_shape, class_names):
  """One name per class of the model (default "0", "1", ...), one line each."""
  num_classes = int(pipeline._ensure_built(  # pylint: disable=protected-access
      frame_shape, tf.float32)[-1].output_shape[-1])
  class_names = ([str(i) for i in range(num_classes)] if class_names is None
                 else [str(c) for c in class_names])
  if len(class_names) != num_classes or any("\n" in c for c in class_names):
    raise ValueError(f"class_names must be {num_classes} names without line "
                     f"breaks (the model has {num_classes} classes), got "
                     f"{class_names!r}")
  return class_names


def _archive(pipeline, frame_shape, class_names) -> keras.export.ExportArchive:
  """The three signatures (module docstring) over the pipeline's stages."""
  height, width, channels = frame_shape
  image_size = [height, width]
  state_specs = pipeline.stream_state_specs(frame_shape)
  state_names = [name for name, _, _ in state_specs]

  def serve(video):
    frame_logits = pipeline.frame_logits(preprocess(video, image_size))
    logits = tf.reduce_mean(frame_logits, axis=1)
    return {"logits": logits, "frame_logits": frame_logits,
            "probabilities": tf.nn.softmax(logits),
            "labels": tf.gather(tf.constant(class_names),
                                tf.argmax(logits, axis=-1))}

  def init_state(batch_size):
    state = {name: tf.zeros(tf.concat([[batch_size], shape], axis=0), dtype)
             for name, shape, dtype in state_specs}
    state["ticks"] = tf.zeros([batch_size], tf.int64)
    return state

  def step(frame, state):
    activations = [state[name] for name in state_names]
    logits, new_activations = pipeline.stream_tick(
        preprocess(frame, image_size), activations, ticks=state["ticks"])
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
  return archive


def export_trained(pipeline: Pipeline, frame_shape, output_dir,
                   overwrite: bool = False,
                   class_names: Optional[Sequence[str]] = None,
                   tflite: bool = False) -> pathlib.Path:
  """SidewaysModel.export: the SavedModel of a model that has seen frames
  (`frame_shape` None: not yet) and, with `tflite`, its streaming step as
  TFLite in OUTPUT/tflite/ (as bin/export --tflite)."""
  if frame_shape is None:
    raise ValueError("the model has not seen a frame yet: build, fit or "
                     "predict first so the export knows the frame shape")
  path = export_saved_model(pipeline, frame_shape, output_dir,
                            overwrite=overwrite, class_names=class_names)
  if tflite:
    export_tflite(path)
  return path


TFLITE_DIR = "tflite"


def export_tflite(saved_model_dir, output_path=None) -> pathlib.Path:
  """Converts the streaming `step` signature to a TFLite (LiteRT) flatbuffer.

  TFLite builtin ops only (the converter fails otherwise); the state stays
  explicit inputs/outputs, as in the SavedModel. Default output:
  SAVED_MODEL/tflite/step.tflite, with class_names.txt beside it.
  """
  saved_model_dir = pathlib.Path(saved_model_dir)
  output_path = pathlib.Path(output_path or
                             saved_model_dir / TFLITE_DIR / "step.tflite")
  converter = tf.lite.TFLiteConverter.from_saved_model(
      str(saved_model_dir), signature_keys=["step"])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  with quiet.c_lines_hidden():  # its C++ lines, shown only if it fails
    flatbuffer = converter.convert()
  output_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = output_path.with_name(f".{output_path.name}.tmp")
  tmp.write_bytes(flatbuffer)
  os.replace(tmp, output_path)
  names = saved_model_dir / CLASS_NAMES_FILE
  if names.exists():
    shutil.copyfile(names, output_path.parent / "class_names.txt")
  return output_path
