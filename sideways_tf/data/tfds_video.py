"""Any TFDS video classification data set, e.g. ucf101, hmdb51-like builders.

Frames are read still encoded (`tfds.decode.SkipDecoding`), so only the
frames of each sampled clip are decoded. The data must already be prepared
under data_dir (e.g. `tfds build ucf101 --data_dir=...`, see docs/data.md):
nothing is downloaded during training unless config.data.tfds_download.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from sideways_tf.data import clips


def load_source(data_config, data_dir, seed: int = 0) -> clips.Source:
  name = data_config.get("tfds_name", "")
  if not name:
    raise ValueError('config.data.tfds_name is empty; set it to a TFDS video '
                     'data set, e.g. --config.data.tfds_name=ucf101')
  video_key = data_config.get("video_key", "video")
  label_key = data_config.get("label_key", "label")
  train_split = data_config.get("train_split", "train")
  eval_split = data_config.get("eval_split", "") or "test"
  download = bool(data_config.get("tfds_download", False))
  try:
    builder = tfds.builder(name, data_dir=str(data_dir))
  except tfds.core.registered.DatasetNotFoundError as error:
    first_line = str(error).splitlines()[0]
    raise ValueError(f"config.data.tfds_name {name!r} is not a TFDS data set "
                     f"({first_line}); see tfds.list_builders()") from error
  if download:
    builder.download_and_prepare()
  features = builder.info.features
  for key, role in ((video_key, "video_key"), (label_key, "label_key")):
    if key not in features:
      raise ValueError(f"config.data.{role} {key!r} is not a feature of "
                       f"{name}; features: {sorted(features.keys())}")
  label_feature = features[label_key]
  if not isinstance(label_feature, tfds.features.ClassLabel):
    raise ValueError(f"feature {label_key!r} of {name} is not a class label")
  decoders = ({video_key: tfds.decode.SkipDecoding()}
              if _is_encoded(features[video_key]) else None)

  def split(split_name, shuffle_files):
    try:
      dataset = builder.as_dataset(
          split=split_name, decoders=decoders, shuffle_files=shuffle_files,
          read_config=tfds.ReadConfig(shuffle_seed=seed))
    except AssertionError as error:  # TFDS: "could not find data in ..."
      raise ValueError(
          f"TFDS data set {name} is not prepared under {data_dir}: run "
          f"`tfds build {name} --data_dir={data_dir}` (see docs/data.md) or "
          f"set config.data.tfds_download=True. ({error})") from error
    except ValueError as error:
      raise ValueError(f"split {split_name!r} of {name}: {error}") from error
    return dataset.map(lambda example: {"frames": example[video_key],
                                        "label": example[label_key]})

  return clips.Source(
      train=split(train_split, shuffle_files=True),
      eval=split(eval_split, shuffle_files=False),
      class_names=list(label_feature.names),
      shuffle_buffer=256, random_flip=True, crop_fraction=0.875)


def _is_encoded(feature) -> bool:
  """Video features store one encoded image per frame; Tensors do not."""
  return isinstance(feature, tfds.features.Video)
