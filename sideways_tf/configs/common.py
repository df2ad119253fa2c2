"""Settings several configs share: VGG-8 on GPUs, prepared video folders."""

import ml_collections


def vgg8_on_gpus(config, *, num_modules, granularity):
  """VGG-8 (sideways_tf/models/vgg.py, docs/models.md), one GPU per module."""
  config.model = ml_collections.ConfigDict()
  config.model.name = "vgg8"
  config.model.granularity = granularity  # "layer" (8), "block" (5) or an int
  # > 0 overrides granularity; "auto": one per device, cut by measured time.
  config.model.num_modules = ml_collections.FieldReference(
      num_modules, field_type=object)
  config.model.width = 64
  # or "group", "none". Replay (config.replay_modules) works with batch norm
  # (docs/engine.md, "Replay"), but replay every module below the top or
  # none: on the moving-digits VGG-8 at L = 8 with batch norm, replaying 7
  # matched BP and replaying 4 collapsed to chance (docs/fidelity.md). These
  # configs ship the paper's plain Sideways; --config.replay_modules=L-1
  # (one extra forward per replayed module per tick) is the measured fix.
  config.model.norm = "batch"
  config.model.balance = ""  # "time": re-cut by measured time at start-up
  config.model.temporal = ""  # or "conv:3", "shift" (docs/models.md)
  config.devices = tuple(f"/GPU:{k}" for k in range(num_modules))
  config.train.batch_size = 32
  config.train.learning_rate = 3e-4
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  config.train.fidelity_every = 1000
  config.train.stage_time_every = 1000
  config.eval.batch_size = 32
  return config


def video_folder_data(config, *, num_frames, image_size, num_classes):
  """A folder prepared by bin/prepare_videos (--config.data.path=...)."""
  config.data.name = "video_folder"
  config.data.path = ""  # set with --config.data.path=<prepare --output_dir>
  config.data.label_key = "label"
  config.data.eval_split = ""  # "" = "val" if prepared, else "test"
  config.data.num_frames = num_frames
  config.data.image_size = image_size
  config.data.num_classes = num_classes  # 0 = from the prepared metadata
  config.data.crop_fraction = 0.875  # crop side / short side (random in train)
  config.data.random_flip = True
  return config
