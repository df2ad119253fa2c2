"""Small pieces the absl entry points in bin/ share (no TensorFlow import)."""

import importlib.util
import os
import pathlib

from absl import flags
from absl import logging

_PACKAGE_PARENT = pathlib.Path(__file__).resolve().parent.parent
# The checkout (it holds pyproject.toml); for an installed package (pip
# install .) the working directory: the default home of workdir/.
PROJECT_ROOT = (_PACKAGE_PARENT if (_PACKAGE_PARENT / "pyproject.toml").exists()
                else pathlib.Path.cwd())


def default_config_path() -> str:
  """configs/default.py of the checkout, or of the installed `configs`
  package (the wheel ships configs/ so that every config file works)."""
  spec = importlib.util.find_spec("configs")
  if spec is None or not spec.origin:
    return str(PROJECT_ROOT / "configs" / "default.py")
  return str(pathlib.Path(spec.origin).parent / "default.py")


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
  if config.algorithm not in ("sideways", "bp", "gpipe"):
    raise ValueError(
        f"config.algorithm must be 'sideways', 'bp' or 'gpipe', got "
        f"{config.algorithm!r}")
  return config


def resolve_workdir(workdir, config) -> pathlib.Path:
  if workdir:
    return pathlib.Path(workdir).expanduser().resolve()
  return PROJECT_ROOT / "workdir" / f"{config.experiment}_{config.algorithm}"


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
  app.run(main)

