"""What replay costs: Sideways train steps with `replay_modules` = 0..L-1
against BP, alternating in one process on the same model, batch and clip;
and, for L >= 3, the same with a Skip-Sideways skip from stage 0 into 2.

Replay (docs/engine.md) recomputes each replayed module once more per tick
(with skips, once per path lag), at the stored input its gradient belongs
to, so its cost is a fraction of a forward pass per replayed module; this
figure measures that fraction. ``replay_modules`` = L-1 is
``algorithm="pipelined_bp"``.

Recompute or stash (:func:`stash_cost`): could a replayed module keep what
its backward needs instead of recomputing it? Per module below the top, the
ms per tick of its plain tick (forward and backward at one input: the
floor any stash that avoids recomputing could reach), of its replay tick
(the engine's: the forward again at the stored input) and of a per-layer
stash (every layer's input kept for the lag, one tape per layer at its
stored input: the only generic way TensorFlow offers, since a tape's
gradient is built from ops recorded in the same loop iteration and reads
those ops' own outputs), with the floats each keeps per stored frame.
(Not from ``Pipeline.stage_tick_seconds``: there a replayed module's
forward at the new input feeds nothing, so TensorFlow may prune it; its
replay ticks timed no slower than its plain ones.)
"""

from __future__ import annotations

from typing import Dict

from sideways_tf.benchmark.common import BenchmarkConfig
from sideways_tf.benchmark.common import alternating_rates
from sideways_tf.benchmark.common import build_stages
from sideways_tf.benchmark.common import log
from sideways_tf.benchmark.common import make_clip


SKIPS = "2:0"  # the skip rows' skip (config.skips syntax): stage 0 into 2


def variants(num_modules: int) -> Dict[str, tuple]:
  """name -> (algorithm, replay_modules, skips): 'bp', then 'replay_0'
  (plain Sideways) .. 'replay_{L-1}'; for L >= 3 the skip model's BP, plain
  Sideways and replay of every module below the top."""
  table = {"bp": ("bp", 0, ""), **{f"replay_{n}": ("sideways", n, "")
                                   for n in range(num_modules)}}
  if num_modules >= 3:
    table.update({"skip_bp": ("bp", 0, SKIPS),
                  "skip_replay_0": ("sideways", 0, SKIPS),
                  f"skip_replay_{num_modules - 1}": ("sideways",
                                                     num_modules - 1, SKIPS)})
  return table


def replay_cost(config: BenchmarkConfig) -> Dict[str, dict]:
  """Frames/s of each variant and its ratio to plain Sideways and to BP."""
  import keras  # pylint: disable=g-import-not-at-top
  import sideways_tf  # pylint: disable=g-import-not-at-top
  from sideways_tf.training.builder import parse_skips  # pylint: disable=g-import-not-at-top
  frames, labels = make_clip(config)
  steps, settings = {}, variants(config.num_modules)
  for name, (algorithm, replay, skips) in settings.items():
    # Same initial weights for every variant: the same seed.
    pipeline = sideways_tf.Pipeline(build_stages(config, seed=0),
                                    skips=parse_skips(skips),
                                    replay_modules=replay)
    trainer = sideways_tf.Trainer(pipeline, keras.optimizers.SGD(1e-3),
                                  algorithm)
    steps[name] = lambda t=trainer: t.train_step(frames, labels)
  log(f"replay cost: {', '.join(steps)}, {config.repeats} alternating "
      f"repetitions, B={config.batch_size} T={config.num_frames} "
      f"{config.image_size}x{config.image_size}x{config.channels}, "
      f"L={config.num_modules}")
  _, fig = alternating_rates(steps, config)
  for name, row in fig.items():
    row["algorithm"], row["replay_modules"], row["skips"] = settings[name]
    prefix = "skip_" if row["skips"] else ""  # ratios within one model
    row["vs_plain_sideways"] = (row["frames_per_s"] /
                                fig[prefix + "replay_0"]["frames_per_s"])
    row["vs_bp"] = row["frames_per_s"] / fig[prefix + "bp"]["frames_per_s"]
    log(f"  {name}: {row['frames_per_s']:.0f} frames/s, "
        f"{row['vs_plain_sideways']:.2f}x plain Sideways, "
        f"{row['vs_bp']:.2f}x BP")
  return dict(variants=fig, stash=stash_cost(config),
              num_modules=config.num_modules,
              frames_per_step=config.batch_size * config.num_frames)


def stash_cost(config: BenchmarkConfig) -> Dict[str, list]:
  """Per module below the top: ms per tick plain, replayed and with a
  per-layer stash, and the floats per frame the replay and the stash keep.

  All three run in one harness (:func:`_seconds_per_tick`): a
  ``tf.while_loop`` of ticks at successive inputs, each tick's outputs and
  gradients consumed (so no forward is pruned away) and the stored inputs
  shifted as the engine shifts its histories. The plain and the replay tick
  are the engine's own (``SidewaysModule.tick`` and ``replay_tick``); the
  per-layer stash is this figure's probe, not an engine option.
  """
  import sideways_tf  # pylint: disable=g-import-not-at-top
  frames, labels = make_clip(config)
  num_modules = config.num_modules
  plain = sideways_tf.Pipeline(build_stages(config, seed=0))
  replayed = sideways_tf.Pipeline(plain.stages,
                                  replay_modules=num_modules - 1)
  replayed.prepare_inputs(frames, labels)  # builds, allocates the buffers
  out = {"lags": [2 * (num_modules - 1 - k) for k in range(num_modules - 1)],
         "plain_ms": [], "replay_ms": [], "stash_ms": [], "replay_floats": [],
         "stash_floats": []}
  for k, module in enumerate(replayed.modules[:-1]):
    row = _module_stash_cost(config, k, plain.modules[k], module,
                             out["lags"][k])
    for key, value in row.items():
      out[key].append(value)
    log(f"  module {k + 1}: plain {row['plain_ms']:.2f} ms, replay "
        f"{row['replay_ms']:.2f} ms, per-layer stash "
        f"{row['stash_ms']:.2f} ms per tick; "
        f"{row['stash_floats'] / row['replay_floats']:.1f}x the floats "
        f"per stored frame")
  return out


def _module_stash_cost(config, k, plain_module, module, lag) -> dict:
  """Module k's row of :func:`stash_cost`: the plain tick of
  `plain_module`, the replay tick of `module` (the same stage, replayed)
  and the per-layer stash, each at a random input and output gradient."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shape = ((config.batch_size,) + config.frame_shape() if k == 0
           else tuple(module.input_buffer.shape))
  inputs = tf.random.stateless_uniform((16,) + shape, seed=(0, k))
  gradient = tf.random.stateless_uniform(module.gradient_buffer.shape,
                                         seed=(1, k))
  layers = list(getattr(module.stage, "layers", [module.stage]))
  layer_shapes = _layer_input_shapes(layers, shape)

  def plain_tick(x, held):
    del held
    result = plain_module.tick(x, output_gradient=gradient, training=True)
    return result.outputs, [], _grads(result.parameter_gradients,
                                       result.emitted_gradient)

  def replay_tick(x, held):
    result = module.replay_tick(x, [], [held], [gradient], training=True)
    return result.outputs, [x], _grads(result.parameter_gradients,
                                       result.emitted_gradients[0])

  def stash_tick(x, held):
    return _per_layer_stash_tick(layers, x, held, gradient, module.is_first)

  row = {f"{name}_ms": 1e3 * _seconds_per_tick(tick, inputs, held, lag,
                                               config.repeats)
         for name, tick, held in (("plain", plain_tick, []),
                                  ("replay", replay_tick, [shape]),
                                  ("stash", stash_tick, layer_shapes))}
  row["replay_floats"] = int(np.prod(shape[1:]))
  row["stash_floats"] = int(sum(np.prod(s[1:]) for s in layer_shapes))
  return row


def _grads(parameter_gradients, emitted):
  return list(parameter_gradients) + ([] if emitted is None else [emitted])


def _layer_input_shapes(layers, shape) -> list:
  shapes = []
  for layer in layers:
    shapes.append(tuple(shape))
    shape = layer.compute_output_shape(tuple(shape))
  return shapes


def _per_layer_stash_tick(layers, x, held, output_gradient, first: bool):
  """Forward at `x` keeping every layer's input; backward at the held
  inputs (`held[i]`: layer i's input `lag` ticks ago), one tape per layer:
  each tape recomputes its layer, whose gradient reads the layer's outputs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  kept = []
  for layer in layers:
    kept.append(x)
    x = layer(x, training=True)
  gradient, grads = output_gradient, []
  for i in reversed(range(len(layers))):
    layer, old = layers[i], held[i]
    with tf.GradientTape() as tape:
      tape.watch(old)
      y = layer(old, training=True)
    wanted = ([old] if i or not first else []) + list(
        layer.trainable_variables)
    parts = tape.gradient(
        y, wanted, output_gradients=gradient,
        unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if i or not first:
      gradient = parts.pop(0)
    grads = parts + grads
  return x, kept, grads + ([] if first else [gradient])


def _seconds_per_tick(tick, inputs, held_shapes, lag: int,
                      repeats: int) -> float:
  """Median seconds per tick of `tick(x, held) -> (outputs, kept, grads)`
  over the ticks of `inputs` ([ticks, ...]): `held` are the stored inputs
  of `lag` ticks ago, `kept` joins the stores (oldest leaves), and the
  outputs and gradients are summed into the loop state."""
  import time  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  num_ticks = int(inputs.shape[0])

  def body(t, stores, total):
    outputs, kept, grads = tick(inputs[t], [s[0] for s in stores])
    stores = [tf.concat([s[1:], x[None]], 0) for s, x in zip(stores, kept)]
    total += tf.add_n([tf.reduce_sum(g) for g in grads] +
                      [tf.reduce_sum(outputs) * 1e-30])
    return t + 1, stores, total

  def run():
    stores = [tf.zeros((lag,) + tuple(s)) for s in held_shapes]
    return tf.while_loop(lambda t, *_: t < num_ticks, body,
                         (tf.constant(0), stores, tf.constant(0.0)))[2]

  compiled = tf.function(run, autograph=False)
  compiled().numpy()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    compiled().numpy()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) / num_ticks


def markdown(fig: dict) -> list:
  """The section of docs/benchmarks.md."""
  if not fig:
    return []
  lines = ["", "## 7. What replay costs", "",
           "Sideways with `replay_modules` = 0 (plain) to L-1, and BP, train "
           "steps alternating on the same model, batch and clip "
           "(`sideways_tf/benchmark/replay_cost.py`). Each replayed module "
           "runs its forward once more per tick, with skips once per path "
           "lag (docs/fidelity.md, docs/skip_sideways.md). The skip rows "
           f"add a skip `{SKIPS}` to the same model; their ratios are to "
           "the skip model's plain Sideways and BP.", "",
           "| variant | frames/s | × plain Sideways | × BP |",
           "|---|---|---|---|"]
  for row in fig["variants"].values():
    label = ("BP" if row["algorithm"] == "bp" else
             f"Sideways, replay_modules={row['replay_modules']}")
    if row["algorithm"] != "bp" and row["replay_modules"] == fig.get(
        "num_modules", 0) - 1:
      label += " (= pipelined_bp)"
    if row.get("skips"):
      label = f"skips {row['skips']}: {label}"
    lines.append(f"| {label} | {row['frames_per_s']:.0f} | "
                 f"{row['vs_plain_sideways']:.2f} | {row['vs_bp']:.2f} |")
  return lines + _stash_markdown(fig.get("stash"))


def _stash_markdown(stash) -> list:
  if not stash:
    return []
  lines = ["", "Recompute or stash, per module below the top "
           "(`replay_cost.stash_cost`): ms per tick of the plain tick "
           "(no recomputation: the floor of any stash), the replay tick "
           "(recomputes the forward at the stored input) and a per-layer "
           "stash (every layer's input kept, one tape per layer: what "
           "TensorFlow's tape allows), and the floats each keeps per stored "
           "frame (× the lag 2(L-k) × B).", "",
           "| module | lag | plain ms | replay ms | per-layer stash ms | "
           "replay floats/frame | stash floats/frame |",
           "|---|---|---|---|---|---|---|"]
  for k, lag in enumerate(stash["lags"]):
    lines.append(
        f"| {k + 1} | {lag} | {stash['plain_ms'][k]:.2f} | "
        f"{stash['replay_ms'][k]:.2f} | {stash['stash_ms'][k]:.2f} | "
        f"{stash['replay_floats'][k]} | {stash['stash_floats'][k]} |")
  return lines
