"""Shared settings of the GPU configs (VGG-8, one module per GPU)."""

import ml_collections


def vgg8(config, *, num_modules, granularity):
  """VGG-8 (sideways_tf/models/vgg.py, docs/models.md), one GPU per module."""
  config.model = ml_collections.ConfigDict()
  config.model.name = "vgg8"
  config.model.granularity = granularity  # "layer" (8), "block" (5) or an int
  config.model.num_modules = num_modules  # > 0 overrides granularity
  config.model.width = 64
  config.model.norm = "batch"  # or "group", "none"
  config.devices = tuple(f"/GPU:{k}" for k in range(num_modules))
  config.train.batch_size = 32
  config.train.learning_rate = 3e-4
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  config.train.fidelity_every = 1000
  config.train.stage_time_every = 1000
  config.eval.batch_size = 32
  return config
