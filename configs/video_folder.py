"""Your own videos: a folder prepared by bin/prepare_videos, small frame CNN.

Hardware: sized like configs/default.py (a CPU works; set `config.devices` to
one device per module to run the modules in parallel). Prepare the videos
once (docs/data.md), then train on the output directory:

Run:  bin/prepare_videos --input_dir=VIDEOS --output_dir=data_cache/my_videos
      bin/train --config=configs/video_folder.py \
          --config.data.path=data_cache/my_videos --workdir=DIR
      (add --config.algorithm=bp for backprop)

config.data.num_classes = 0 takes the class count from the prepared
metadata.json; any other value must match it.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.experiment = "video_folder"
  config.data.name = "video_folder"
  config.data.path = ""  # set with --config.data.path=<prepare --output_dir>
  config.data.label_key = "label"
  config.data.num_frames = 16
  config.data.image_size = 64
  config.data.num_classes = 0  # 0 = from the prepared metadata.json
  config.data.eval_split = ""  # "" = "val" if prepared, else "test"
  config.data.crop_fraction = 0.875  # crop side / short side (random in train)
  config.data.random_flip = True
  config.data.shuffle_buffer = 0  # 0 = the source's default (256 videos)
  config.train.num_steps = 2000
  config.train.eval_every = 500
  config.train.checkpoint_every = 250
  config.train.fidelity_every = 250
  config.train.stage_time_every = 250
  return config
