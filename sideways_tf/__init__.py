"""sideways_tf: Sideways (depth-parallel approximate backprop) for video models.

The algorithm lives in `engine/sideways.py` (the tick engine) and
`engine/module.py` (one module and its buffers); `engine/pipeline.py` is the
`Pipeline` every algorithm of `engine/algorithms.py` (Sideways, BP, GPipe)
runs through. The spec it implements is docs/algorithm.md. `training/` trains with it, `export.py` makes
SavedModels, `benchmark/` and `paper_experiments/` measure it.

The public names below load (with TensorFlow) on first use, so that the
programs of `sideways_tf.apps` (the `sideways-*` console scripts) can import
TensorFlow quietly first (`quiet.py`).
"""

import importlib
import importlib.util

__all__ = [
    "ALGORITHMS",
    "ClipResult",
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
    "SidewaysModel": "sideways_tf.keras_model",
    "Trainer": "sideways_tf.training.trainer",
}


def _load():
  """The imports an eager __init__ would do: every public name, and the
  subpackages they bring (sideways_tf.engine, .training, ...)."""
  globals()["callbacks"] = importlib.import_module("sideways_tf.callbacks")
  for name, module in _PUBLIC.items():
    globals()[name] = getattr(importlib.import_module(module), name)


def __getattr__(name):
  if name in __all__:
    _load()
    return globals()[name]
  # `from sideways_tf import quiet` asks for the attribute first: a
  # submodule is imported alone (loading the public names would import
  # TensorFlow).
  if not name.startswith("__") and importlib.util.find_spec(
      f"{__name__}.{name}") is not None:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))
