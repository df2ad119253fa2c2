"""`--config=configs/moving_digits.py`: the config is sideways_tf/configs/moving_digits.py."""

from sideways_tf.configs.moving_digits import get_config  # noqa: F401
