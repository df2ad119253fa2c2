"""sideways_tf: Sideways (depth-parallel approximate backprop) for video models.

The algorithm lives in `engine/pipeline.py` (the tick engine, then the BP
baseline) and `engine/module.py` (one module and its buffers); the spec it
implements is docs/algorithm.md. `training/` trains with it, `export.py` makes
SavedModels, `benchmark/` and `paper_experiments/` measure it.
"""

from sideways_tf import callbacks
from sideways_tf.keras_model import SidewaysModel
from sideways_tf.engine.module import SidewaysModule
from sideways_tf.engine.pipeline import ALGORITHMS
from sideways_tf.engine.pipeline import ClipResult
from sideways_tf.engine.pipeline import Pipeline
from sideways_tf.engine.pipeline import sparse_softmax_cross_entropy
from sideways_tf.training.trainer import Trainer

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
