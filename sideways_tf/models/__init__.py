"""Frame models cut into Sideways modules: each builder returns a list of stages."""

from sideways_tf.models.frame_cnn import frame_cnn_stages

MODELS = {
    "frame_cnn": frame_cnn_stages,
}


def build_stages(model_config, num_classes: int):
  """Stages for `model_config.name` (see MODELS); ValueError if unknown."""
  name = model_config.name
  if name not in MODELS:
    raise ValueError(
        f"unknown model {name!r}; expected one of {sorted(MODELS)}")
  kwargs = {k: v for k, v in model_config.items() if k != "name"}
  return MODELS[name](num_classes=num_classes, **kwargs)
