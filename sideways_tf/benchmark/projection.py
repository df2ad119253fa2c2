"""Projected depth-parallel speed-up on D devices, from measured stage times.

A Sideways tick on D devices (module groups cut to equal measured time) lasts

    tick(D) = max_g compute_g + max_cut bytes_cut / bandwidth

where compute_g is the summed ``Pipeline.stage_tick_seconds`` of group g and
bytes_cut is what crosses a cut every tick: the activation going up and the
gradient of the same shape coming down (B frames each; on full-duplex links
they travel at once, so one activation's bytes set the time). Transfers are
taken as not overlapped with compute (an upper bound on their cost). The
speed-up is sum_k t_k / tick(D). GPipe moves the same bytes per frame (one
direction per phase) and adds its bubble (K-1)/(M+K-1).

``python -m sideways_tf.benchmark.projection`` prints the markdown table of
docs/scaling.md.
"""

from __future__ import annotations

import sys
from typing import Dict, List, Sequence

import numpy as np

# Unidirectional bandwidths assumed, bytes/s (nominal; real throughput is
# lower, which only makes communication matter sooner).
BANDWIDTHS = {
    "PCIe 4.0 x16 (25 GB/s)": 25e9,
    "NVLink 3, A100 (300 GB/s)": 300e9,
}


def boundary_bytes(pipeline, frame_shape, batch_size: int,
                   dtype="float32") -> List[int]:
  """Bytes of the activation stage k sends up per tick, k = 0..L-2."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shapes = pipeline._ensure_built(tuple(frame_shape), tf.as_dtype(dtype))  # pylint: disable=protected-access
  return [int(batch_size * np.prod(s.output_shape) * s.output_dtype.size)
          for s in shapes[:-1]]


def project(stage_s: Sequence[float], cut_bytes: Sequence[int],
            num_devices: int, bandwidths: Dict[str, float] = None) -> dict:
  """Speed-up on `num_devices` of the modules with these times and bytes."""
  from sideways_tf.models.zoo import balanced_split  # pylint: disable=g-import-not-at-top
  bandwidths = BANDWIDTHS if bandwidths is None else bandwidths
  stage_s = [float(t) for t in stage_s]
  if num_devices > len(stage_s):
    raise ValueError(f"{len(stage_s)} modules cannot fill {num_devices} "
                     "devices")
  sizes = balanced_split([max(1, int(t * 1e9)) for t in stage_s], num_devices)
  ends = np.cumsum(sizes)
  groups = [sum(stage_s[e - s:e]) for s, e in zip(sizes, ends)]
  cuts = [int(cut_bytes[e - 1]) for e in ends[:-1]]
  compute = max(groups)
  out = {"devices": num_devices, "sizes": [int(s) for s in sizes],
         "group_s": groups, "max_group_s": compute,
         "max_cut_bytes": max(cuts) if cuts else 0,
         "compute_bound_speedup": sum(stage_s) / compute, "by_link": {}}
  for name, bw in bandwidths.items():
    transfer = out["max_cut_bytes"] / bw
    out["by_link"][name] = {
        "transfer_s": transfer,
        "speedup": sum(stage_s) / (compute + transfer),
        # A device this many times faster than the one measured would spend
        # as long moving a tick's bytes as computing it.
        "break_even_device_speedup": (compute / transfer if transfer
                                      else float("inf"))}
  return out


def markdown(name: str, stage_s, cut_bytes, devices=(2, 4, 8)) -> str:
  lines = [
      f"`{name}`: {len(stage_s)} modules, tick ms "
      f"{[round(t * 1e3, 3) for t in stage_s]}, activation MB per cut "
      f"{[round(b / 1e6, 3) for b in cut_bytes]}.", "",
      "| devices | modules per device | max device ms / tick | bytes per "
      "tick on the busiest link | compute-bound speed-up | " + " | ".join(
          f"speed-up, {n} | break-even device speed-up, {n}"
          for n in BANDWIDTHS) + " |",
      "|---|---|---|---|---|" + "---|---|" * len(BANDWIDTHS)]
  for d in devices:
    if d > len(stage_s):
      continue
    p = project(stage_s, cut_bytes, d)
    cells = [str(d), str(p["sizes"]), f"{p['max_group_s'] * 1e3:.3f}",
             f"{p['max_cut_bytes'] / 1e6:.2f} MB",
             f"{p['compute_bound_speedup']:.2f}x"]
    for n in BANDWIDTHS:
      link = p["by_link"][n]
      cells += [f"{link['speedup']:.2f}x",
                f"{link['break_even_device_speedup']:.0f}x"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  """Measures the zoo models named in argv (default frame_cnn, vgg8)."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import sideways_tf  # pylint: disable=g-import-not-at-top
  from sideways_tf import models  # pylint: disable=g-import-not-at-top
  batch, size, frames_t = 8, 64, 16
  specs = {"frame_cnn": dict(num_modules=4),
           "vgg8": dict(granularity="layer", width=16, norm="group")}
  for name in argv[1:] or list(specs):
    keras.utils.set_random_seed(0)
    pipe = sideways_tf.Pipeline(models.MODELS[name](num_classes=10,
                                                    **specs[name]))
    frames = tf.random.uniform((batch, frames_t, size, size, 3))
    labels = tf.zeros([batch], tf.int32)
    stage_s = pipe.stage_tick_seconds(frames, labels, repeats=3,
                                      ticks_per_call=8)
    cut = boundary_bytes(pipe, (size, size, 3), batch)
    print(f"{name} ({size}x{size}, B = {batch}):\n")
    print(markdown(name, stage_s, cut), flush=True)


if __name__ == "__main__":
  main(sys.argv)
