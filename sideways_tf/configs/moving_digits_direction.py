"""Digit x direction: moving digits where time matters (temporal models).

The label is the digit and the direction it moves in (4 digits x 4
directions = 16 classes). The digit moves at a constant velocity on a torus
(it leaves one edge and comes back at the other) from a uniform start, so
every single frame looks the same for every direction: a per-frame model is
at chance (1/4) on the direction part, `eval/accuracy/direction` in
TensorBoard and "clip_accuracy/direction" in eval.json
(sideways_tf/data/moving_digits.py, docs/data.md). The model is the frame
CNN with a causal temporal conv over 3 frames after every conv
(`model.temporal`, docs/models.md); docs/algorithm.md gives its rule under
Sideways, BP and GPipe. Hardware: a 2-core CPU, minutes.

The scene is plain (no photo behind the digit, light noise): with the
moving-digits clutter (photo contrast 0.5, noise 0.1), or 10 digits (40
classes), this 4-module frame CNN learnt neither part within 1000-3000 BP
steps in pilots, while here BP learns the direction within 1000 steps.

Run:  bin/train --config=configs/moving_digits_direction.py
      bin/train --config=configs/moving_digits_direction.py --config.algorithm=bp
      the per-frame model: --config.model.temporal=""
      a temporal shift instead: --config.model.temporal=shift
"""

from sideways_tf.configs import moving_digits


def get_config():
  config = moving_digits.get_config()
  config.experiment = "moving_digits_direction"
  data = config.data
  data.label_key = "digit_direction"
  data.num_directions = 4
  data.num_classes = 16  # 4 digits x num_directions
  data.speed_range = (1.0, 2.0)  # px per frame
  data.clutter = 0.0  # a plain scene: see above
  data.noise = 0.05
  config.model.temporal = "conv:3"
  # Replay of every module below the top: over 5 seeds at 3000 steps plain
  # Sideways trails BP by 0.238 +- 0.185 on the label (docs/results.md, 5c);
  # replay_modules=3 matches it (+0.005 +- 0.007).
  config.replay_modules = 3
  config.train.num_steps = 3000
  config.train.eval_every = 500
  return config
