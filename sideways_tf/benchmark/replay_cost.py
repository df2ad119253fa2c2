"""What replay costs: Sideways train steps with `replay_modules` = 0..L-1
against BP, alternating in one process on the same model, batch and clip;
and, for L >= 3, the same with a Skip-Sideways skip from stage 0 into 2.

Replay (docs/engine.md) recomputes each replayed module once more per tick
(with skips, once per path lag), at the stored input its gradient belongs
to, so its cost is a fraction of a forward pass per replayed module; this
figure measures that fraction.
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
  return dict(variants=fig,
              frames_per_step=config.batch_size * config.num_frames)


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
    if row.get("skips"):
      label = f"skips {row['skips']}: {label}"
    lines.append(f"| {label} | {row['frames_per_s']:.0f} | "
                 f"{row['vs_plain_sideways']:.2f} | {row['vs_bp']:.2f} |")
  return lines
