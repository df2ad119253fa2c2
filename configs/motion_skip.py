"""`--config=configs/motion_skip.py`: the config is sideways_tf/configs/motion_skip.py."""

from sideways_tf.configs.motion_skip import get_config  # noqa: F401
