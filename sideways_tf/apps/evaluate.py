"""Evaluates the latest checkpoint of a training workdir on the eval split.

  bin/evaluate --workdir=DIR [--num_batches=N] [--output_dir=OUT]

Prints clip accuracy (mean of per-frame logits) and per-frame accuracy and
writes them to DIR/eval.json and to TensorBoard (DIR/eval), or to OUT. A
read-only DIR is evaluated all the same (a warning says nothing was
written).
"""

import json
import sys

from sideways_tf.run import quiet

quiet.quiet_start(sys.argv)  # TensorFlow imported without its C++ start-up lines

from absl import flags

from sideways_tf.run import cli

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training workdir (holds config.json and checkpoints/).",
    required=True)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Write eval.json and the TensorBoard events here "
    "instead of --workdir (e.g. for a read-only workdir).")
_NUM_BATCHES = flags.DEFINE_integer(
    "num_batches", 0, "Evaluate on at most this many eval batches (0 = all).",
    lower_bound=0)


def main(argv):
  cli.start(argv)
  from sideways_tf.training import train_lib  # noqa: PLC0415
  metrics = train_lib.evaluate(_WORKDIR.value,
                               num_batches=_NUM_BATCHES.value or None,
                               output_dir=_OUTPUT_DIR.value)
  print(json.dumps(metrics, indent=2))


def run():
  """Console-script entry point: parses the flags and runs main."""
  cli.run_app(main, __name__, __doc__)


if __name__ == "__main__":
  run()
