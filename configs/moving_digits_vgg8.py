"""`--config=configs/moving_digits_vgg8.py`: the config is sideways_tf/configs/moving_digits_vgg8.py."""

from sideways_tf.configs.moving_digits_vgg8 import get_config  # noqa: F401
