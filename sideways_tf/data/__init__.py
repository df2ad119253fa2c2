"""Video datasets for training and evaluation: one entry point for all sources.

  datasets = data.get_datasets(config.data, batch_size=8, eval_batch_size=16,
                               seed=0)

Sources (config.data.name):
  "synthetic"     moving shapes drawn offline (synthetic.py), cached by TFDS;
  "moving_digits" real handwritten digits moving over real photos, made
                  offline from scikit-learn's bundled data (moving_digits.py);
  "tfds"          any TFDS video data set, e.g. ucf101 (tfds_video.py);
  "video_folder"  class-named folders of video files, prepared once into
                  TFRecords with bin/prepare_videos (video_folder.py).
Every source goes through the same clip sampling and augmentation
(clips.py). See docs/data.md.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import List, Tuple

import tensorflow as tf

from sideways_tf.data import clips
from sideways_tf.run.files import PROJECT_ROOT

DATASET_NAMES = ("synthetic", "tfds", "video_folder", "moving_digits")


@dataclasses.dataclass(frozen=True)
class Datasets:
  """Element: {"video": float32 [B,T,H,W,C] in [0, 1], "label": int32 [B]}."""
  train: tf.data.Dataset  # infinite, shuffled, drop_remainder=True
  eval: tf.data.Dataset  # one finite pass, deterministic order
  num_classes: int
  frame_shape: Tuple[int, int, int]
  class_names: List[str]
  # {part: (divisor, count)} of labels made of parts (clips.Source).
  label_parts: dict = dataclasses.field(default_factory=dict)


def resolve_data_dir(data_dir: str) -> pathlib.Path:
  """"" means <project root>/data_cache (gitignored)."""
  if not data_dir:
    return PROJECT_ROOT / "data_cache"
  return pathlib.Path(data_dir).expanduser().resolve()


def load_source(data_config, seed: int = 0) -> clips.Source:
  """The finite train/eval videos of config.data, before clip sampling."""
  name = data_config.name
  data_dir = resolve_data_dir(data_config.get("data_dir", ""))
  if name == "synthetic":
    from sideways_tf.data import synthetic  # noqa: PLC0415
    return synthetic.load_source(data_config, data_dir)
  if name == "moving_digits":
    from sideways_tf.data import moving_digits  # noqa: PLC0415
    return moving_digits.load_source(data_config, data_dir)
  if name == "tfds":
    from sideways_tf.data import tfds_video  # noqa: PLC0415
    return tfds_video.load_source(data_config, data_dir, seed)
  if name == "video_folder":
    from sideways_tf.data import video_folder  # noqa: PLC0415
    return video_folder.load_source(data_config, seed)
  raise ValueError(f"unknown config.data.name {name!r}; valid names: "
                   f"{', '.join(DATASET_NAMES)}")


def clip_options(data_config, source: clips.Source) -> clips.ClipOptions:
  """Clip sampling/augmentation options; absent fields take source defaults."""
  return clips.ClipOptions(
      num_frames=int(data_config.num_frames),
      temporal_stride=int(data_config.get("temporal_stride", 1)),
      image_size=int(data_config.image_size),
      crop_fraction=float(data_config.get("crop_fraction", None)
                          or source.crop_fraction),
      random_flip=bool(_get(data_config, "random_flip", source.random_flip)),
      short_video=data_config.get("short_video", "loop"),
      eval_clips=int(data_config.get("eval_clips", 1)))


def get_datasets(data_config, batch_size: int, eval_batch_size: int,
                 seed: int) -> Datasets:
  """Train (infinite) and eval (one pass) batches of config.data."""
  if batch_size < 1 or eval_batch_size < 1:
    raise ValueError(f"batch sizes must be >= 1, got {batch_size} and "
                     f"{eval_batch_size}")
  source = load_source(data_config, seed)
  num_classes = len(source.class_names)
  # 0 = whatever the data has (a folder's metadata, a TFDS label).
  if data_config.num_classes and num_classes != data_config.num_classes:
    raise ValueError(
        f"config.data.num_classes is {data_config.num_classes} but data set "
        f"{data_config.name!r} has {num_classes} classes "
        f"({_short_list(source.class_names)})")
  options = clip_options(data_config, source)
  shuffle_buffer = int(data_config.get("shuffle_buffer", 0)
                       or source.shuffle_buffer)
  return Datasets(
      train=clips.train_dataset(source.train, options, batch_size, seed,
                                shuffle_buffer),
      eval=clips.eval_dataset(source.eval, options, eval_batch_size),
      num_classes=num_classes,
      frame_shape=(options.image_size, options.image_size, 3),
      class_names=list(source.class_names),
      label_parts=dict(source.label_parts))


def _get(config, key, default):
  value = config.get(key, None)
  return default if value is None else value


def _short_list(names, limit=8):
  shown = ", ".join(names[:limit])
  return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
