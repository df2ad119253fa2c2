"""A NumPy reference of Skip-Sideways and of BP with skips (float64).

Written from the rule in docs/skip_sideways.md, independently of the engine:
stages are NumPy layers with a hand-written backward pass, the schedule is a
plain Python loop over ticks. Used by tests/test_skip_sideways.py.

Stages (each mirrors a Keras stage, see `keras_stage`):
* ``Dense(w, b, tanh)``: x @ w + b, then tanh (or linear);
* ``Conv(w, b, pool)``: 3x3 "same" convolution, tanh, then a 2x2 average pool
  (``pool="avg"``), a global average pool (``pool="global"``) or nothing;
* ``Head(w, b)``: global average pool then a linear layer (the top).

The skip from stage j into stage k is delayed by `delay(k, j)` ticks: 1 in
the default (unaligned) rule, k - j when aligned (docs/skip_sideways.md).
"""

from __future__ import annotations

import keras
import numpy as np


def _tanh_grad(y, g):
  return g * (1.0 - y ** 2)


class Dense:
  def __init__(self, w, b, tanh=True):
    self.params, self.tanh = [w, b], tanh

  def forward(self, x):
    y = x @ self.params[0] + self.params[1]
    y = np.tanh(y) if self.tanh else y
    return y, (x, y)

  def backward(self, cache, g):
    x, y = cache
    g = _tanh_grad(y, g) if self.tanh else g
    return g @ self.params[0].T, [x.T @ g, g.sum(0)]


def _conv(x, w):
  height, width = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(np.einsum("bhwc,co->bhwo",
                       padded[:, i:i + height, j:j + width], w[i, j])
             for i in range(3) for j in range(3))


def _conv_backward(x, w, g):
  height, width = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  grad_w, grad_padded = np.zeros_like(w), np.zeros_like(padded)
  for i in range(3):
    for j in range(3):
      patch = padded[:, i:i + height, j:j + width]
      grad_w[i, j] = np.einsum("bhwc,bhwo->co", patch, g)
      grad_padded[:, i:i + height, j:j + width] += np.einsum(
          "bhwo,co->bhwc", g, w[i, j])
  return grad_padded[:, 1:-1, 1:-1], grad_w


def avg_pool(x, factor):
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean((2, 4))


def avg_pool_backward(g, factor):
  return np.repeat(np.repeat(g, factor, 1), factor, 2) / factor ** 2


class Conv:
  def __init__(self, w, b, pool=""):
    self.params, self.pool = [w, b], pool

  def forward(self, x):
    y = np.tanh(_conv(x, self.params[0]) + self.params[1])
    out = (avg_pool(y, 2) if self.pool == "avg" else
           y.mean((1, 2)) if self.pool == "global" else y)
    return out, (x, y)

  def backward(self, cache, g):
    x, y = cache
    if self.pool == "avg":
      g = avg_pool_backward(g, 2)
    elif self.pool == "global":
      g = np.broadcast_to(g[:, None, None, :], y.shape) / (
          y.shape[1] * y.shape[2])
    g = _tanh_grad(y, g)
    grad_x, grad_w = _conv_backward(x, self.params[0], g)
    return grad_x, [grad_w, g.sum((0, 1, 2))]


class Head:
  def __init__(self, w, b):
    self.params = [w, b]

  def forward(self, x):
    pooled = x.mean((1, 2))
    return pooled @ self.params[0] + self.params[1], (x.shape, pooled)

  def backward(self, cache, g):
    shape, pooled = cache
    grad_pooled = g @ self.params[0].T
    grad_x = np.broadcast_to(grad_pooled[:, None, None, :], shape) / (
        shape[1] * shape[2])
    return grad_x, [pooled.T @ g, g.sum(0)]


def keras_stage(stage_spec):
  """The Keras layer a reference stage mirrors (weights set by the caller)."""
  kind = stage_spec[0]
  if kind == "dense":
    _, units, tanh = stage_spec
    return keras.layers.Dense(units, activation="tanh" if tanh else None)
  if kind == "conv":
    _, filters, pool = stage_spec
    layers = [keras.layers.Conv2D(filters, 3, padding="same",
                                  activation="tanh")]
    if pool == "avg":
      layers.append(keras.layers.AveragePooling2D(2))
    elif pool == "global":
      layers.append(keras.layers.GlobalAveragePooling2D())
    return keras.Sequential(layers)
  _, units = stage_spec
  return keras.Sequential([keras.layers.GlobalAveragePooling2D(),
                           keras.layers.Dense(units)])


def numpy_stages(keras_stages, stage_specs):
  """NumPy twins (float64) of built Keras stages."""
  stages = []
  for stage, spec in zip(keras_stages, stage_specs):
    params = [np.asarray(v, np.float64) for v in stage.trainable_variables]
    if spec[0] == "dense":
      stages.append(Dense(*params, tanh=spec[2]))
    elif spec[0] == "conv":
      stages.append(Conv(*params, pool=spec[2]))
    else:
      stages.append(Head(*params))
  return stages


# ------------------------------------------------------------ the skip combine


def combine(x, skips, mode):
  """Skip feature maps pooled to x's size, then concat (channels) or add."""
  pooled, factors = [], []
  for s in skips:
    factor = s.shape[1] // x.shape[1] if x.ndim == 4 else 1
    pooled.append(avg_pool(s, factor) if factor > 1 else s)
    factors.append(factor)
  joined = (np.concatenate([x] + pooled, -1) if mode == "concat"
            else x + sum(pooled))
  return joined, (x.shape[-1], [p.shape[-1] for p in pooled], factors)


def combine_backward(cache, g, mode):
  """Gradient w.r.t. the main input and each skip input."""
  width, skip_widths, factors = cache
  if mode == "concat":
    edges = np.cumsum([width] + skip_widths)
    grad_x, parts = g[..., :width], np.split(g, edges[:-1], -1)[1:]
  else:
    grad_x, parts = g, [g] * len(skip_widths)
  return grad_x, [avg_pool_backward(p, f) if f > 1 else p
                  for p, f in zip(parts, factors)]


def delay(k, j, align):
  """Ticks between stage j emitting an output and stage k combining it."""
  return k - j if align else 1


def offset(k, j, align):
  """Stage k combines its main input of frame s with stage j's of s+offset."""
  return k - j - delay(k, j, align)


def _softmax_grad(logits, labels):
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return p - np.eye(logits.shape[-1])[labels]


def _sources(skips, num_stages):
  return [sorted(skips.get(k, [])) for k in range(num_stages)]


def _probe(stages, frame, sources, mode):
  """Zero outputs of every stage (their shapes), from one forward pass."""
  outputs = []
  for k, stage in enumerate(stages):
    x = frame if k == 0 else outputs[k - 1]
    joined, _ = combine(x, [outputs[j] for j in sources[k]], mode)
    outputs.append(stage.forward(joined)[0])
  return [np.zeros_like(y) for y in outputs]


# ------------------------------------------------------------------ Sideways


def sideways(stages, frames, labels, skips, mode="concat", align=False):
  """Skip-Sideways clip gradient: every stage reads the buffers of tick t-1
  (a skip's buffer of tick t-delay); the gradient w.r.t. a skip input joins
  the source's gradient buffer for the next tick."""
  batch, num_frames = frames.shape[:2]
  num_stages = len(stages)
  sources = _sources(skips, num_stages)
  zeros = _probe(stages, frames[:, 0], sources, mode)
  inputs = [None] + [z.copy() for z in zeros[:-1]]
  grads = [z.copy() for z in zeros]   # d_k; the top's is unused
  history = [[z.copy() for _ in range(num_frames + num_stages)]
             for z in zeros]          # history[j][t] = y_j of tick t
  sums = [[np.zeros_like(p) for p in s.params] for s in stages]
  for t in range(1, num_frames + 1):
    outputs, emitted, skip_grads = [], [None] * num_stages, {}
    for k, stage in enumerate(stages):
      x = frames[:, t - 1] if k == 0 else inputs[k]
      skip_inputs = [history[j][t - delay(k, j, align)] if
                     t - delay(k, j, align) >= 1 else zeros[j]
                     for j in sources[k]]
      joined, combine_cache = combine(x, skip_inputs, mode)
      y, cache = stage.forward(joined)
      outputs.append(y)
      if k == num_stages - 1:
        delta = _softmax_grad(y, labels) * (t >= num_stages)
      else:
        delta = grads[k]
      grad_joined, param_grads = stage.backward(cache, delta)
      for acc, g in zip(sums[k], param_grads):
        acc += g
      emitted[k], skip_parts = combine_backward(combine_cache, grad_joined,
                                                mode)
      for j, g in zip(sources[k], skip_parts):
        skip_grads.setdefault(j, []).append(g)
    for k in range(num_stages):
      history[k][t] = outputs[k]
    inputs = [None] + outputs[:-1]
    grads = [emitted[k + 1] + sum(skip_grads.get(k, []))
             for k in range(num_stages - 1)] + [None]
  terms = batch * (num_frames - num_stages + 1)
  return [g / terms for acc in sums for g in acc]


# ------------------------------------------------------------------------ BP


def receptive_depth(skips, num_stages, align=False):
  sources, depth = _sources(skips, num_stages), [0] * num_stages
  for k in range(1, num_stages):
    depth[k] = max([depth[k - 1]] + [depth[j] + offset(k, j, align)
                                     for j in sources[k]])
  return depth[-1]


def bp(stages, frames, labels, skips, mode="concat", align=False):
  """Exact gradient of the mean loss over the T-D frames whose inputs all lie
  in the clip, by backprop through the model unrolled over frames."""
  batch, num_frames = frames.shape[:2]
  num_stages = len(stages)
  sources = _sources(skips, num_stages)
  depth = receptive_depth(skips, num_stages, align)
  padded = np.concatenate([frames, np.zeros_like(frames[:, :depth])], 1)
  total = num_frames + depth
  outputs = [[None] * total for _ in stages]
  caches = [[None] * total for _ in stages]
  for k, stage in enumerate(stages):
    for s in range(total):
      x = padded[:, s] if k == 0 else outputs[k - 1][s]
      skip_inputs = [outputs[j][s + offset(k, j, align)]
                     if s + offset(k, j, align) < total
                     else np.zeros_like(outputs[j][0]) for j in sources[k]]
      joined, combine_cache = combine(x, skip_inputs, mode)
      outputs[k][s], cache = stage.forward(joined)
      caches[k][s] = (cache, combine_cache)
  valid = num_frames - depth
  grad_out = [[np.zeros_like(y) for y in outs] for outs in outputs]
  for s in range(valid):
    grad_out[-1][s] = _softmax_grad(outputs[-1][s], labels)
  sums = [[np.zeros_like(p) for p in s.params] for s in stages]
  for k in reversed(range(num_stages)):  # every consumer of y_k is above k
    for s in range(total):
      if not grad_out[k][s].any():
        continue
      cache, combine_cache = caches[k][s]
      grad_joined, param_grads = stages[k].backward(cache, grad_out[k][s])
      for acc, g in zip(sums[k], param_grads):
        acc += g
      grad_x, skip_parts = combine_backward(combine_cache, grad_joined, mode)
      if k > 0:
        grad_out[k - 1][s] += grad_x
      for j, g in zip(sources[k], skip_parts):
        grad_out[j][s + offset(k, j, align)] += g
  return [g / (batch * valid) for acc in sums for g in acc]


# ---------------------------------------------------------- static clips


def static_sideways(stages, frame, labels, skips, num_frames, mode="concat"):
  """What Sideways must give on a clip of `num_frames` copies of `frame`.

  Backprop through one frame, with every gradient tagged by the number of
  hops h it took from the top; a gradient that took h hops reaches a stage
  at tick t from the loss of tick t-h, so it counts in T-L+1-h ticks of the
  clip. Returns (Sideways clip gradient, BP clip gradient).
  """
  num_stages = len(stages)
  sources = _sources(skips, num_stages)
  outputs, caches = [], []
  for k, stage in enumerate(stages):
    x = frame if k == 0 else outputs[k - 1]
    joined, combine_cache = combine(x, [outputs[j] for j in sources[k]], mode)
    y, cache = stage.forward(joined)
    outputs.append(y)
    caches.append((cache, combine_cache))
  by_hops = [dict() for _ in stages]  # gradient w.r.t. y_k by hop count
  by_hops[-1][0] = _softmax_grad(outputs[-1], labels)
  side = [[np.zeros_like(p) for p in s.params] for s in stages]
  exact = [[np.zeros_like(p) for p in s.params] for s in stages]
  valid = num_frames - num_stages + 1
  for k in reversed(range(num_stages)):
    for hops, g in by_hops[k].items():
      cache, combine_cache = caches[k]
      grad_joined, param_grads = stages[k].backward(cache, g)
      weight = max(valid - hops, 0) / valid
      for s_acc, e_acc, pg in zip(side[k], exact[k], param_grads):
        s_acc += weight * pg
        e_acc += pg
      grad_x, skip_parts = combine_backward(combine_cache, grad_joined, mode)
      targets = ([k - 1] if k > 0 else []) + list(sources[k])
      for j, part in zip(targets, ([grad_x] if k > 0 else []) + skip_parts):
        by_hops[j][hops + 1] = by_hops[j].get(hops + 1, 0) + part
  batch = frame.shape[0]
  return ([g / batch for acc in side for g in acc],
          [g / batch for acc in exact for g in acc])
