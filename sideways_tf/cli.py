"""Small pieces the absl entry points in bin/ share (no TensorFlow import)."""

import os
import pathlib

from absl import flags
from absl import logging

PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent


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
  if config.algorithm not in ("sideways", "bp"):
    raise ValueError(
        f"config.algorithm must be 'sideways' or 'bp', got "
        f"{config.algorithm!r}")
  return config


def resolve_workdir(workdir, config) -> pathlib.Path:
  if workdir:
    return pathlib.Path(workdir).expanduser().resolve()
  return PROJECT_ROOT / "workdir" / f"{config.experiment}_{config.algorithm}"
