"""What TensorBoard shows: the fidelity numbers and the tags written."""

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import sideways_tf
from sideways_tf.run import summaries


def pipeline_with_a_parameter_free_stage():
  stages = [keras.Sequential([keras.layers.Dense(3)]),
            keras.Sequential([keras.layers.ReLU()]),
            keras.Sequential([keras.layers.Dense(2)])]
  pipe = sideways_tf.Pipeline(stages)
  pipe.predict_frames(tf.zeros([1, 1, 4]))  # builds the stages
  return pipe


def test_fidelity_is_one_for_equal_gradients_and_tracks_scale_and_sign():
  pipe = pipeline_with_a_parameter_free_stage()
  grads = [tf.random.normal(v.shape) for v in pipe.trainable_variables]
  same = summaries.gradient_fidelity(pipe, grads, grads)
  # 1-based module numbers; the parameter-free module 2 has no entry.
  assert set(same) == {"module_1", "module_3"}
  for measures in same.values():
    assert measures["cosine"] == pytest.approx(1.0)
    assert measures["norm_ratio"] == pytest.approx(1.0)
  double = summaries.gradient_fidelity(pipe, [2 * g for g in grads], grads)
  assert double["module_1"]["norm_ratio"] == pytest.approx(2.0)
  assert double["module_1"]["cosine"] == pytest.approx(1.0)
  opposite = summaries.gradient_fidelity(pipe, [-g for g in grads], grads)
  assert opposite["module_3"]["cosine"] == pytest.approx(-1.0)


def test_fidelity_of_zero_gradients_is_defined():
  pipe = pipeline_with_a_parameter_free_stage()
  zeros = [tf.zeros(v.shape) for v in pipe.trainable_variables]
  ones = [tf.ones(v.shape) for v in pipe.trainable_variables]
  result = summaries.gradient_fidelity(pipe, zeros, ones)
  assert result["module_1"] == {"cosine": 0.0, "norm_ratio": 0.0}
  assert summaries.gradient_fidelity(pipe, ones, zeros)["module_1"][
      "norm_ratio"] == float("inf")


def read(logdir):
  accumulator = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.TENSORS: 0,
                                  event_accumulator.IMAGES: 0})
  accumulator.Reload()
  return accumulator


def test_writers_use_the_documented_tags(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))
  summaries.write_fidelity(writer, 3, {"module_1": {"cosine": 0.5,
                                                    "norm_ratio": 2.0}})
  summaries.write_stage_seconds(writer, 3, [0.25, 0.5])
  summaries.write_input_clips(writer, 1, np.full([4, 10, 5, 6, 3], 2.0))
  config = ml_collections.ConfigDict({"algorithm": "bp", "devices": ()})
  summaries.write_config(writer, config, {"algorithm": "bp",
                                          "widths": (4, 8)})
  writer.flush()
  accumulator = read(tmp_path)
  tags = set(accumulator.Tags()["tensors"])
  assert {"fidelity/cosine/module_1", "fidelity/norm_ratio/module_1",
          "stages/1/seconds", "stages/2/seconds", "config"} <= tags
  value = accumulator.Tensors("stages/2/seconds")[0]
  assert value.step == 3
  assert tf.make_ndarray(value.tensor_proto) == pytest.approx(0.5)
  # Three clips at most, eight frames at most, side by side.
  # (TF2 stores an image summary as [width, height, png, png, ...].)
  images = tf.make_ndarray(accumulator.Tensors("input/clips")[0].tensor_proto)
  assert len(images) == 2 + 3
  assert (int(images[0]), int(images[1])) == (8 * 6, 5)
