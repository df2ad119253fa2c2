"""One `get_config()` file per experiment; `default.py` sets every key.

They ship inside the package, so `--config=<this dir>/NAME.py` works after
`pip install .`; the checkout's `configs/NAME.py` files point here.
`with_defaults` fills keys a config (or an older run's config.json) lacks
from `default.py`: the one place a default is written.
"""

import ml_collections


def with_defaults(config) -> ml_collections.ConfigDict:
  """A copy of `config` with every key of default.py it lacks added."""
  from sideways_tf.configs import default  # noqa: PLC0415
  merged = default.get_config()
  _update(merged, config)
  return merged


def _update(base, override, merge=True):
  for key, value in override.items():
    # A model's keys depend on its name: a config's model replaces the default.
    if (merge and key != "model" and key in base and
        isinstance(value, ml_collections.ConfigDict) and
        isinstance(base[key], ml_collections.ConfigDict)):
      _update(base[key], value, merge=False)
    else:
      with base.ignore_type():
        base[key] = value
