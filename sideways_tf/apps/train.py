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
from ml_collections import config_flags

from sideways_tf.engine.algorithms import ALGORITHMS
from sideways_tf.run import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", cli.default_config_path(),
    "Experiment config file (a get_config() python file); override any field "
    "with --config.<field>=<value>.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, TensorBoard logs and results. "
    "Default: workdir/<experiment>_<algorithm> under the project.")
_ALGORITHM = flags.DEFINE_enum(
    "algorithm", None, list(ALGORITHMS),
    "Shorthand for --config.algorithm.")
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
