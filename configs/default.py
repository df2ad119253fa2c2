"""`--config=configs/default.py`: the config is sideways_tf/configs/default.py."""

from sideways_tf.configs.default import get_config  # noqa: F401
