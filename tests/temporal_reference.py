"""A NumPy reference (float64) of Sideways and BP with causal temporal layers.

Written from the rule in docs/algorithm.md ("Temporal layers"),
independently of the engine and of sideways_tf.layers: layers are NumPy
classes with a hand-written backward pass on sequences, the Sideways
schedule is a plain loop over ticks. Used by tests/test_temporal_engine.py.

Every tensor is a sequence ``[B, n, ...]`` (n frames); a layer maps it with
its past ``[B, M, ...]`` (its last M inputs, zeros at the start):

* ``Dense(w, b, tanh)``: per frame, x @ w + b, then tanh (or linear);
* ``TemporalConv(w, b)``: causal conv over time, depthwise (w ``[K, C]``) or
  full (w ``[K, C, F]``);
* ``Shift(c)``: the first c channels of frame s are frame s-1's.

BP through time runs each layer on the whole clip; Sideways runs one frame
per tick and folds the gradient w.r.t. the past into the current frame's.
"""

from __future__ import annotations

import keras
import numpy as np

from sideways_tf.layers import CausalTemporalConv, TemporalShift


class Dense:
  memory = 0

  def __init__(self, w, b, tanh=True):
    self.params, self.tanh = [w, b], tanh

  def forward(self, x, past):
    y = x @ self.params[0] + self.params[1]
    y = np.tanh(y) if self.tanh else y
    return y, (x, y), past

  def backward(self, cache, g):
    x, y = cache
    if self.tanh:
      g = g * (1.0 - y ** 2)
    grads = [np.einsum("bnd,bnf->df", x, g), g.sum((0, 1))]
    return g @ self.params[0].T, None, grads


class TemporalConv:
  def __init__(self, w, b):
    self.params = [w, b]
    self.memory = w.shape[0] - 1

  def forward(self, x, past):
    window = np.concatenate([past, x], 1)
    n, w = x.shape[1], self.params[0]
    y = self.params[1] + sum(
        window[:, i:i + n] * w[i] if w.ndim == 2
        else window[:, i:i + n] @ w[i] for i in range(w.shape[0]))
    return y, window, window[:, -self.memory:]

  def backward(self, window, g):
    w, n = self.params[0], g.shape[1]
    grad_window = np.zeros_like(window)
    grad_w = np.zeros_like(w)
    for i in range(w.shape[0]):
      taps = window[:, i:i + n]
      if w.ndim == 2:
        grad_w[i] = (taps * g).sum((0, 1))
        grad_window[:, i:i + n] += g * w[i]
      else:
        grad_w[i] = np.einsum("bnc,bnf->cf", taps, g)
        grad_window[:, i:i + n] += g @ w[i].T
    return (grad_window[:, self.memory:], grad_window[:, :self.memory],
            [grad_w, g.sum((0, 1))])


class Shift:
  memory = 1

  def __init__(self, channels):
    self.params, self.channels = [], channels

  def forward(self, x, past):
    c = self.channels
    previous = np.concatenate([past, x[..., :c]], 1)
    y = np.concatenate([previous[:, :-1], x[..., c:]], -1)
    return y, None, previous[:, -1:]

  def backward(self, cache, g):
    c = self.channels
    grad_previous = np.concatenate([g[..., :c], np.zeros_like(g[:, :1, :c])],
                                   1)
    grad_x = np.concatenate([grad_previous[:, 1:], g[..., c:]], -1)
    return grad_x, grad_previous[:, :1], []


def _kept_width(layer, x):
  return layer.channels if isinstance(layer, Shift) else x.shape[-1]


class Stage:
  """Layers in sequence; `pasts` holds one past per temporal layer."""

  def __init__(self, layers):
    self.layers = layers
    self.params = [p for layer in layers for p in layer.params]

  def forward(self, x, pasts=None):
    """(output, caches, new pasts); `pasts` None: zeros (a stream's start)."""
    caches, new_pasts = [], []
    pasts = None if pasts is None else list(pasts)
    for layer in self.layers:
      past = None
      if layer.memory:
        past = (pasts.pop(0) if pasts is not None else np.zeros(
            (x.shape[0], layer.memory, _kept_width(layer, x))))
      inputs = x
      x, cache, new = layer.forward(x, past)
      caches.append((cache, inputs))
      if layer.memory:
        new_pasts.append(new)
    return x, caches, new_pasts

  def backward(self, caches, g, fold):
    """(gradient w.r.t. the stage input, parameter gradients, gradients
    w.r.t. the pasts). `fold`: Sideways' rule, the gradient w.r.t. each
    past joins the current frame's (one frame, n = 1)."""
    grads, past_grads = [], []
    for layer, (cache, inputs) in zip(reversed(self.layers),
                                      reversed(caches)):
      g, grad_past, param_grads = layer.backward(cache, g)
      if layer.memory:
        past_grads.insert(0, grad_past)
        if fold:
          width = _kept_width(layer, inputs)
          g = g.copy()
          g[..., :width] += grad_past.sum(1, keepdims=True)
      grads = param_grads + grads
    return g, grads, past_grads


# ------------------------------------------------------- Keras twins


def keras_stage(spec):
  """The keras.Sequential a stage spec (a list of layer specs) mirrors."""
  layers = []
  for layer in spec:
    if layer[0] == "dense":
      layers.append(keras.layers.Dense(layer[1],
                                       activation="tanh" if layer[2] else None))
    elif layer[0] == "tconv":
      layers.append(CausalTemporalConv(layer[1], filters=layer[2],
                                       kernel_initializer="glorot_uniform"))
    else:
      layers.append(TemporalShift(layer[1]))
  return keras.Sequential(layers)


def numpy_stage(keras_stage_, spec):
  """The float64 twin of a built Keras stage."""
  layers = []
  for keras_layer, layer in zip(keras_stage_.layers, spec):
    params = [np.asarray(v, np.float64) for v in keras_layer.trainable_variables]
    if layer[0] == "dense":
      layers.append(Dense(*params, tanh=layer[2]))
    elif layer[0] == "tconv":
      layers.append(TemporalConv(*params))
    else:
      layers.append(Shift(keras_layer.shifted))
  return Stage(layers)


def _softmax_grad(logits, labels):
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return p - np.eye(logits.shape[-1])[labels]


def _zero_pasts(stages, frames):
  """Every stage's zero pasts, shaped by a probe pass over the first frame."""
  pasts, x = [], frames[:, :1]
  for stage in stages:
    x, _, new = stage.forward(x)
    pasts.append([np.zeros_like(p) for p in new])
  return pasts


# ------------------------------------------------------------ BP


def bp(stages, frames, labels, pasts=None):
  """Exact gradient through time of the mean per-frame loss over the clip,
  from the given pasts (constants: the gradient stops there; zeros by
  default). Returns (gradients, the pasts the clip leaves)."""
  batch, num_frames = frames.shape[:2]
  pasts = pasts or _zero_pasts(stages, frames)
  x, caches, new_pasts = frames, [], []
  for stage, past in zip(stages, pasts):
    x, cache, new = stage.forward(x, past)
    caches.append(cache)
    new_pasts.append(new)
  g = _softmax_grad(x, labels[:, None]) / (batch * num_frames)
  grads = []
  for stage, cache in zip(reversed(stages), reversed(caches)):
    g, stage_grads, _ = stage.backward(cache, g, fold=False)
    grads = stage_grads + grads
  return grads, new_pasts


# ------------------------------------------------------------ Sideways


def sideways(stages, frames, labels, replay_modules=0):
  """The Sideways clip gradient with temporal layers (docs/algorithm.md).

  Tick t (1-based), stage k (0-based): forward on what it holds with its
  pasts, which take the frame only if t >= k + 1; backward at the same
  (input, pasts) with the past's gradient folded into the present, or, for
  a replayed stage, at the (input, pasts) it held 2(L-1-k) ticks ago.
  """
  batch, num_frames = frames.shape[:2]
  num_stages = len(stages)
  pasts = _zero_pasts(stages, frames)
  x, outputs = frames[:, :1], []
  for stage, past in zip(stages, pasts):
    x = stage.forward(x, past)[0]
    outputs.append(np.zeros_like(x))
  inputs = [None] + [o.copy() for o in outputs[:-1]]
  grads = [o.copy() for o in outputs]
  lags = [2 * (num_stages - 1 - k) for k in range(num_stages)]
  held = [[(np.zeros_like(inputs[k]) if k else np.zeros_like(frames[:, :1]),
            [np.zeros_like(p) for p in pasts[k]])] * lags[k]
          for k in range(replay_modules)]
  sums = [[np.zeros_like(p) for p in s.params] for s in stages]
  for t in range(1, num_frames + 1):
    new_inputs, new_grads, new_pasts = [None] * num_stages, [None] * (
        num_stages), list(pasts)
    for k, stage in enumerate(stages):
      x = frames[:, t - 1:t] if k == 0 else inputs[k]
      y, cache, recorded = stage.forward(x, pasts[k])
      if t >= k + 1:
        new_pasts[k] = recorded
      if k == num_stages - 1:
        delta = _softmax_grad(y, labels[:, None]) * (t >= num_stages)
      else:
        delta = grads[k]
      if k < replay_modules:
        old_x, old_pasts = held[k][0]
        cache = stage.forward(old_x, old_pasts)[1]
        held[k] = held[k][1:] + [(x, pasts[k])]
      emitted, param_grads, _ = stage.backward(cache, delta, fold=True)
      for acc, g in zip(sums[k], param_grads):
        acc += g
      if k + 1 < num_stages:
        new_inputs[k + 1] = y
      if k > 0:
        new_grads[k - 1] = emitted
    inputs = new_inputs
    grads = new_grads[:-1] + [None]
    pasts = new_pasts
  terms = batch * (num_frames - num_stages + 1)
  return [g / terms for acc in sums for g in acc]
