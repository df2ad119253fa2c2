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
  # Real video moves: the two bottom modules take their backward step at the
  # input their gradient belongs to (docs/fidelity.md: on moving digits at
  # 1-2 px/frame this takes Sideways from ~38 to ~4 points behind BP).
  config.replay_modules = 2
  config.train.num_steps = 2000
  config.train.eval_every = 500
  config.train.checkpoint_every = 250
  config.train.fidelity_every = 250
  config.train.stage_time_every = 250
  return config
