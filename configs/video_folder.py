"""`--config=configs/video_folder.py`: the config is sideways_tf/configs/video_folder.py."""

from sideways_tf.configs.video_folder import get_config  # noqa: F401
