"""The training progress bar, on a line of its own.

keras.utils.Progbar redraws one line ("\\r...") and ends it only at the last
step, so a warning written meanwhile (a log record, a Python warning, a
message to stderr) would continue the bar's line. While the bar is active
(`with bar:`), every record of the logging handlers (absl's included) and
every Python warning first ends the bar's line; the next redraw starts a new
one. An exception leaving the block ends it too, so the error message the
program then prints (a NaN stop, a user error) starts a line of its own.
(sys.stderr itself is left alone: absl's handler compares its stream with
it.)
"""

from __future__ import annotations

import logging
import sys
import warnings

import keras

# The loggers whose handlers print a run's warnings (absl's handler sits on
# the root logger once absl.app runs; TensorFlow may have its own).
_LOGGERS = ("", "absl", "tensorflow")


class _Tracker:
  """A stream that remembers whether the last thing written ended a line."""

  def __init__(self, stream):
    self._stream = stream
    self.last = None

  def write(self, text):
    if text:
      self.last = text[-1]
    return self._stream.write(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


class _EndLineFilter(logging.Filter):
  """A logging filter that passes every record, ending the bar's line first."""

  def __init__(self, bar):
    super().__init__()
    self._bar = bar

  def filter(self, record):
    self._bar.end_line()
    return True


class ProgressBar:
  """keras.utils.Progbar whose line log records and warnings never share."""

  def __init__(self, target: int, first_step: int = 0, **progbar_kwargs):
    self._bar = keras.utils.Progbar(target, **progbar_kwargs)
    self._open = False  # the bar's line is drawn and not yet ended
    self._filter = _EndLineFilter(self)
    self._handlers = []
    self._showwarning = None
    self.update(first_step)

  def update(self, step: int, values=None) -> None:
    stdout, tracker = sys.stdout, _Tracker(sys.stdout)
    sys.stdout = tracker
    try:
      self._bar.update(step, values)
    finally:
      sys.stdout = stdout
    if tracker.last is not None:  # it drew (redraws are rate-limited)
      self._open = tracker.last != "\n"

  def end_line(self) -> None:
    """Ends the bar's line if it is open (the next update draws anew)."""
    if self._open:
      self._open = False
      sys.stdout.write("\n")
      sys.stdout.flush()

  def __enter__(self):
    handlers = {id(h): h for name in _LOGGERS
                for h in logging.getLogger(name).handlers}
    self._handlers = list(handlers.values())
    for handler in self._handlers:
      handler.addFilter(self._filter)
    self._showwarning = show = warnings.showwarning

    def showwarning(*args, **kwargs):
      self.end_line()
      return show(*args, **kwargs)
    warnings.showwarning = showwarning
    return self

  def __exit__(self, *exc_info):
    if exc_info[0] is not None:
      self.end_line()
    for handler in self._handlers:
      handler.removeFilter(self._filter)
    self._handlers = []
    if self._showwarning is not None:
      warnings.showwarning, self._showwarning = self._showwarning, None
    return False
