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

from sideways_tf.configs import common
from sideways_tf.configs import default


def get_config():
  config = default.get_config()
  config.experiment = "video_folder"
  common.video_folder_data(config, num_frames=16, image_size=64,
                           num_classes=0)
  # Real video moves: every module below the top (L-1 = 3) takes its
  # backward step at the input its gradient belongs to (pipelined BP's
  # gradient). Chosen by a rule fixed before the runs (docs/fidelity.md, 4b):
  # on held-out mp4 videos it was the one setting of replay 2, "auto" and 3
  # within 5 points of BP at 1-2 px/frame and within 2 at 0.25-0.5 px/frame
  # (5 seeds), at about replay 2's cost per step. A model.num_modules other
  # than 4 needs replay_modules <= num_modules - 1.
  config.replay_modules = 3
  config.train.num_steps = 2000
  config.train.eval_every = 500
  config.train.checkpoint_every = 250
  config.train.fidelity_every = 250
  config.train.stage_time_every = 250
  return config
