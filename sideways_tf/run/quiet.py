"""TensorFlow's C++ start-up lines, hidden unless something goes wrong.

TF 2.21 writes "All log messages before absl::InitializeLog()", oneDNN and
CUDA notes, and on a CPU-only machine "E0000 ... failed call to cuInit ...
UNKNOWN ERROR (303)" straight to file descriptor 2, before
TF_CPP_MIN_LOG_LEVEL applies. The programs of sideways_tf/apps (bin/* and
the `sideways-*` console scripts alike) call `quiet_start` before anything
else imports TensorFlow: TF is imported with fd 2 pointed at a temporary file,
which is replayed only if the import fails (the lines are shown with
--verbose or --verbosity). `--help` loads no TensorFlow at all. A signal
before the program's main ends it at once with one line and 128 + the
signal's number: nothing has been written yet, and a Ctrl-C would otherwise
print a long KeyboardInterrupt traceback from inside TensorFlow's import (a
SIGTERM, no line at all). From main on, user_errors.guard handles them.
Only TensorFlow-free package modules are imported here, and
`import sideways_tf` itself loads no TensorFlow (its public names load on
first use), so this runs first.
"""

import contextlib
import os
import sys
import tempfile

from sideways_tf.run import user_errors

# The terminal's stderr while fd 2 points at the capture file, else None.
_terminal_stderr = None


def _stop_during_start_up(signum, frame):
  del frame
  line = f"\n{user_errors.stopped_by(signum)} during start-up\n"
  os.write(2 if _terminal_stderr is None else _terminal_stderr, line.encode())
  os._exit(user_errors.signal_exit_code(signum))  # mid-import: no shutdown


@contextlib.contextmanager
def c_lines_hidden():
  """Points file descriptor 2, where TensorFlow's C++ code logs, at a
  temporary file for the block; the lines are shown if the block raises.

  For TensorFlow's import (its start-up lines) and the TFLite converter
  (about ten MLIR/loader lines per conversion), which write there whatever
  TF_CPP_MIN_LOG_LEVEL says. Python's own sys.stderr is the same file, so
  the block should not print what the user must see.
  """
  global _terminal_stderr
  sys.stderr.flush()
  saved = os.dup(2)
  outer, _terminal_stderr = _terminal_stderr, (
      saved if _terminal_stderr is None else _terminal_stderr)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    except BaseException:
      sys.stderr.flush()
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode(errors="replace"))
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      _terminal_stderr = outer
      os.close(saved)


def import_tensorflow(show: bool = False):
  """Imports TensorFlow (and looks for GPUs) without its start-up noise."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if show or "tensorflow" in sys.modules:
    import tensorflow as tf  # noqa: PLC0415
    return tf
  with c_lines_hidden():
    import tensorflow as tf  # noqa: PLC0415
    tf.config.list_physical_devices("GPU")  # cuInit's line, if any, now
  return tf


def quiet_start(argv) -> None:
  """What every program of sideways_tf/apps calls first: one line, not a
  traceback, on a signal before main; TensorFlow imported quietly unless
  asked, and not at all for --help."""
  user_errors.set_signal_handlers(_stop_during_start_up, _stop_during_start_up)
  if user_errors.help_requested(argv):
    return
  show = any(a in ("--verbose", "--verbose=true", "--verbose=True", "-v")
             or a.startswith("--verbosity") for a in argv[1:])
  import_tensorflow(show=show)
