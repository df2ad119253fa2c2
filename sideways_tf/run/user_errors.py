"""User errors as short messages, and the exit codes of every bin/ program.

A mistake on the command line, in a config, a workdir or the data prints one
or two lines that say what to do, without a traceback (--verbose shows it).
Exit codes (also in README.md):

  0    done (or nothing to do, or --help)
  1    an unexpected error (with its traceback)
  2    a user error: bad flag, config, workdir, data; a full disk or a
       read-only workdir; the workdir deleted under the run (lost lock); the
       message says what to do
  3    training stopped on a non-finite loss or variable (last good
       checkpoint named; rerun with a smaller learning rate to resume)
  4    a distributed worker was lost
  75   the workdir is locked by another run (EX_TEMPFAIL: retry later)
  130  stopped by SIGINT (Ctrl-C): after saving a checkpoint in the training
       loop, with one line before it
  143  stopped by SIGTERM: the same
  137  a cluster did not start in time (the workers that never started are
       named; distributed_start.py)

Signals: until a program's main runs (TensorFlow loading, flag parsing),
SIGINT and SIGTERM end it at once with one line, as nothing has been
written yet (quiet.py); from main on (`guard`), Ctrl-C is a
KeyboardInterrupt and SIGTERM a SystemExit(143), each with one line, so
`finally` blocks (the workdir lock, temporary files) run; the training loop
saves a checkpoint first.

No TensorFlow import here: the bin/ programs use it before TF loads.
"""

from __future__ import annotations

import difflib
import errno
import json
import re
import signal
import sys

EXIT_ERROR = 1
EXIT_USER = 2
EXIT_NONFINITE = 3
EXIT_WORKER_LOST = 4
EXIT_LOCKED = 75


# The file system refusing a write (or a read): the user's (or the
# machine's) to fix, not a bug. OSError's errno, or the text of a TensorFlow
# error (TF reports them as ResourceExhaustedError, PermissionDeniedError,
# ... with this text).
_STORAGE_ERRNOS = {errno.ENOSPC: "full", errno.EDQUOT: "full",
                   errno.EROFS: "read-only", errno.EACCES: "permission",
                   errno.EPERM: "permission"}
_STORAGE_TEXTS = {"No space left on device": "full",
                  "Disk quota exceeded": "full",
                  "Read-only file system": "read-only",
                  "Permission denied": "permission"}
_STORAGE_HINTS = {
    "full": "Free space there (or use another --workdir), then rerun the "
            "same command: training resumes from its last checkpoint.",
    "read-only": "Use a writable --workdir (bin/evaluate: --output_dir; "
                 "bin/export: --output).",
    "permission": "Check that path's permissions, or use another --workdir "
                  "(bin/evaluate: --output_dir; bin/export: --output).",
}


def storage_problem(error: BaseException):
  """("full" | "read-only" | "permission", what the system said, the path
  or None) if `error` is the file system refusing access, else None."""
  if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
    return (_STORAGE_ERRNOS[error.errno], error.strerror, error.filename)
  if type(error).__module__.startswith("tensorflow"):
    # Not the op's device name: "{{function_node ..._device_/job:...}}".
    text = re.sub(r"\{\{.*?\}\}", "", str(getattr(error, "message", error)))
    for said, kind in _STORAGE_TEXTS.items():
      if said in text:
        path = re.search(r"(/[^\s;:'\"]+)", text)
        return kind, said, path.group(1) if path else None
  return None


def signal_exit_code(signum: int) -> int:
  """The shell's convention: 128 + the signal number (130 SIGINT, 143 TERM)."""
  return 128 + int(signum)


def help_requested(argv) -> bool:
  """absl's --help, --helpshort, --helpfull, --helpxml or -? is on the line
  (the program then prints its flags and exits 0, without loading
  TensorFlow)."""
  return any(re.fullmatch(r"--?(help|helpshort|helpfull|helpxml|\?)"
                          r"(=(true|True|1))?", a) for a in argv[1:])


def stopped_by(signum: int) -> str:
  """The line a signal outside the training loop prints."""
  return f"{_program()}: stopped by {signal.Signals(signum).name}"


def _exit_on_sigterm(signum, frame):
  del frame
  print(f"\n{stopped_by(signum)}", file=sys.stderr, flush=True)
  raise SystemExit(signal_exit_code(signum))


def stop_cleanly_in_main() -> None:
  """SIGINT/SIGTERM from main on: exceptions, so cleanup code runs."""
  set_signal_handlers(signal.default_int_handler, _exit_on_sigterm)


def set_signal_handlers(on_sigint, on_sigterm) -> None:
  try:
    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)
  except ValueError:  # not the main thread: signals are not ours to set
    pass


def verbose() -> bool:
  return any(a in ("--verbose", "--verbose=true", "--verbose=True")
             for a in sys.argv[1:])


def _program() -> str:
  return sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "sideways"


def fail(message: str, code: int = EXIT_USER) -> None:
  """Prints `message` (at most 3 lines in all) and exits with `code`."""
  lines = [line for line in str(message).strip().splitlines() if line.strip()]
  if len(lines) > 2:
    lines = lines[:2]
  text = "\n".join(lines) or "failed"
  print(f"{_program()}: error: {text}", file=sys.stderr, flush=True)
  if not verbose():
    print("(add --verbose for the traceback)", file=sys.stderr, flush=True)
  sys.exit(code)


def _exit_code(error: BaseException):
  """The exit code of an expected error, None for an unexpected one."""
  name = type(error).__name__
  if name == "WorkdirLockedError":
    return EXIT_LOCKED
  if name == "WorkdirLockLostError" or storage_problem(error):
    return EXIT_USER
  if isinstance(error, FloatingPointError):
    return EXIT_NONFINITE
  if name in ("WorkerLostError", "WorkerStartTimeout"):
    return EXIT_WORKER_LOST
  if isinstance(error, (ValueError, FileNotFoundError, FileExistsError,
                        NotADirectoryError, IsADirectoryError,
                        PermissionError, KeyError, AttributeError)):
    return EXIT_USER
  if name in ("DataLossError", "NotFoundError", "InvalidArgumentError"):
    return EXIT_USER if getattr(error, "named_file", False) else None
  return None


def _message(error: BaseException) -> str:
  text = getattr(error, "message", None) or (
      error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str)
      else str(error))
  storage = storage_problem(error)
  if storage:
    kind, said, path = storage
    return f"{path or 'a file'}: {said}.\n{_STORAGE_HINTS[kind]}"
  if isinstance(error, FileExistsError) and error.filename:
    text = (f"{error.filename} exists and is not a directory: pass a "
            f"directory path as --workdir")
  elif isinstance(error, (FileNotFoundError, NotADirectoryError)) and \
      error.filename:
    text = f"{error.filename}: {error.strerror or text}"
  return str(text)


def guard(main):
  """Wraps an absl main: expected errors print a short message and exit with
  their code; a second Ctrl-C exits quietly with 130."""
  def wrapped(argv):
    stop_cleanly_in_main()
    try:
      return main(argv)
    except KeyboardInterrupt:
      if verbose():
        raise
      print(f"\n{_program()}: interrupted", file=sys.stderr, flush=True)
      sys.exit(signal_exit_code(2))
    except Exception as error:  # noqa: BLE001
      if isinstance(error, OSError) and "config file" in str(error):
        if verbose():
          raise
        fail(flag_error_message(error))  # ml_collections loads it lazily
      code = _exit_code(error)
      if code is None or verbose():
        raise
      fail(_message(error), code)
  return wrapped


def parse_flags(argv):
  """absl's flag parsing, with one-line errors: unknown flags suggest the
  matching --config.<field>, config errors say which key."""
  from absl import flags  # noqa: PLC0415
  try:
    return flags.FLAGS(argv)
  except SystemExit as done:
    if done.code == 1 and help_requested(argv):
      sys.exit(0)  # absl exits 1 after --help; the help is what was asked
    raise
  except KeyboardInterrupt:
    print(f"\n{_program()}: interrupted", file=sys.stderr, flush=True)
    sys.exit(signal_exit_code(2))
  except flags.UnrecognizedFlagError as error:
    name = error.flagname
    hint = suggest_config_flag(name)
    fail(f"unknown flag --{name}" + (f"; did you mean {hint}?" if hint else
                                     "; see --help"))
  except Exception as error:  # noqa: BLE001
    if verbose():
      raise
    fail(flag_error_message(error, argv))
  return None


def _config_file(argv) -> str:
  given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
  return given[-1] if given else "the config file"


def flag_error_message(error: BaseException, argv=None) -> str:
  """One line for an error of absl's or ml_collections' flag parsing."""
  text = " ".join(str(error).replace("\\n", "\n").split())
  if "has no attribute 'get_config'" in text:
    return (f"{_config_file(argv or sys.argv)} defines no get_config(); a "
            f"config file is a python file whose get_config() returns an "
            f"ml_collections.ConfigDict (see configs/default.py)")
  # ml_collections: a misspelled key arrives as a garbled AttributeError repr:
  # '\'num_step\'\nDid you mean "num_steps" instead of "num_step"?'
  mean = re.search(r"""Did you mean ['"]?([\w.]+)['"]? instead of ['"]?([\w.]+)""",
                   text)
  if mean:
    return (f"the config has no field {mean.group(2)!r}; did you mean "
            f"{mean.group(1)!r}? (--config.<section>.<field>=value)")
  missing = re.search(r"Attempted \[[^]]*\]: (\S+) \[Errno 2\]", text)
  if missing:
    return (f"config file {missing.group(1)} not found; pass "
            f"--config=configs/NAME.py (one of the files in configs/)")
  if isinstance(error, (AttributeError, KeyError)):
    return f"bad --config override: {text[:300]}"
  return text[:400]


def suggest_config_flag(name: str):
  """--num_steps -> --config.train.num_steps (from configs/default.py)."""
  try:
    from sideways_tf.configs import default  # noqa: PLC0415
    keys = _flatten(json.loads(default.get_config().to_json_best_effort()))
  except Exception:  # noqa: BLE001
    return None
  bare = name.split("=", 1)[0].lstrip("-")
  exact = [k for k in keys if k.rsplit(".", 1)[-1] == bare]
  if exact:
    return f"--config.{exact[0]}"
  close = difflib.get_close_matches(bare, [k.rsplit(".", 1)[-1] for k in keys],
                                    n=1)
  if close:
    full = [k for k in keys if k.rsplit(".", 1)[-1] == close[0]][0]
    return f"--config.{full}"
  return None


def _flatten(tree, prefix=""):
  out = []
  for key, value in tree.items():
    if isinstance(value, dict):
      out += _flatten(value, f"{prefix}{key}.")
    else:
      out.append(f"{prefix}{key}")
  return out
