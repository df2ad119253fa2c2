"""Sideways vs BP benchmark: writes BENCH_DIR/benchmark.json and BENCH_DIR/benchmarks.md.

  bin/benchmark                                  # the default config (slow: minutes)
  bin/benchmark --batch_size=2 --num_frames=8 --image_size=16 --doc=
  bin/benchmark --figures=throughput,stages --profile_dir=/tmp/prof

Every figure times the trainer's own engine (Trainer.train_step, Pipeline);
see sideways_tf/benchmark/ and docs/performance.md.
"""

import os
import pathlib
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TF loads

from absl import flags

from sideways_tf import cli

_MODEL = flags.DEFINE_string("model", "frame_cnn",
                             "Model of sideways_tf.models.MODELS.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Frame height = width.")
_CHANNELS = flags.DEFINE_integer("channels", 3, "Frame channels.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Clips per batch (B).")
_FRAMES = flags.DEFINE_integer("num_frames", 64, "Frames per clip (T).")
_MODULES = flags.DEFINE_integer("num_modules", 4, "Sideways modules (L).")
_DEVICES = flags.DEFINE_integer(
    "num_devices", 0, "Logical CPU devices for the placement figure "
    "(0 = one per module).")
_THREADS = flags.DEFINE_integer("threads", 2,
                                "TF intra- and inter-op threads.")
_REPEATS = flags.DEFINE_integer("repeats", 7,
                                "Timed repetitions per algorithm.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
_MEMORY_FRAMES = flags.DEFINE_list(
    "memory_frames", ["16", "32", "64", "128"],
    "Clip lengths of the memory figure (one process each per algorithm).")
_TRACE_CLIPS = flags.DEFINE_integer("trace_clips", 20,
                                    "Clips of the tracing figure.")
_ZOO = flags.DEFINE_list("zoo", ["frame_cnn", "vgg8", "resnet18"],
                         "Models of the stage-balancing report.")
_ZOO_WIDTH = flags.DEFINE_integer("zoo_width", 16,
                                  "Width of vgg8/resnet18 in that report.")
_DATA_BATCHES = flags.DEFINE_integer(
    "data_batches", 20, "Batches timed for the input-pipeline figure.")
_MIXED = flags.DEFINE_bool("mixed_precision", False,
                           "Run every stage under keras mixed_bfloat16.")
_PROFILE = flags.DEFINE_string(
    "profile_dir", "", "Write a TensorBoard profiler trace of a few train "
    "steps of each algorithm here.")
_FIGURES = flags.DEFINE_list(
    "figures", ["throughput", "stages", "tracing", "memory", "placement",
                "balancing", "input_pipeline"], "Figures to produce.")
_BENCH_DIR = flags.DEFINE_string(
    "bench_dir", str(cli.PROJECT_ROOT / "workdir" / "benchmark"),
    "Where benchmark.json goes.")
_DOC = flags.DEFINE_string(
    "doc", None, "Markdown report to write (default: benchmarks.md in "
    "--bench_dir; --doc=docs/benchmarks.md updates the checkout's docs; "
    "'' = none).")


def main(argv):
  cli.start(argv)
  from sideways_tf.benchmark import common  # noqa: PLC0415
  from sideways_tf.benchmark import runner  # noqa: PLC0415
  config = common.BenchmarkConfig(
      model=_MODEL.value, image_size=_IMAGE_SIZE.value,
      channels=_CHANNELS.value, batch_size=_BATCH.value,
      num_frames=_FRAMES.value, num_modules=_MODULES.value,
      num_devices=_DEVICES.value, threads=_THREADS.value,
      repeats=_REPEATS.value, warmup=_WARMUP.value,
      memory_frames=tuple(int(t) for t in _MEMORY_FRAMES.value),
      trace_clips=_TRACE_CLIPS.value, zoo=tuple(_ZOO.value),
      zoo_width=_ZOO_WIDTH.value, data_batches=_DATA_BATCHES.value,
      mixed_precision=_MIXED.value, profile_dir=_PROFILE.value,
      figures=tuple(_FIGURES.value))
  unknown = set(config.figures) - set(common.BenchmarkConfig().figures)
  if unknown:
    raise ValueError(f"unknown --figures {sorted(unknown)}")
  command = "bin/benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  doc = (str(pathlib.Path(_BENCH_DIR.value) / "benchmarks.md")
         if _DOC.value is None else _DOC.value)
  runner.run(config, _BENCH_DIR.value, doc_path=doc or None,
                command=command.strip())


def run():
  """Console-script entry point: parses the flags and runs main."""
  cli.run_app(main, __name__, __doc__)


if __name__ == "__main__":
  run()
