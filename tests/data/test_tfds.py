"""A TFDS video data set (ucf101), offline through tfds.testing.mock_data."""

import ml_collections
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from sideways_tf import data


def ucf101_config(tmp_path, **overrides):
  config = ml_collections.ConfigDict(dict(
      name="tfds", tfds_name="ucf101", video_key="video", label_key="label",
      train_split="train", eval_split="test", num_frames=4, temporal_stride=2,
      image_size=16, num_classes=101, data_dir=str(tmp_path)))
  config.update(overrides)
  return config


def test_ucf101_through_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    source = data.load_source(ucf101_config(tmp_path))
    assert source.train.element_spec["frames"].dtype == tf.string  # encoded
    datasets = data.get_datasets(ucf101_config(tmp_path), batch_size=2,
                                 eval_batch_size=3, seed=0)
    batch = next(iter(datasets.train))
    sizes = [int(b["label"].shape[0]) for b in datasets.eval]
  assert datasets.num_classes == 101 and len(datasets.class_names) == 101
  assert batch["video"].shape == (2, 4, 16, 16, 3)
  assert batch["video"].dtype == tf.float32
  assert batch["label"].dtype == tf.int32
  assert sizes == [3, 2]


def test_unprepared_and_unknown_tfds_names(tmp_path):
  with pytest.raises(ValueError, match="tfds build ucf101"):
    data.get_datasets(ucf101_config(tmp_path), 2, 2, 0)
  with pytest.raises(ValueError, match="'no_such_set'"):
    data.get_datasets(ucf101_config(tmp_path, tfds_name="no_such_set"),
                      2, 2, 0)
  with pytest.raises(ValueError, match="'clip'"):
    with tfds.testing.mock_data(num_examples=1):
      data.get_datasets(ucf101_config(tmp_path, video_key="clip"), 2, 2, 0)
