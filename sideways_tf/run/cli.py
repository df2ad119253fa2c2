"""Small pieces the absl entry points in bin/ share.

No TensorFlow import at the top: `bin/<program> --help` runs without it.
"""

import os
import pathlib
import shlex
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

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


def define_config_file(module_name: str, default: str, help_text: str):
  """The --config flag of the program in `module_name` (a get_config() file,
  locked, with --config.<field> overrides), its errors as user errors.

  ml_collections loads a default file while the flag is defined, at import,
  applying the --config.<field> overrides on the command line: a misspelled
  field without --config= would fail there, before absl.app and
  user_errors.guard, as a traceback with exit 1.
  """
  try:
    holder = config_flags.DEFINE_config_file("config", default, help_text,
                                             lock_config=True)
  except Exception as error:  # noqa: BLE001
    if user_errors.verbose():
      raise
    user_errors.fail(user_errors.flag_error_message(error))
    raise  # not reached: fail exits
  flags.FLAGS.register_key_flag_for_module(module_name, flags.FLAGS["config"])
  return holder  # (--help lists the program's key flags)


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
  from sideways_tf.engine import algorithms  # noqa: PLC0415  (TensorFlow)
  if algorithm is not None:
    with config.unlocked():
      config.algorithm = algorithm
  if config.algorithm not in algorithms.ALGORITHMS:
    given = "--algorithm" if algorithm is not None else "config.algorithm"
    raise ValueError(
        f"{given} must be {algorithms.names_for_humans()}, got "
        f"{config.algorithm!r}")
  return config


def resolve_workdir(workdir, config, argv=None) -> pathlib.Path:
  """--workdir, else workdir/<experiment>_<algorithm>[-<overrides>]: runs
  with non-resumable --config overrides get their own default workdir."""
  if workdir:
    return pathlib.Path(workdir).expanduser().resolve()
  from sideways_tf.run import run_keys  # noqa: PLC0415
  suffix = run_keys.override_suffix(sys.argv if argv is None else argv)
  name = f"{config.experiment}_{config.algorithm}"
  return PROJECT_ROOT / "workdir" / (f"{name}-{suffix}" if suffix else name)


def command(program: str) -> str:
  """How to run bin/<program> the way this process runs, for the commands a
  program suggests next: with this interpreter (bin/* under a python
  without TensorFlow, e.g. outside the activated venv, fails), or the
  console script where there is no checkout (pip install .)."""
  script = PROJECT_ROOT / "bin" / program
  if script.is_file():
    return f"{shown_path(sys.executable)} {shown_path(script)}"
  return "sideways-" + program.replace("_", "-")


def config_file(name: str) -> str:
  """configs/<name> of the checkout, else the packaged file, as a path that
  works from the working directory."""
  root_file = PROJECT_ROOT / "configs" / name
  return shown_path(root_file if root_file.is_file() else
                    pathlib.Path(default_config_path()).with_name(name))


def venv_tool(name: str) -> str:
  """A tool installed beside this interpreter (saved_model_cli,
  tensorboard): the venv's bin/ is on PATH only while it is activated."""
  return shown_path(pathlib.Path(sys.executable).parent / name)


def shown_path(path) -> str:
  """`path` relative to the working directory when it is under it."""
  path = pathlib.Path(path)
  try:
    text = os.path.join(".", path.relative_to(pathlib.Path.cwd()))
    text = text[2:] if "/" in text[2:] else text  # .venv/bin/python, ./x
  except ValueError:
    text = str(path)
  return shlex.quote(text)


def run_app(main, module_name: str, usage: str) -> None:
  """Runs an absl main defined in a package module, e.g. via bin/ or pip.

  absl's --help shows the __main__ docstring and the flags of the program
  named in argv[0]; the flags here live in `module_name`, so both are handed
  over before absl parses the command line.
  """
  from absl import app  # noqa: PLC0415
  sys.modules["__main__"].__doc__ = usage
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(user_errors.guard(main), flags_parser=user_errors.parse_flags)

