"""The moving-digits set: determinism, instance split, speed, clean frames."""

import dataclasses
from unittest import mock

import ml_collections
import numpy as np
import pytest

from sideways_tf import data
from sideways_tf.data import moving_digits

TINY = moving_digits.Settings(image_size=32, num_frames=8, object_size=16,
                              num_train=20, num_test=10, seed=3)
CLEAN = dataclasses.replace(TINY, clutter=0.0, noise=0.0, num_frames=12)


def tiny_config(data_dir, **overrides):
  config = ml_collections.ConfigDict(dict(
      name="moving_digits", label_key="label", num_frames=8, image_size=32,
      num_classes=10, object_size=16, speed_range=(1.0, 2.0),
      speed_per_object=(), clutter=0.5, num_distractors=0, noise=0.1,
      num_train=20, num_test=10, num_train_instances=0,
      test_instance_fraction=0.25, temporal_stride=1, data_dir=str(data_dir),
      seed=3))
  config.update(overrides)
  return config


def centroids(video):
  """[T, 2] (x, y) intensity centroid of each frame of a clean video."""
  mass = video.astype(np.float64).sum(-1)
  ys, xs = np.mgrid[:video.shape[1], :video.shape[2]]
  total = mass.sum((1, 2))
  return np.stack([(mass * xs).sum((1, 2)) / total,
                   (mass * ys).sum((1, 2)) / total], -1)


def test_same_settings_same_bytes_other_seed_other_bytes():
  first = moving_digits.render_video(TINY, "train", 5)
  again = moving_digits.render_video(TINY, "train", 5)
  other = moving_digits.render_video(dataclasses.replace(TINY, seed=4),
                                     "train", 5)
  assert first["video"].tobytes() == again["video"].tobytes()
  assert first["video"].tobytes() != other["video"].tobytes()
  assert first["video"].shape == (8, 32, 32, 3)
  assert first["video"].dtype == np.uint8
  assert first["label"] == 5 and 0 <= first["instance"] < 1797


def test_instance_split_is_disjoint_and_the_test_pool_fixed():
  settings = dataclasses.replace(TINY, num_train=200, num_test=100)
  pools = moving_digits.instance_split(settings)
  train = np.concatenate(pools["train"])
  test = np.concatenate(pools["test"])
  assert not set(train) & set(test)
  assert len(train) + len(test) == 1797  # every image, once
  _, labels = moving_digits.load_digit_images()
  for digit in range(10):
    assert (labels[pools["train"][digit]] == digit).all()
    assert (labels[pools["test"][digit]] == digit).all()
    share = len(pools["test"][digit]) / (labels == digit).sum()
    assert share == pytest.approx(0.25, abs=0.01)
  # Rendered videos use only their own split's images (and no image
  # is shown in both splits, compared pixel by pixel).
  images, _ = moving_digits.load_digit_images()
  used = {split: {moving_digits.render_video(settings, split, i)["instance"]
                  for i in range(count)}
          for split, count in (("train", 200), ("test", 100))}
  assert used["train"] <= set(train) and used["test"] <= set(test)
  train_bytes = {images[i].tobytes() for i in used["train"]}
  assert not any(images[i].tobytes() in train_bytes for i in used["test"])
  # Fewer training images: a subset, balanced; the test pool is unchanged.
  small = moving_digits.instance_split(
      dataclasses.replace(settings, num_train_instances=25))
  assert [len(p) for p in small["train"]] == [3] * 5 + [2] * 5
  assert set(np.concatenate(small["train"])) <= set(train)
  assert all((a == b).all() for a, b in zip(small["test"], pools["test"]))
  counts = np.bincount([moving_digits.render_video(
      dataclasses.replace(settings, num_train_instances=25), "train",
      i)["instance"] for i in range(50)])
  assert np.count_nonzero(counts) == 25  # every kept image is used


def test_labels_are_balanced():
  labels = [moving_digits.render_video(TINY, "train", i)["label"]
            for i in range(30)]
  assert np.bincount(labels).tolist() == [3] * 10
  five = dataclasses.replace(TINY, num_classes=5)
  assert sorted({moving_digits.render_video(five, "test", i)["label"]
                 for i in range(10)}) == [0, 1, 2, 3, 4]


def test_no_clutter_no_noise_gives_a_black_background():
  for index in range(4):
    video = moving_digits.render_video(CLEAN, "train", index)["video"]
    lit = video.max(-1) > 0
    # Only the digit is lit: within its 18x18 box, at most 18x18 pixels.
    assert 0 < lit.sum(axis=(1, 2)).max() <= 18 * 18
    ys, xs = np.nonzero(lit[0])
    assert xs.max() - xs.min() < 18 and ys.max() - ys.min() < 18
  with_clutter = moving_digits.render_video(
      dataclasses.replace(CLEAN, clutter=0.5), "train", 0)["video"]
  assert (with_clutter.max(-1) > 0).mean() > 0.9
  noisy = moving_digits.render_video(
      dataclasses.replace(CLEAN, noise=0.1), "train", 0)["video"]
  # Fresh noise every frame: frame differences are noise everywhere.
  still = np.abs(noisy[1].astype(int) - noisy[0]).max(-1) == 0
  assert still.mean() < 0.3


@pytest.mark.parametrize("speed", [0.5, 1.5, 3.0])
def test_the_digit_moves_at_the_configured_speed(speed):
  settings = dataclasses.replace(CLEAN, speed_min=speed, speed_max=speed)
  for index in range(4):
    example = moving_digits.render_video(settings, "train", index)
    assert example["speed"] == pytest.approx(speed)
    steps = np.linalg.norm(np.diff(centroids(example["video"]), axis=0),
                           axis=-1)
    # A bounce frame moves less; every other step moves `speed` px.
    assert np.median(steps) == pytest.approx(speed, abs=0.05)
    assert steps.max() <= speed + 0.05


def test_static_digits_do_not_move_and_stay_inside():
  settings = dataclasses.replace(CLEAN, speed_min=0.0, speed_max=0.0)
  video = moving_digits.render_video(settings, "train", 0)["video"]
  assert (video == video[:1]).all()
  fast = dataclasses.replace(CLEAN, speed_min=5.0, speed_max=5.0,
                             num_frames=40)
  # The 16 px digit never leaves the frame: its ink is all there.
  ink = moving_digits.render_video(fast, "train", 1)["video"].astype(
      np.float64).sum((1, 2, 3))
  assert ink.std() / ink.mean() < 0.02


def test_speed_per_object_is_speed_over_object_size(tmp_path):
  by_pixels = moving_digits.settings_from_config(
      tiny_config(tmp_path, object_size=12, speed_range=(0.75, 1.5)))
  by_object = moving_digits.settings_from_config(
      tiny_config(tmp_path, object_size=12, speed_per_object=(0.0625, 0.125)))
  assert by_object == by_pixels  # same bytes, same cache
  assert by_object.speed_per_object == (0.0625, 0.125)
  settings = dataclasses.replace(CLEAN, object_size=12, speed_min=1.5,
                                 speed_max=1.5)
  steps = np.linalg.norm(np.diff(centroids(moving_digits.render_video(
      settings, "train", 2)["video"]), axis=0), axis=-1)
  assert np.median(steps) / 12 == pytest.approx(
      settings.speed_per_object[0], abs=0.005)


def test_bad_settings_name_the_value(tmp_path):
  with pytest.raises(ValueError, match="object_size 30"):
    moving_digits.Settings(object_size=30)
  with pytest.raises(ValueError, match="speed_min <= speed_max, got 2.0, 1.0"):
    moving_digits.Settings(speed_min=2.0, speed_max=1.0)
  with pytest.raises(ValueError, match="num_classes .* got 11"):
    moving_digits.Settings(num_classes=11)
  with pytest.raises(ValueError, match=r"speed_per_object .* \(1.0, 2.0, 3.0\)"):
    moving_digits.settings_from_config(
        tiny_config(tmp_path, speed_per_object=(1.0, 2.0, 3.0)))


def test_get_datasets_and_caching(tmp_path):
  config = tiny_config(tmp_path)
  datasets = data.get_datasets(config, batch_size=4, eval_batch_size=4,
                               seed=0)
  assert datasets.class_names == [str(d) for d in range(10)]
  assert datasets.num_classes == 10 and datasets.frame_shape == (32, 32, 3)
  batch = next(iter(datasets.train))
  assert batch["video"].shape == (4, 8, 32, 32, 3)
  assert batch["video"].dtype.name == "float32"
  assert batch["label"].dtype.name == "int32"
  labels = np.concatenate([b["label"].numpy() for b in datasets.eval])
  assert np.bincount(labels).tolist() == [1] * 10
  # The stored bytes come back (TFDS orders them by a key hash).
  settings = moving_digits.settings_from_config(config)
  expected = sorted(moving_digits.render_video(settings, "test", i)[
      "video"].tobytes() for i in range(10))
  stored = sorted(np.round(video * 255).astype(np.uint8).tobytes()
                  for b in datasets.eval for video in b["video"].numpy())
  assert stored == expected

  records = sorted(tmp_path.rglob("*.tfrecord*"))
  mtimes = [p.stat().st_mtime_ns for p in records]
  with mock.patch.object(moving_digits.MovingDigits, "_generate_examples",
                         side_effect=AssertionError("regenerated")):
    data.get_datasets(config, batch_size=4, eval_batch_size=4, seed=0)
  assert [p.stat().st_mtime_ns for p in records] == mtimes
  # A stride stores longer videos, cached separately.
  strided = data.get_datasets(tiny_config(tmp_path, temporal_stride=2),
                              batch_size=2, eval_batch_size=2, seed=0)
  assert next(iter(strided.eval))["video"].shape == (2, 8, 32, 32, 3)
  assert len(list(tmp_path.glob("moving_digits/*"))) == 2


def test_mp4_folders_round_trip_through_prepare_videos(tmp_path):
  from sideways_tf.data import digit_videos
  from sideways_tf.data import video_folder
  settings = dataclasses.replace(CLEAN, num_frames=6, num_train=10,
                                 num_test=10, clutter=0.5)
  output_dir = tmp_path / "videos"
  counts = digit_videos.write_videos(settings, output_dir, progress=False)
  assert counts == {"written": 20, "kept": 0}
  assert not list(output_dir.rglob(".*tmp*"))  # atomic: no leftovers
  # A rerun keeps every video; other settings are refused.
  assert digit_videos.write_videos(settings, output_dir, progress=False) == {
      "written": 0, "kept": 20}
  with pytest.raises(ValueError, match="other settings"):
    digit_videos.write_videos(dataclasses.replace(settings, seed=9),
                              output_dir, progress=False)

  prepared = tmp_path / "prepared"
  video_folder.prepare(output_dir, prepared, video_folder.PrepareOptions(
      short_side=32, videos_per_shard=8), num_workers=1, progress=False)
  config = ml_collections.ConfigDict(dict(
      name="video_folder", path=str(prepared), label_key="label",
      num_frames=6, temporal_stride=1, image_size=32, num_classes=10,
      data_dir="", short_video="loop", eval_clips=1, crop_fraction=1.0,
      random_flip=False, shuffle_buffer=0, train_split="train",
      eval_split=""))
  datasets = data.get_datasets(config, batch_size=2, eval_batch_size=10,
                               seed=0)
  assert datasets.class_names == [str(d) for d in range(10)]
  batch = next(iter(datasets.eval))  # the 10 test videos, in some order
  assert sorted(batch["label"].numpy().tolist()) == list(range(10))
  # Each decoded video is closest to the rendered one of its label (H.264
  # crf 17 in yuv420p, then JPEG 90), far from the other labels' videos.
  rendered = [moving_digits.render_video(settings, "test", i)["video"]
              for i in range(10)]
  for video, label in zip(batch["video"].numpy(), batch["label"].numpy()):
    errors = [np.abs(video * 255 - r).mean() for r in rendered]
    assert np.argmin(errors) == label
    assert errors[label] < 10.0  # measured 6.3 (yuv420p chroma); others ~30


def test_the_config_file_matches_the_settings_defaults():
  from configs import moving_digits as config_file
  config = config_file.get_config()
  assert config.data.name == "moving_digits"
  assert "speed" not in config.data  # the moving shapes' field: gone
  settings = moving_digits.settings_from_config(config.data)
  assert settings == moving_digits.Settings()
  assert (settings.image_size, settings.num_frames, settings.object_size,
          settings.speed_min, settings.speed_max) == (32, 16, 16, 1.0, 2.0)


_PREPARE_IN_A_PROCESS = """
import random, sys
random.seed(0)  # as bin/train does: TFDS's temporary names then collide
from sideways_tf.data import moving_digits
settings = moving_digits.Settings(num_train=20, num_test=10, seed=5)
builder = moving_digits.prepare(settings, sys.argv[1])
print(builder.info.splits["train"].num_examples)
"""


def test_runs_started_together_prepare_the_set_once(tmp_path):
  import os
  import pathlib
  import subprocess
  import sys
  root = str(pathlib.Path(moving_digits.__file__).parents[2])
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=root)
  processes = [subprocess.Popen(
      [sys.executable, "-c", _PREPARE_IN_A_PROCESS, str(tmp_path)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
  for process in processes:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "20"


PHOTOS = dataclasses.replace(TINY, objects="photos")


def test_photo_objects_render_one_photo_per_class():
  video = moving_digits.render_video(PHOTOS, "train", 3)
  assert video["video"].shape == (8, 32, 32, 3)
  assert video["video"].dtype == np.uint8 and video["label"] == 3
  assert PHOTOS.class_names == moving_digits.PHOTO_OBJECTS
  assert PHOTOS.scale == 1.0  # 16 px photo crops drawn at 16 px
  again = moving_digits.render_video(PHOTOS, "train", 3)
  assert video["video"].tobytes() == again["video"].tobytes()
  # The digit sets keep their settings hash (and so their caches).
  assert PHOTOS.config_name != TINY.config_name
  assert "objects" not in json_fields(TINY)


def json_fields(settings):
  import hashlib  # noqa: PLC0415
  import json  # noqa: PLC0415
  fields = dataclasses.asdict(settings)
  fields.pop("objects")
  fields.pop("backgrounds")
  fields.pop("label")  # digit x direction's fields, at the digit label
  fields.pop("num_directions")
  digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
  assert settings.config_name.endswith(digest.hexdigest()[:12])
  return fields


def test_photo_crops_of_train_and_test_come_from_disjoint_parts():
  """Pixel values encode the column: train crops only show the left
  1 - PHOTO_TEST_FRACTION of the photo, test crops only the rest."""
  width = 400
  photo = np.repeat(np.tile(np.arange(width, dtype=np.float32) / width,
                            (300, 1))[..., None], 3, axis=-1)
  cut = (1 - moving_digits.PHOTO_TEST_FRACTION)
  rng = np.random.default_rng(0)
  for _ in range(20):
    train = moving_digits.photo_crop(rng, photo, "train")
    test = moving_digits.photo_crop(rng, photo, "test")
    assert train.shape == test.shape == (16, 16, 3)
    assert train.max() < cut <= test.min() + 1 / 255


def test_skimage_backgrounds_are_other_clutter_with_the_same_digit():
  """Another family of clutter: the background changes, the digit, its
  path and the label do not; the first sets keep their cache names."""
  clean = dataclasses.replace(TINY, noise=0.0)
  other = dataclasses.replace(clean, backgrounds="skimage")
  a = moving_digits.render_video(clean, "train", 4)
  b = moving_digits.render_video(other, "train", 4)
  assert (a["label"], a["instance"], a["speed"]) == (
      b["label"], b["instance"], b["speed"])
  assert np.abs(a["video"].astype(int) - b["video"].astype(int)).mean() > 5
  assert other.config_name != clean.config_name
  json_fields(clean)  # "backgrounds" left out of the default's hash
  with pytest.raises(ValueError, match="backgrounds"):
    dataclasses.replace(TINY, backgrounds="moon")
