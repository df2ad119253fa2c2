"""sideways_tf: Sideways (depth-parallel approximate backprop) for video models.

The algorithm lives in `engine/sideways.py` (the tick engine) and
`engine/module.py` (one module and its buffers); `engine/pipeline.py` is the
`Pipeline` every algorithm of `engine/algorithms.py` (Sideways, BP, GPipe)
runs through. The spec it implements is docs/algorithm.md. `training/` trains
with it, `keras_api/` is its Keras face, `serving/` makes SavedModels, `run/`
is the plumbing of a program run (checkpoints, workdir lock, cluster, user
errors, ...), `benchmark/` and `paper_experiments/` measure it.

The public names below load (with TensorFlow) on first use, so that the
programs of `sideways_tf.apps` (the `sideways-*` console scripts) can import
TensorFlow quietly first (`run/quiet.py`).
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys
import warnings

__all__ = [
    "ALGORITHMS",
    "ClipResult",
    "DataParallel",
    "Pipeline",
    "SidewaysModel",
    "SidewaysModule",
    "Trainer",
    "callbacks",
    "sparse_softmax_cross_entropy",
]

__version__ = "0.1.0"

_PUBLIC = {
    "ALGORITHMS": "sideways_tf.engine.pipeline",
    "ClipResult": "sideways_tf.engine.pipeline",
    "Pipeline": "sideways_tf.engine.pipeline",
    "sparse_softmax_cross_entropy": "sideways_tf.engine.pipeline",
    "SidewaysModule": "sideways_tf.engine.module",
    "SidewaysModel": "sideways_tf.keras_api.model",
    "Trainer": "sideways_tf.training.trainer",
    "DataParallel": "sideways_tf.training.data_parallel",
}

# `sideways_tf.callbacks` is public: another name of the Keras room's module.
_ALIASES = {"callbacks": "sideways_tf.keras_api.callbacks"}
# Modules that stood at the package root in 0.1.0: their old paths keep
# working for one release, with a DeprecationWarning naming the new one.
_MOVED = {
    **{name: f"sideways_tf.run.{name}" for name in (
        "checkpoints", "cli", "distributed", "distributed_start", "files",
        "quiet", "run_keys", "summaries", "user_errors", "workdir_lock")},
    "diagnostics": "sideways_tf.training.diagnostics",
    "export": "sideways_tf.serving.export",
    "keras_model": "sideways_tf.keras_api.model",
}


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """`import sideways_tf.<old name>` gives the module at its new path.

  A meta path finder, because `import sideways_tf.checkpoints` never asks
  the package for an attribute; `from sideways_tf import checkpoints` and
  `sideways_tf.checkpoints` reach it through `__getattr__` below. The loader
  puts the new module itself into sys.modules under the old name (the
  import system hands out whatever sys.modules holds after `exec_module`),
  so the two names are one module object, imported once.
  """

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    old = fullname.partition(f"{__name__}.")[2]
    if old in _MOVED or old in _ALIASES:
      return importlib.util.spec_from_loader(fullname, self)
    return None

  def create_module(self, spec):
    return None  # a placeholder, replaced in exec_module

  def exec_module(self, module):
    old = module.__name__.partition(f"{__name__}.")[2]
    new = _ALIASES.get(old) or _MOVED[old]
    if old in _MOVED:
      warnings.warn(
          f"{module.__name__} is deprecated: import {new} (the old path "
          f"goes in the next release)", DeprecationWarning,
          stacklevel=_importer_stacklevel())
    sys.modules[module.__name__] = importlib.import_module(new)


def _importer_stacklevel():
  """The `stacklevel` that points a warning from `exec_module` at the line
  that imported the old path (so Python's default filter shows it there,
  e.g. in a user's script): the first frame outside importlib and this
  file. `warnings` itself skips importlib's bootstrap frames when counting.
  """
  level, frame = 1, sys._getframe(2)  # 0: here, 1: exec_module
  while frame is not None:
    filename = frame.f_code.co_filename
    if not ("importlib" in filename and "_bootstrap" in filename):
      level += 1
      if filename != __file__ and not filename.endswith(
          os.path.join("importlib", "__init__.py")):
        return level
    frame = frame.f_back
  return 1


# First in line: a stale copy of an old module elsewhere on the path (an
# older or editable install) must not win over the moved module.
if not any(isinstance(finder, _OldPathFinder) for finder in sys.meta_path):
  sys.meta_path.insert(0, _OldPathFinder())


def _load():
  """The imports an eager __init__ would do: every public name, and the
  subpackages they bring (sideways_tf.engine, .training, ...)."""
  globals()["callbacks"] = importlib.import_module(_ALIASES["callbacks"])
  for name, module in _PUBLIC.items():
    globals()[name] = getattr(importlib.import_module(module), name)


def __getattr__(name):
  if name in __all__:
    _load()
    return globals()[name]
  # `from sideways_tf import engine` asks for the attribute first: a
  # submodule is imported alone (loading the public names would import
  # TensorFlow). Old paths of moved modules arrive here too (_OldPathFinder).
  if not name.startswith("__") and importlib.util.find_spec(
      f"{__name__}.{name}") is not None:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))
