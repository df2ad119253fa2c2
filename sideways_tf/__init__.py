"""sideways_tf: Sideways (depth-parallel approximate backprop) for video models.

The algorithm lives in `pipeline.py` (the tick engine and the BP baseline) and
`module.py` (one module and its buffers); see ../shared/SIDEWAYS.md or
docs/algorithm.md for the spec it implements.
"""

from sideways_tf import callbacks
from sideways_tf.keras_model import SidewaysModel
from sideways_tf.module import SidewaysModule
from sideways_tf.pipeline import ALGORITHMS
from sideways_tf.pipeline import ClipResult
from sideways_tf.pipeline import Pipeline
from sideways_tf.pipeline import sparse_softmax_cross_entropy

__all__ = [
    "ALGORITHMS",
    "ClipResult",
    "Pipeline",
    "SidewaysModel",
    "SidewaysModule",
    "callbacks",
    "sparse_softmax_cross_entropy",
]

__version__ = "0.1.0"
