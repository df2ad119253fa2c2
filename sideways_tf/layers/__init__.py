"""Keras layers the engine knows about: causal temporal layers (temporal.py).

``from sideways_tf.layers import CausalTemporalConv, TemporalShift``; see
docs/models.md ("Temporal layers") and docs/algorithm.md for their rule under
each algorithm.
"""

from sideways_tf.layers.temporal import CausalTemporalConv
from sideways_tf.layers.temporal import TemporalLayer
from sideways_tf.layers.temporal import TemporalShift
from sideways_tf.layers.temporal import clip_scope
from sideways_tf.layers.temporal import stream_scope
from sideways_tf.layers.temporal import temporal_layers

__all__ = ["CausalTemporalConv", "TemporalLayer", "TemporalShift",
           "clip_scope", "stream_scope", "temporal_layers"]
