"""A temporal model served as it was trained: the streaming SavedModel and
TFLite step carry the temporal states (state in/out), stream == clip within
1e-5, and the SavedModel loads without sideways_tf."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from sideways_tf.serving import export
from sideways_tf.layers import temporal
from sideways_tf.models import frame_cnn_stages
from tests import test_export

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("temporal_export")
  stages = frame_cnn_stages(5, num_modules=3, widths=(4, 8, 8),
                            temporal="conv:3")
  pipe = sideways_tf.Pipeline(stages)
  frames = tf.zeros((1, 1, 16, 16, 3))
  pipe.predict_frames(frames)  # builds
  rng = np.random.RandomState(0)
  for layer in [l for s in stages for l in temporal.temporal_layers(s)]:
    layer.kernel.assign(rng.normal(0, 0.5, layer.kernel.shape))  # a past
  video = rng.randint(0, 256, size=(2, 7, 16, 16, 3)).astype(np.uint8)
  expected = np.asarray(pipe.predict_frames(video.astype(np.float32) / 255.0))
  path = export.export_saved_model(pipe, (16, 16, 3), tmp / "model")
  export.export_tflite(path)
  np.save(tmp / "video.npy", video)
  return path, tmp / "video.npy", video, expected


def test_saved_model_streams_like_the_clip(exported):
  path, video_path, _, expected = exported
  report = test_export.run_check(path, video_path)
  assert report["num_modules"] == 3
  assert report["valid"] == [False] * 2 + [True] * 7
  assert report["max_abs_diff_stream_vs_clip"] < TOLERANCE
  np.testing.assert_allclose(report["frame_logits"], expected, rtol=1e-5,
                             atol=1e-6)
  signature = tf.saved_model.load(str(path)).signatures["init_state"]
  state = signature(batch_size=tf.constant(2))
  assert {k: tuple(v.shape) for k, v in state.items()
          if k.startswith("temporal")} == {
              "temporal_1_1": (2, 2, 16, 16, 4),
              "temporal_2_1": (2, 2, 8, 8, 8),
              "temporal_3_1": (2, 2, 4, 4, 8)}


def test_tflite_step_streams_like_the_clip(exported):
  path, _, video, expected = exported
  with warnings.catch_warnings():  # "use ai_edge_litert" deprecation note
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(str(path / "tflite" / "step.tflite"))
  step = interpreter.get_signature_runner("step")
  inputs = step.get_input_details()
  assert {"temporal_1_1", "temporal_2_1", "temporal_3_1"} < set(inputs)
  state = {name: np.zeros([2] + list(d["shape_signature"][1:]), d["dtype"])
           for name, d in inputs.items() if name != "frame"}
  streamed = []
  for t in range(7 + 2):  # then L-1 padding frames
    frame = video[:, t] if t < 7 else np.zeros_like(video[:, 0])
    out = step(frame=frame, **state)
    state = {name: out[name] for name in state}
    if out["valid"].all():
      streamed.append(out["logits"])
  streamed = np.stack(streamed, axis=1)
  assert np.abs(streamed - expected).max() < TOLERANCE


def test_sideways_model_fits_and_serves_the_trained_streaming_model(
    tmp_path):
  """Keras fit trains the temporal stages with Sideways (state buffers in the
  model's weights); export serves those very weights as a stream."""
  import keras
  keras.utils.set_random_seed(3)
  stages = frame_cnn_stages(3, num_modules=2, widths=(4, 8),
                            temporal="shift:0.25")
  model = sideways_tf.SidewaysModel(stages, algorithm="sideways",
                                    replay_modules=1)
  model.compile(keras.optimizers.Adam(0.01))
  rng = np.random.RandomState(1)
  videos = rng.rand(4, 6, 8, 8, 3).astype(np.float32)
  history = model.fit(videos, np.arange(4) % 3, batch_size=2, epochs=2,
                      verbose=0)
  assert np.isfinite(history.history["loss"]).all()
  names = [w.path for w in model.weights]
  assert any("temporal_state_0" in n for n in names)
  assert any("temporal_history_0" in n for n in names)  # replayed module
  path = model.export(tmp_path / "model", tflite=True)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(str(path / "tflite" / "step.tflite"))
  step = interpreter.get_signature_runner("step")
  state = {name: np.zeros([2] + list(d["shape_signature"][1:]), d["dtype"])
           for name, d in step.get_input_details().items() if name != "frame"}
  frames = np.round(videos[:2] * 255).astype(np.uint8)
  clip = np.asarray(model.pipeline.predict_frames(frames / 255.0))
  streamed = []
  for t in range(6 + 1):
    out = step(frame=frames[:, t] if t < 6 else np.zeros_like(frames[:, 0]),
               **state)
    state = {name: out[name] for name in state}
    if out["valid"].all():
      streamed.append(out["logits"])
  assert np.abs(np.stack(streamed, 1) - clip).max() < TOLERANCE
