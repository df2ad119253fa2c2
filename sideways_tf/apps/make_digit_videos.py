r"""Writes the moving-digits benchmark as mp4 files in class folders.

  bin/make_digit_videos --output_dir=data_cache/digit_videos
  bin/make_digit_videos --output_dir=DIR --config.data.speed_range="(0.25, 0.5)"
  bin/make_digit_videos --output_dir=DIR --config.data.num_train=100 \
      --config.data.num_test=50                # fewer videos (1000 + 500)

The settings come from --config (configs/moving_digits.py by default) and its
config.data overrides. Output: DIR/train/<digit>/*.mp4 and DIR/test/<digit>/
*.mp4 (split folders: the test videos show unseen handwriting), ready for
bin/prepare_videos and bin/train --config=configs/video_folder.py; the
commands are printed at the end, with the python that ran this one.
Rerunning the same command resumes.
"""

import pathlib
import sys

from sideways_tf.run import quiet

quiet.quiet_start(sys.argv)  # TensorFlow imported without its C++ start-up lines

from absl import flags

from sideways_tf.run import cli

_CONFIG = cli.define_config_file(
    __name__,
    str(pathlib.Path(cli.default_config_path()).with_name("moving_digits.py")),
    "Config whose config.data sets the videos (override fields with "
    "--config.data.<field>=<value>, e.g. --config.data.num_train=N and "
    "--config.data.num_test=N for the number of videos).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where train/<digit>/*.mp4 and test/<digit>/*.mp4 go.",
    required=True)
_CRF = flags.DEFINE_integer(
    "crf", 17, "H.264 constant rate factor: 0 = lossless, 17 = visually "
    "lossless, 23 = FFmpeg's default.")


def main(argv):
  cli.start(argv)
  from sideways_tf.data import digit_videos  # noqa: PLC0415
  from sideways_tf.data import moving_digits  # noqa: PLC0415
  config = _CONFIG.value
  if config.data.name != "moving_digits":
    raise ValueError(f"--config must describe moving digits "
                     f"(config.data.name = 'moving_digits'), got "
                     f"{config.data.name!r}")
  settings = moving_digits.settings_from_config(config.data)
  output_dir = pathlib.Path(_OUTPUT_DIR.value).expanduser().resolve()
  counts = digit_videos.write_videos(settings, output_dir, crf=_CRF.value)
  prepared = output_dir.with_name(output_dir.name + "_prepared")
  stride = int(config.data.get("temporal_stride", 1))
  video_folder = cli.config_file("video_folder.py")
  print(f"{settings.num_train} train and {settings.num_test} test videos in "
        f"{output_dir} ({counts['written']} written, {counts['kept']} kept). "
        f"Next:\n"
        f"  {cli.command('prepare_videos')} --input_dir={output_dir} "
        f"--output_dir={prepared} --short_side={settings.image_size}\n"
        f"  {cli.command('train')} --config={video_folder} "
        f"--config.data.path={prepared} "
        f"--config.data.image_size={settings.image_size} "
        f"--config.data.num_frames={config.data.num_frames} "
        f"--config.data.temporal_stride={stride} "
        f"--config.data.crop_fraction=1.0 --config.data.random_flip=False",
        flush=True)


def run():
  """Console-script entry point: parses the flags and runs main."""
  cli.run_app(main, __name__, __doc__)


if __name__ == "__main__":
  run()
