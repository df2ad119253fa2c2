"""Trains a video model with Sideways or BP.

  bin/train                                   # configs/default.py, Sideways
  bin/train --config.algorithm=bp             # same model, backprop
  bin/train --config=configs/NAME.py --workdir=DIR --config.train.num_steps=100

Rerunning with the same --workdir resumes from its last checkpoint.
"""

import sys

from sideways_tf.run import quiet

quiet.quiet_start(sys.argv)  # TensorFlow imported without its C++ start-up lines

from absl import flags

from sideways_tf.run import cli

_CONFIG = cli.define_config_file(
    __name__, cli.default_config_path(),
    "Experiment config file (a get_config() python file); override any field "
    "with --config.<field>=<value>.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, TensorBoard logs and results. "
    "Default: workdir/<experiment>_<algorithm> under the project.")
# A string, checked against the registry (engine/algorithms.py) in main:
# listing the names here would load TensorFlow for --help.
_ALGORITHM = flags.DEFINE_string(
    "algorithm", None, "Shorthand for --config.algorithm: sideways, bp, "
    "gpipe or pipelined_bp (sideways_tf.ALGORITHMS).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete an existing run in --workdir whose config "
    "differs, instead of refusing to start.")


def main(argv):
  cli.start(argv)
  config = cli.with_algorithm(_CONFIG.value, _ALGORITHM.value)
  workdir = cli.resolve_workdir(_WORKDIR.value, config)
  print(f"Training {config.experiment} with {config.algorithm}; workdir: "
        f"{workdir}", flush=True)
  from sideways_tf.training import train_lib  # noqa: PLC0415
  result = train_lib.train(config, workdir, overwrite=_OVERWRITE.value)
  if result.get("interrupted"):  # never 0: `bin/train && bin/export` stops
    sys.exit(cli.user_errors.signal_exit_code(result.get("signal") or 15))


def run():
  """Console-script entry point: parses the flags and runs main."""
  cli.run_app(main, __name__, __doc__)


if __name__ == "__main__":
  run()
