"""Moving digits with a small VGG-8 (8 weight layers): the depth study.

Hardware: a 2-core CPU (minutes). Same data as configs/moving_digits.py; the
model is VGG-8 at width 8 without normalisation, cut into
`model.num_modules` = `model.granularity` modules (2, 4 or 8), so depth L
can be varied on one model (docs/results.md, "Where Sideways is safe").

Run:  bin/train --config=configs/moving_digits_vgg8.py --config.model.granularity=8 --config.model.num_modules=8
"""

import ml_collections

from sideways_tf.configs import moving_digits


def get_config():
  config = moving_digits.get_config()
  config.experiment = "moving_digits_vgg8"
  config.model = ml_collections.ConfigDict()
  config.model.name = "vgg8"
  config.model.width = 8
  config.model.norm = "none"
  config.model.granularity = "8"  # "layer", "block" or a number of modules
  config.model.num_modules = ml_collections.FieldReference(  # int or "auto"
      8, field_type=object)
  # Not the replay_modules=2 of configs/moving_digits.py: that was measured
  # on the 4-module frame CNN, never here. The depth study is plain Sideways;
  # at L = 8 the map measured replay 4 and 7 (= L-1), closest to BP with 7
  # (docs/fidelity.md, section 3): --config.replay_modules=7, or "auto".
  config.replay_modules = 0
  config.model.temporal = ""  # or "conv:3", "shift" (docs/models.md)
  return config
