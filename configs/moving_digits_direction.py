"""`--config=configs/moving_digits_direction.py`: the config is sideways_tf/configs/moving_digits_direction.py."""

from sideways_tf.configs.moving_digits_direction import get_config  # noqa: F401
