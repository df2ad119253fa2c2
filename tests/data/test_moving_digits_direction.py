"""Digit x direction: labels, constant motion on the torus, and no direction
in any single frame (what makes a per-frame model guess the direction)."""

import dataclasses

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.data import moving_digits

DIRECTION = moving_digits.Settings(
    image_size=32, num_frames=8, object_size=16, num_train=40, num_test=10,
    seed=3, label="digit_direction", num_directions=4)
CLEAN = dataclasses.replace(DIRECTION, clutter=0.0, noise=0.0,
                            speed_min=1.0, speed_max=1.0)
STEPS = {"down": (0, 1), "left": (-1, 0), "right": (1, 0), "up": (0, -1)}


def test_the_label_is_digit_times_direction():
  names = DIRECTION.class_names
  assert len(names) == 40 and names[:5] == (
      "0_down", "0_left", "0_right", "0_up", "1_down")
  assert list(names) == sorted(names)  # mp4 class folders keep the ids
  _, digit_labels = moving_digits.load_digit_images()
  labels = []
  for index in range(40):
    example = moving_digits.render_video(DIRECTION, "train", index)
    digit, direction = divmod(example["label"], 4)
    assert example["direction"] == direction
    assert digit_labels[example["instance"]] == digit
    labels.append(example["label"])
  assert sorted(labels) == list(range(40))  # balanced
  assert DIRECTION.label_parts == {"digit": (4, 10), "direction": (1, 4)}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_the_digit_keeps_its_direction_across_the_wrap(name):
  """1 px/frame along an axis on the torus: frame t is frame 0 rolled by
  t px, for every t (the digit leaves an edge and comes back at the other,
  never turning)."""
  direction = [n for n, _ in moving_digits.directions(4)].index(name)
  settings = dataclasses.replace(CLEAN, num_frames=40)
  dx, dy = STEPS[name]
  for index in range(direction, 12, 4):
    video = moving_digits.render_video(settings, "train", index)["video"]
    for t in range(1, 40):
      rolled = np.roll(video[0], (t * dy, t * dx), axis=(0, 1))
      assert np.abs(video[t].astype(int) - rolled).max() <= 1, (index, t)


def test_a_single_frame_carries_no_direction():
  """Everything a video is made of is drawn before and apart from its
  direction, and the start is uniform on the torus: the first frame is
  the same for every direction (so is its distribution at any frame t,
  the start shifted by t steps)."""
  for index in range(8):
    first = [moving_digits.render_video(DIRECTION, "test", index,
                                        direction=d)["video"]
             for d in range(4)]
    for video in first[1:]:
      np.testing.assert_array_equal(video[0], first[0][0])
    assert all(np.abs(v[1:].astype(int) - first[0][1:]).max() > 0
               for v in first[1:])  # ...but they move apart


def test_the_start_is_uniform_on_the_torus():
  rng = np.random.default_rng(0)
  starts = np.array([moving_digits.trajectory(DIRECTION, rng, 0)[0][0]
                     for _ in range(4000)])
  counts, _ = np.histogram(starts, bins=4, range=(0, 32))
  # Uniform: each quarter holds 1000 +- 4 standard deviations (~27).
  assert np.abs(counts - 1000).max() < 110


def test_the_digit_variant_keeps_its_cache_name():
  """Adding the direction fields left the digit sets' cache hash alone."""
  assert moving_digits.Settings().config_name == "s32_f16_81e8872af8ce"
  assert DIRECTION.config_name != dataclasses.replace(
      DIRECTION, label="digit").config_name


def _data_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      name="moving_digits", label_key="digit_direction", num_directions=4,
      num_frames=8, image_size=32, num_classes=40, temporal_stride=1))
  config.update(overrides)
  return config


def test_settings_from_the_config():
  settings = moving_digits.settings_from_config(_data_config())
  assert (settings.label, settings.num_classes, settings.num_labels) == (
      "digit_direction", 10, 40)
  five = moving_digits.settings_from_config(_data_config(num_classes=20))
  assert five.num_classes == 5
  with pytest.raises(ValueError, match="digits x num_directions"):
    moving_digits.settings_from_config(_data_config(num_classes=30,
                                                    num_directions=8))
  with pytest.raises(ValueError, match="label_key"):
    moving_digits.settings_from_config(_data_config(label_key="motion"))


def test_the_config_file_builds_the_task():
  from configs import moving_digits_direction as config_file
  config = config_file.get_config()
  settings = moving_digits.settings_from_config(config.data)
  assert settings.moves_by_direction and settings.num_labels == 16
  assert config.model.temporal


def test_evaluation_reports_each_part_of_the_label():
  import keras
  import sideways_tf
  identity = keras.layers.Identity()
  identity.build((None, 8))
  pipe = sideways_tf.Pipeline([identity])
  trainer = sideways_tf.Trainer(pipe, keras.optimizers.SGD(0.1), "bp")
  # 2 digits x 4 directions. Logits = one-hot of the prediction: labels
  # 5, 6, 7 (digit 1; directions 1, 2, 3) predicted as 4, 6, 1 (digits 1,
  # 1, 0; directions 0, 2, 1): 2 of 3 digits and 1 of 3 directions right.
  predicted = tf.one_hot([4, 6, 1], 8)[:, None]
  metrics = trainer.evaluate(
      [{"video": tf.repeat(predicted, 2, 1), "label": tf.constant([5, 6, 7])}],
      {"digit": (4, 2), "direction": (1, 4)})
  assert metrics["clip_accuracy"] == pytest.approx(1 / 3)
  assert metrics["clip_accuracy/digit"] == pytest.approx(2 / 3)
  assert metrics["clip_accuracy/direction"] == pytest.approx(1 / 3)


def test_the_tfds_set_loads_with_its_label_parts(tmp_path):
  from sideways_tf import data
  config = _data_config(num_classes=8, num_train=8, num_test=8,
                        data_dir=str(tmp_path), seed=3)
  datasets = data.get_datasets(config, batch_size=4, eval_batch_size=8,
                               seed=0)
  assert datasets.num_classes == 8
  assert datasets.class_names[:2] == ["0_down", "0_left"]
  assert datasets.label_parts == {"digit": (4, 2), "direction": (1, 4)}
  batch = next(iter(datasets.eval))
  assert batch["video"].shape == (8, 8, 32, 32, 3)
  assert sorted(batch["label"].numpy().tolist()) == list(range(8))
