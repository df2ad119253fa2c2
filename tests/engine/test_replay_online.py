"""Replay with online updates: weight stashing (docs/engine.md, "Replay").

With `Trainer(update_every_ticks=N)` the optimizer steps between N-tick
chunks of a clip, so an input a replayed module holds may have been
computed with older weights than the current ones. With weight stashing a
replayed module replays it with the weights its original forward used.
With every module below the top replayed, each module's update is then the
exact gradient of the losses as they were computed: frame s passes module
j at tick s+j with the weights of that tick's chunk, and its gradient
reaches module k at tick s+2L-2-k, in the chunk whose update applies it.
"""

import keras
import numpy as np
import tensorflow as tf

import sideways_tf
from tests import util

LEARNING_RATE = 0.5  # large, so the weights move within a lag
EVERY = 2  # ticks per chunk


def loss_gradients(stages, weights, frames, labels, frame, module_weights):
  """Gradient of frame `frame`'s summed loss (0-based) w.r.t. every module's
  weights, module j computing with `weights[module_weights[j]][j]`."""
  used = [[tf.constant(w) for w in weights[v][j]]
          for j, v in enumerate(module_weights)]
  with tf.GradientTape() as tape:
    tape.watch(used)
    x = tf.constant(frames[:, frame])
    for stage, values in zip(stages, used):
      x, _ = stage.stateless_call(values, [], x)
    loss = tf.reduce_sum(sideways_tf.sparse_softmax_cross_entropy(labels, x))
  return [[np.asarray(g) for g in grads] for grads in tape.gradient(loss,
                                                                     used)]


def online_sgd_reference(stages, frames, labels):
  """The weights after one clip of online SGD with exact delayed gradients.

  versions[c][j]: module j's weights during chunk c (0-based). Chunk c
  covers 1-based ticks c*EVERY+1 .. (c+1)*EVERY; its update is the sum of
  the gradients arriving in it over B times its valid loss terms (ticks
  >= L), skipped if it has none.
  """
  num_modules = len(stages)
  batch, num_frames = frames.shape[:2]
  versions = [[[np.asarray(v) for v in s.trainable_variables]
               for s in stages]]
  for chunk in range(-(-num_frames // EVERY)):
    ticks = range(chunk * EVERY + 1, min((chunk + 1) * EVERY, num_frames) + 1)
    valid = sum(tick >= num_modules for tick in ticks)
    total = [[np.zeros_like(w) for w in module] for module in versions[-1]]
    for s in range(1, num_frames + 1):
      arrives = [k for k in range(num_modules)
                 if s + 2 * num_modules - 2 - k in ticks]
      if not arrives:
        continue
      grads = loss_gradients(stages, versions, frames, labels, s - 1,
                             [(s + j - 1) // EVERY
                              for j in range(num_modules)])
      for k in arrives:
        total[k] = [a + g for a, g in zip(total[k], grads[k])]
    step = LEARNING_RATE / (batch * valid) if valid else 0.0
    versions.append([[w - step * g for w, g in zip(module, grads)]
                     for module, grads in zip(versions[-1], total)])
  return [w for module in versions[-1] for w in module]


def test_online_updates_replay_with_the_weights_of_the_original_forward():
  stages = util.dense_stages(3)
  frames = util.moving_clip(batch=2, frames=9, shape=(5,))
  labels = util.labels_for(2)
  want = online_sgd_reference(stages, frames, labels)

  pipe = sideways_tf.Pipeline(stages, replay_modules=2)
  trainer = sideways_tf.Trainer(pipe, keras.optimizers.SGD(LEARNING_RATE),
                                "sideways", update_every_ticks=EVERY)
  assert pipe.replay_weight_stash
  trainer.train_step(frames, labels)
  # float32, a few ticks of a 3-layer dense net: ~1e-6 relative error.
  for got, expected in zip(pipe.trainable_variables, want):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4,
                               atol=1e-5)


def test_without_the_weight_history_replay_uses_newer_weights():
  """The same chunks and updates by hand on a pipeline without weight
  stashing: replay recomputes with the current weights, and the result
  misses the reference by far more than the tolerance above."""
  stages = util.dense_stages(3)
  frames = util.moving_clip(batch=2, frames=9, shape=(5,))
  labels = util.labels_for(2)
  want = online_sgd_reference(stages, frames, labels)
  pipe = sideways_tf.Pipeline(stages, replay_modules=2)
  optimizer = keras.optimizers.SGD(LEARNING_RATE)
  for start in range(0, frames.shape[1], EVERY):
    result = pipe.compute_gradients_and_metrics(
        frames[:, start:start + EVERY], labels, reset=False)
    if float(result.num_loss_terms):
      optimizer.apply_gradients(zip(result.gradients,
                                    pipe.trainable_variables))
  error = max(np.abs(np.asarray(got) - expected).max()
              for got, expected in zip(pipe.trainable_variables, want))
  assert error > 1e-3


def test_weight_history_is_pipeline_state_flat_in_the_clip_length():
  pipe = sideways_tf.Pipeline(util.dense_stages(3), replay_modules=2)
  pipe.stash_replay_weights()
  labels = util.labels_for(2)
  pipe.compute_gradients(util.moving_clip(2, 8, (5,)), labels)
  shapes = [tuple(v.shape) for v in pipe.state_variables]
  pipe.compute_gradients(util.moving_clip(2, 30, (5,)), labels)
  assert [tuple(v.shape) for v in pipe.state_variables] == shapes
  history = pipe.modules[0].weight_history
  assert [tuple(h.shape) for h in history] == [(4, 5, 4), (4, 4)]  # 2(L-1)
  assert all(any(h is v for v in pipe.state_variables) for h in history)
