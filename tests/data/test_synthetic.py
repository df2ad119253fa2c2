"""The offline moving-shapes set: determinism, labels, motion, caching."""

import dataclasses
from unittest import mock

import ml_collections
import numpy as np
import pytest

from sideways_tf import data
from sideways_tf.data import synthetic

TINY = synthetic.Settings(image_size=32, num_frames=8, num_shapes=4,
                          num_directions=4, speed=1.0, noise=0.05,
                          num_train=32, num_test=16, seed=3)


def tiny_config(data_dir, **overrides):
  config = ml_collections.ConfigDict(dict(
      name="synthetic", label_key="appearance", num_frames=8, image_size=32,
      num_classes=4, speed=1.0, noise=0.05, num_distractors=0, num_train=32,
      num_test=16, temporal_stride=1, data_dir=str(data_dir), seed=3))
  config.update(overrides)
  return config


def test_same_settings_same_bytes_other_seed_other_bytes():
  first = synthetic.generate_example(TINY, "train", 5)
  again = synthetic.generate_example(TINY, "train", 5)
  other = synthetic.generate_example(dataclasses.replace(TINY, seed=4),
                                     "train", 5)
  assert first["video"].tobytes() == again["video"].tobytes()
  assert first["video"].tobytes() != other["video"].tobytes()
  assert first["video"].shape == (8, 32, 32, 3)
  assert first["video"].dtype == np.uint8


def test_labels_are_balanced():
  settings = dataclasses.replace(TINY, num_shapes=4, num_directions=8)
  pairs = [synthetic.labels_for_index(settings, i) for i in range(64)]
  appearance, motion = np.array(pairs).T
  assert np.bincount(appearance).tolist() == [16] * 4
  assert np.bincount(motion).tolist() == [8] * 8
  assert len(set(pairs)) == 32  # every (shape, direction) pair, twice


@pytest.mark.parametrize("num_directions", [4, 8])
def test_motion_label_is_the_direction_of_the_centroid(num_directions):
  settings = dataclasses.replace(TINY, noise=0.0, num_frames=10, speed=1.5,
                                 num_directions=num_directions)
  names = synthetic.direction_names(num_directions)
  for index in range(settings.num_shapes * num_directions):
    example = synthetic.generate_example(settings, "train", index)
    video = example["video"].astype(np.float32)
    background = video[:, :1, :1, :]  # a corner: the path stays inside
    mask = np.abs(video - background).sum(-1) > 30
    ys, xs = np.mgrid[:32, :32]
    centroid = np.stack([(xs * m).sum() / m.sum() for m in mask]), np.stack(
        [(ys * m).sum() / m.sum() for m in mask])
    dx, dy = centroid[0][-1] - centroid[0][0], centroid[1][-1] - centroid[1][0]
    expected = synthetic._DIRECTION_VECTORS[names[example["motion"]]]
    norm = np.hypot(*expected)
    travelled = 1.5 * 9
    assert dx == pytest.approx(travelled * expected[0] / norm, abs=1.0)
    assert dy == pytest.approx(travelled * expected[1] / norm, abs=1.0)


def test_shapes_are_distinct_and_centred():
  grid = np.arange(33, dtype=np.float32) - 16
  masks = [synthetic.shape_sdf(name, grid[None, :], grid[:, None], 5.5) < 0
           for name in synthetic.SHAPES]
  for i in range(len(masks)):
    assert 20 < masks[i].sum() < 130  # ~10-12 px across
    for j in range(i):
      assert (masks[i] != masks[j]).sum() >= 10, (synthetic.SHAPES[i],
                                                   synthetic.SHAPES[j])


def test_get_datasets_and_caching(tmp_path):
  config = tiny_config(tmp_path)
  datasets = data.get_datasets(config, batch_size=4, eval_batch_size=5,
                               seed=0)
  assert datasets.class_names == ["square", "circle", "triangle", "plus"]
  assert datasets.num_classes == 4 and datasets.frame_shape == (32, 32, 3)
  batch = next(iter(datasets.train))
  assert batch["video"].shape == (4, 8, 32, 32, 3)
  assert batch["video"].dtype.name == "float32"
  assert batch["label"].dtype.name == "int32"
  sizes = [int(b["label"].shape[0]) for b in datasets.eval]
  assert sizes == [5, 5, 5, 1]  # drop_remainder=False
  labels = np.concatenate([b["label"].numpy() for b in datasets.eval])
  assert np.bincount(labels).tolist() == [4, 4, 4, 4]
  # The stored bytes, not a re-render, come back (no augmentation here).
  first = next(iter(datasets.eval))["video"].numpy()
  assert np.all((first * 255).round() == (first * 255))

  records = sorted(tmp_path.rglob("*.tfrecord*"))
  mtimes = [p.stat().st_mtime_ns for p in records]
  with mock.patch.object(synthetic.MovingShapes, "_generate_examples",
                         side_effect=AssertionError("regenerated")):
    data.get_datasets(config, batch_size=4, eval_batch_size=5, seed=0)
  assert [p.stat().st_mtime_ns for p in records] == mtimes
  # Another setting is cached separately.
  data.get_datasets(tiny_config(tmp_path, speed=2.0), batch_size=4,
                    eval_batch_size=5, seed=0)
  assert len(list(tmp_path.glob("moving_shapes/*"))) == 2


def test_motion_label_key_and_bad_names(tmp_path):
  datasets = data.get_datasets(
      tiny_config(tmp_path, label_key="motion", num_classes=8), batch_size=2,
      eval_batch_size=16, seed=0)
  assert datasets.class_names == list(synthetic.DIRECTIONS_8)
  with pytest.raises(ValueError, match="4 or 8"):
    data.get_datasets(tiny_config(tmp_path, label_key="motion",
                                  num_classes=5), 2, 2, 0)
  with pytest.raises(ValueError, match="'colour'"):
    data.get_datasets(tiny_config(tmp_path, label_key="colour"), 2, 2, 0)
  with pytest.raises(ValueError, match="synthetic, tfds, video_folder"):
    data.get_datasets(tiny_config(tmp_path, name="kinetics"), 2, 2, 0)
