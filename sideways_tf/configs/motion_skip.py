"""Skip-Sideways on the synthetic set's motion label (which way a shape moves).

A frame-wise model cannot see motion; temporal skips let stage 2 combine
stage 0's features of the next frame with stage 1's of the current one.
Hardware: a 2-core CPU, a few minutes. Devices: default placement.

It ships replay of every module below the top (replay_modules=3): with a
skip, a stage's gradient comes down paths of different lags, and only
replaying the stages the paths pass through pairs each part with its own
frame. Plain Skip-Sideways (replay_modules=0) trails BP on this label by 0.29
test clip accuracy, replay 3 matches it (docs/skip_sideways.md).

Run:  bin/train --config=configs/motion_skip.py
      bin/train --config=configs/motion_skip.py --config.replay_modules=0
      bin/train --config=configs/motion_skip.py --config.skips=""
"""

from sideways_tf.configs import default


def get_config():
  config = default.get_config()
  config.experiment = "motion_skip"
  config.data.label_key = "motion"
  config.data.num_classes = 4
  config.data.speed = 2.0
  config.skips = "2:0"
  config.replay_modules = 3  # = L-1: every path exact (see above)
  config.train.num_steps = 1500
  config.train.eval_every = 500
  return config
