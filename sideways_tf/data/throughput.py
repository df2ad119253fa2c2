"""Measures the data layer: input-pipeline frames/s, or preparation videos/s.

  python -m sideways_tf.data.throughput --config=configs/default.py
  python -m sideways_tf.data.throughput --mode=prepare --num_videos=24

`pipeline` iterates datasets.train of the config for --num_batches after
--warmup_batches (frames = batch_size x num_frames per batch). `prepare`
writes --num_videos generated videos (--frames frames of --width x --height,
mpeg4 .avi, a moving gradient) to a temporary folder and times
bin/prepare_videos' work on them with --num_workers processes.
"""

import os
import pathlib
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from sideways_tf.run import cli

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags; only `python -m` defines them (not import)."""
  config_flags.DEFINE_config_file(
      "config", cli.default_config_path(),
      "Experiment config file (pipeline mode).")
  flags.DEFINE_enum("mode", "pipeline", ["pipeline", "prepare"],
                    "What to measure.")
  flags.DEFINE_integer("num_batches", 200, "Timed batches.")
  flags.DEFINE_integer("warmup_batches", 20, "Batches before timing.")
  flags.DEFINE_integer("num_videos", 24, "prepare: videos.")
  flags.DEFINE_integer("frames", 100, "prepare: frames per video.")
  flags.DEFINE_integer("width", 320, "prepare: video width.")
  flags.DEFINE_integer("height", 240, "prepare: video height.")
  flags.DEFINE_integer("num_workers", os.cpu_count() or 1,
                       "prepare: decoding processes.")


def pipeline_frames_per_second(config, num_batches, warmup_batches):
  """Frames per second out of datasets.train, after warm-up."""
  from sideways_tf import data  # noqa: PLC0415

  datasets = data.get_datasets(
      config.data, batch_size=config.train.batch_size,
      eval_batch_size=config.eval.batch_size, seed=config.seed)
  iterator = iter(datasets.train)
  for _ in range(warmup_batches):
    next(iterator)
  frames = 0
  started = time.perf_counter()
  for _ in range(num_batches):
    video = next(iterator)["video"]
    frames += int(video.shape[0]) * int(video.shape[1])
  return frames / (time.perf_counter() - started)


def write_test_videos(folder, num_videos, frames, width, height,
                      texture: int = 0):
  """num_videos mpeg4 .avi files in 4 class folders: a moving gradient.

  `texture` > 0 adds a static random pattern of that amplitude (grey
  levels) to each video, so its frames hold detail as camera frames do (a
  bare gradient is the easiest case for JPEG).
  """
  import av  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  ramp = (np.arange(width)[None, :] + np.arange(height)[:, None]) % 256
  if texture:
    rng = np.random.default_rng(0)
  for index in range(num_videos):
    base = ramp
    if texture:
      base = ramp + rng.integers(0, texture, (height, width))
    path = pathlib.Path(folder) / f"class_{index % 4}" / f"video_{index}.avi"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
      stream = container.add_stream("mpeg4", rate=25)
      stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
      for t in range(frames):
        image = np.repeat(((base + 3 * t) % 256).astype(np.uint8)[..., None],
                          3, axis=-1)
        for packet in stream.encode(
            av.VideoFrame.from_ndarray(image, format="rgb24")):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)


def main(argv):
  del argv
  if FLAGS.mode == "pipeline":
    config = FLAGS.config
    rate = pipeline_frames_per_second(config, FLAGS.num_batches,
                                      FLAGS.warmup_batches)
    print(f"{config.data.name}: {rate:.0f} frames/s "
          f"({rate / config.data.num_frames:.1f} clips/s) over "
          f"{FLAGS.num_batches} batches of {config.train.batch_size}")
    return
  from sideways_tf.data import video_folder  # noqa: PLC0415
  with tempfile.TemporaryDirectory() as folder:
    videos = pathlib.Path(folder) / "videos"
    write_test_videos(videos, FLAGS.num_videos, FLAGS.frames, FLAGS.width,
                      FLAGS.height)
    summary = video_folder.prepare(videos, pathlib.Path(folder) / "out",
                                   num_workers=FLAGS.num_workers)
  print(f"prepare: {summary['videos_per_second']:.2f} videos/s "
        f"({summary['videos_per_second'] * FLAGS.frames:.0f} frames/s) for "
        f"{FLAGS.num_videos} videos of {FLAGS.frames} frames "
        f"{FLAGS.width}x{FLAGS.height}, {FLAGS.num_workers} workers, "
        f"short side 128")


if __name__ == "__main__":
  define_flags()
  app.run(main)
