"""Frame models cut into Sideways modules: each builder returns a list of stages.

* ``frame_cnn``: a small CNN (``num_modules``, ``widths``).
* ``vgg8``: VGG-style, 8 weight layers (``granularity`` / ``num_modules``,
  ``width``, ``norm``, ...); see :mod:`sideways_tf.models.vgg`.
* ``resnet18``: 2D ResNet-18 (same fields); see
  :mod:`sideways_tf.models.resnet`.

docs/models.md describes the zoo, the granularities and the normalisations.
"""

from sideways_tf.models.frame_cnn import frame_cnn_stages
from sideways_tf.models.resnet import resnet18_stages
from sideways_tf.models.vgg import vgg8_stages

MODELS = {
    "frame_cnn": frame_cnn_stages,
    "vgg8": vgg8_stages,
    "resnet18": resnet18_stages,
}


def build_stages(model_config, num_classes: int):
  """Stages for `model_config.name` (see MODELS); ValueError if unknown."""
  name = model_config.name
  if name not in MODELS:
    raise ValueError(
        f"unknown model {name!r}; expected one of {sorted(MODELS)}")
  # "balance" and num_modules="auto" re-cut the built stages
  # (sideways_tf/training/auto_balance.py); "auto" builds the model's own
  # split first.
  kwargs = {k: v for k, v in model_config.items()
            if k not in ("name", "balance") and
            not (k == "num_modules" and v == "auto")}
  return MODELS[name](num_classes=num_classes, **kwargs)
