"""Small pieces the absl entry points in bin/ share."""

import os
import pathlib

from absl import flags
from absl import logging

from sideways_tf.engine import algorithms
from sideways_tf.run.files import PROJECT_ROOT
from sideways_tf.run import user_errors

flags.DEFINE_bool("verbose", False, "Show the traceback of a user error "
                  "(a bad flag, config, workdir or data) instead of a short "
                  "message.")


def default_config_path() -> str:
  """sideways_tf/configs/default.py: shipped in the package, so it is there
  in a checkout and after `pip install .` alike."""
  return str(pathlib.Path(__file__).resolve().parents[1] / "configs" /
             "default.py")


def start(argv):
  """Common start of every entry point: no stray args, quiet TF/absl INFO logs
  (pass --verbosity=0 to see them)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  reject_extra_args(argv)


def reject_extra_args(argv):
  if len(argv) > 1:
    raise ValueError(
        f"unexpected arguments {argv[1:]!r}; every option is a --flag "
        f"(see --help)")


def with_algorithm(config, algorithm):
  """Applies the --algorithm shorthand and checks config.algorithm."""
  if algorithm is not None:
    with config.unlocked():
      config.algorithm = algorithm
  if config.algorithm not in algorithms.ALGORITHMS:
    raise ValueError(
        f"config.algorithm must be {algorithms.names_for_humans()}, got "
        f"{config.algorithm!r}")
  return config


def resolve_workdir(workdir, config, argv=None) -> pathlib.Path:
  """--workdir, else workdir/<experiment>_<algorithm>[-<overrides>]: runs
  with non-resumable --config overrides get their own default workdir."""
  if workdir:
    return pathlib.Path(workdir).expanduser().resolve()
  import sys  # noqa: PLC0415
  from sideways_tf.run import run_keys  # noqa: PLC0415
  suffix = run_keys.override_suffix(sys.argv if argv is None else argv)
  name = f"{config.experiment}_{config.algorithm}"
  return PROJECT_ROOT / "workdir" / (f"{name}-{suffix}" if suffix else name)


def run_app(main, module_name: str, usage: str) -> None:
  """Runs an absl main defined in a package module, e.g. via bin/ or pip.

  absl's --help shows the __main__ docstring and the flags of the program
  named in argv[0]; the flags here live in `module_name`, so both are handed
  over before absl parses the command line.
  """
  import sys  # noqa: PLC0415
  from absl import app  # noqa: PLC0415
  sys.modules["__main__"].__doc__ = usage
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(user_errors.guard(main), flags_parser=user_errors.parse_flags)

