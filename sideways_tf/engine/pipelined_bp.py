"""Pipelined BP: the tick engine with every module below the top replayed.

``algorithm="pipelined_bp"`` is Sideways' tick engine (engine/sideways.py,
unchanged) with ``replay_modules = L-1``: every tick, every module does one
forward step on the newest frame it holds and one backward step with the
newest gradient it holds, and a module below the top takes that backward
step at the input its gradient belongs to, kept from 2(L-k) ticks ago and
recomputed (docs/engine.md, "Replay"). That is pipelined backprop with input
stashing and recomputation: Features Replay (Huo, Gu and Huang, NeurIPS
2018), or PipeDream's one-forward-one-backward schedule (Narayanan et al.,
SOSP 2019) with the clip's frames as micro-batches. No module approximates
anything, so it is exact, and it keeps what Sideways gains: every module
busy at every tick, memory flat in T (each module keeps its last 2(L-k)
inputs).

What its clip gradient is, exactly (tests/engine/test_pipelined_bp.py): the
weights do not change within a clip (one optimizer step per clip), so module
k's gradient is BP's gradient of the frames whose gradient reaches it within
the clip, frames 1..T-2L+k+1 (their sum, divided like Sideways' by the
B*(T-L+1) valid loss terms); the last 2(L-k) frames' gradients are still in
flight at the end and are dropped, or, in a stream fed with ``reset=False``,
carried into the next chunk. With Skip-Sideways skips every path is exact
(docs/skip_sideways.md, "Replay"). Between a plain Sideways run and this one
``replay_modules`` is the knob (how many bottom modules are exact).

Across an optimizer step inside a stream (``update_every_ticks``) a
gradient still in flight belongs to the weights before the step. The Trainer
then turns on PipeDream's weight stashing (``Pipeline.stash_replay_weights``:
each replayed module recomputes a held input with the weights its forward
used), so every update is the exact, delayed gradient of the losses as they
were computed; PipeMare and Kosson et al.'s "Pipelined Backpropagation at
Scale" predict the weights instead, which is not implemented. Chunks of one
stream fed by hand with an update in between get no stashing unless
``stash_replay_weights`` is called.
"""

from __future__ import annotations

from sideways_tf.engine.sideways import Sideways


class PipelinedBP(Sideways):
  """The tick engine with every module below the top replayed: exact."""
  name = "pipelined_bp"
  summary = ("pipelined BP (Features Replay, 1F1B over frames): the tick "
             "engine with every module below the top replayed; exact for the "
             "frames whose gradient reaches each module in the clip, memory "
             "flat in T")
  exact = True

  def replay_modules(self, num_modules: int, requested: int) -> int:
    del requested  # every module below the top, whatever the Pipeline says
    return num_modules - 1

  def validate(self, pipeline, num_frames: int, reset: bool) -> None:
    super().validate(pipeline, num_frames, reset)
    if pipeline.has_temporal_layers:
      # Its backward folds the gradient w.r.t. a temporal layer's past into
      # the present (docs/algorithm.md, "Temporal layers"): not BP's.
      raise ValueError(
          "algorithm='pipelined_bp' is exact for frame models only: with "
          "causal temporal layers the tick's backward folds the gradient "
          "with respect to their past into the present frame's "
          "(docs/algorithm.md, 'Temporal layers'). For the exact gradient "
          "through time use 'bp' or 'gpipe'; for this engine with every "
          "module below the top replayed, 'sideways' with "
          f"replay_modules={pipeline.num_modules - 1}")


PIPELINED_BP = PipelinedBP()
