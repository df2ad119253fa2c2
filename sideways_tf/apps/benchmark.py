"""Sideways vs BP benchmark: writes BENCH_DIR/benchmark.json and BENCH_DIR/benchmarks.md.

  bin/benchmark                                  # the default config (slow: minutes)
  bin/benchmark --batch_size=2 --num_frames=8 --image_size=16 --doc=
  bin/benchmark --figures=throughput,stages --profile_dir=/tmp/prof
  bin/benchmark --simulate_devices=2   # every algorithm on 2 simulated devices
  bin/benchmark --simulate_devices=2 --batch_size=1 --update_every_ticks=4  # one stream, online
  bin/benchmark --simulate_devices=2 --variants=bp,dp2x1_bp --rounds=5  # ratios over 5 rounds
  bin/benchmark --figures=temporal_memory --image_size=32  # memory vs T, temporal model

With --simulate_devices=N the run is sideways_tf/benchmark/devices.py instead:
Sideways, GPipe (with/without re-materialisation), model-parallel BP and
single-device BP, each in its own process with one core per device; it writes
BENCH_DIR/simulated_devices.{json,md,png} and its table into --doc. Flags left
at their defaults take that mode's own defaults (L = N, T = 32, 5 repeats,
memory at T = 16 and 128).

Every figure times the trainer's own engine (Trainer.train_step, Pipeline);
see sideways_tf/benchmark/ and docs/performance.md.
"""

import os
import pathlib
import shlex
import sys

from sideways_tf.run import quiet

quiet.quiet_start(sys.argv)  # TensorFlow imported without its C++ start-up lines

from absl import flags

from sideways_tf.run import cli

_MODEL = flags.DEFINE_string("model", "frame_cnn",
                             "Model of sideways_tf.models.MODELS.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Frame height = width.")
_CHANNELS = flags.DEFINE_integer("channels", 3, "Frame channels.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Clips per batch (B).")
_FRAMES = flags.DEFINE_integer("num_frames", 64, "Frames per clip (T).")
_MODULES = flags.DEFINE_integer("num_modules", 4, "Sideways modules (L).")
_DEVICES = flags.DEFINE_integer(
    "num_devices", 0, "Logical CPU devices for the placement figure "
    "(0 = one per module).")
_THREADS = flags.DEFINE_integer("threads", 2,
                                "TF intra- and inter-op threads.")
_REPEATS = flags.DEFINE_integer("repeats", 7,
                                "Timed repetitions per algorithm.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
_MEMORY_FRAMES = flags.DEFINE_list(
    "memory_frames", ["16", "32", "64", "128"],
    "Clip lengths of the memory figure (one process each per algorithm).")
_TRACE_CLIPS = flags.DEFINE_integer("trace_clips", 20,
                                    "Clips of the tracing figure.")
_ZOO = flags.DEFINE_list("zoo", ["frame_cnn", "vgg8", "resnet18"],
                         "Models of the stage-balancing report.")
_ZOO_WIDTH = flags.DEFINE_integer("zoo_width", 16,
                                  "Width of vgg8/resnet18 in that report.")
_DATA_BATCHES = flags.DEFINE_integer(
    "data_batches", 20, "Batches timed for the input-pipeline figure.")
_MIXED = flags.DEFINE_bool("mixed_precision", False,
                           "Run every stage under keras mixed_bfloat16.")
_PROFILE = flags.DEFINE_string(
    "profile_dir", "", "Write a TensorBoard profiler trace of a few train "
    "steps of each algorithm here.")
_TEMPORAL_MEMORY_FRAMES = flags.DEFINE_list(
    "temporal_memory_frames", ["16", "64", "256"],
    "Clip lengths of the temporal_memory figure (a model with causal "
    "temporal layers; one process each per variant; run it with "
    "--figures=temporal_memory).")
_FIGURES = flags.DEFINE_list(
    "figures", ["throughput", "stages", "tracing", "memory", "placement",
                "balancing", "input_pipeline", "replay_cost"],
    "Figures to produce (also: temporal_memory, only when named).")
_SIMULATE = flags.DEFINE_integer(
    "simulate_devices", 0, "N > 0: measure every algorithm on N simulated "
    "devices (one core each) instead; see sideways_tf/benchmark/devices.py.")
_MICRO = flags.DEFINE_integer(
    "micro_batch_frames", 1, "--simulate_devices: GPipe frames per "
    "micro-batch (M = T / this).")
_VARIANTS = flags.DEFINE_list(
    "variants", [], "--simulate_devices: rows to run (default all of "
    "sideways, gpipe, gpipe_remat, mp_bp, bp, chunked_bp, pipelined_bp, and "
    "dp: every data-parallel split dp<R>x<N/R>_<row> of the N devices, "
    "R > 1).")
_CHUNK = flags.DEFINE_integer(
    "bp_chunk_frames", 8, "--simulate_devices: frames per chunk of the "
    "chunked_bp row.")
_UPDATE_EVERY_TICKS = flags.DEFINE_integer(
    "update_every_ticks", 0, "--simulate_devices: every row's train step is "
    "online, an optimizer step every N ticks (N-frame chunks of each clip, "
    "as bin/train --config.train.update_every_ticks=N); 0 = one step per "
    "clip. 1 <= N <= --num_frames.", lower_bound=0)
_OPTIMIZER = flags.DEFINE_string(
    "optimizer", "sgd", "--simulate_devices: the rows' Keras optimizer "
    "(config.train.optimizer's names, e.g. adam as the configs ship); its "
    "update is part of every timed step.")
_MODEL_TEMPORAL = flags.DEFINE_string(
    "model_temporal", "", "--simulate_devices: the model's temporal layers "
    "(model.temporal of the configs, e.g. 'conv:3'; docs/models.md); rows "
    "that refuse them (chunked_bp, pipelined_bp) must be left out of "
    "--variants.")
_BALANCE = flags.DEFINE_enum(
    "balance", "time", ["time", "model"], "--simulate_devices: cut the "
    "model's layers into stages of equal measured time ('time', so idle time "
    "is the schedule's), or keep the model's own modules ('model', as "
    "training with model.balance='' does).")
_SERIALISED = flags.DEFINE_bool(
    "serialised", True, "--simulate_devices: also run every row with "
    "inter-op threads 1 (its speed-up).")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1, "--simulate_devices: run every row's throughput processes "
    "(parallel and serialised) in this many rounds, the rows in order in "
    "one round and reversed in the next, against the machine's drifting "
    "load; the report gives each row's median round and every throughput "
    "ratio goal as its mean with a 95% interval over the rounds. Memory is "
    "measured once.", lower_bound=1)
_TICK_OVERHEAD = flags.DEFINE_bool(
    "tick_overhead", False, "Only measure the engine's fixed cost per tick "
    "(near-empty stages) against the default model's tick "
    "(sideways_tf/benchmark/tick_overhead.py); writes "
    "BENCH_DIR/tick_overhead.json.")
_BENCH_DIR = flags.DEFINE_string(
    "bench_dir", str(cli.PROJECT_ROOT / "workdir" / "benchmark"),
    "Where benchmark.json goes.")
_DOC = flags.DEFINE_string(
    "doc", None, "Markdown report to write (default: benchmarks.md in "
    "--bench_dir; --doc=docs/benchmarks.md updates the checkout's docs; "
    "'' = none).")


def main(argv):
  cli.start(argv)
  if _SIMULATE.value:
    return simulate_devices()
  for flag in (_UPDATE_EVERY_TICKS, _OPTIMIZER, _ROUNDS):
    if flag.present:
      raise ValueError(f"--{flag.name} is a --simulate_devices flag; add "
                       f"--simulate_devices=N")
  if _TICK_OVERHEAD.value:
    return tick_overhead()
  from sideways_tf.benchmark import common  # noqa: PLC0415
  from sideways_tf.benchmark import runner  # noqa: PLC0415
  config = common.BenchmarkConfig(
      model=_MODEL.value, image_size=_IMAGE_SIZE.value,
      channels=_CHANNELS.value, batch_size=_BATCH.value,
      num_frames=_FRAMES.value, num_modules=_MODULES.value,
      num_devices=_DEVICES.value, threads=_THREADS.value,
      repeats=_REPEATS.value, warmup=_WARMUP.value,
      memory_frames=tuple(int(t) for t in _MEMORY_FRAMES.value),
      trace_clips=_TRACE_CLIPS.value, zoo=tuple(_ZOO.value),
      zoo_width=_ZOO_WIDTH.value, data_batches=_DATA_BATCHES.value,
      mixed_precision=_MIXED.value, profile_dir=_PROFILE.value,
      figures=tuple(_FIGURES.value),
      temporal_memory_frames=tuple(int(t) for t in
                                   _TEMPORAL_MEMORY_FRAMES.value))
  unknown = set(config.figures) - set(common.BenchmarkConfig().figures) - (
      set(common.OPTIONAL_FIGURES))
  if unknown:
    raise ValueError(f"unknown --figures {sorted(unknown)}")
  command = "bin/benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  doc = (str(pathlib.Path(_BENCH_DIR.value) / "benchmarks.md")
         if _DOC.value is None else _DOC.value)
  runner.run(config, _BENCH_DIR.value, doc_path=doc or None,
                command=command.strip())


def tick_overhead():
  """bin/benchmark --tick_overhead: prints and saves the figures."""
  import json  # noqa: PLC0415
  import pathlib  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415
  from sideways_tf.benchmark import tick_overhead as overhead  # noqa: PLC0415
  tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
  tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
  result = overhead.measure(repeats=_REPEATS.value)
  result["command"] = "bin/benchmark " + " ".join(
      shlex.quote(a) for a in sys.argv[1:])
  path = pathlib.Path(_BENCH_DIR.value) / "tick_overhead.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(json.dumps(result, indent=2))
  os.replace(tmp, path)
  print(f"empty-stage tick {result['empty_tick_s'] * 1e3:.3f} ms, default "
        f"model tick {result['model_tick_s'] * 1e3:.3f} ms: ratio "
        f"{result['ratio']:.3f} (goal <= 0.05); by modules "
        f"{ {k: round(v * 1e3, 3) for k, v in result['empty_tick_s_by_modules'].items()} } ms."
        f" Wrote {path}", flush=True)


def simulate_devices():
  """bin/benchmark --simulate_devices=N (sideways_tf/benchmark/devices.py)."""
  from sideways_tf.benchmark import devices as benchmark_devices  # noqa: PLC0415
  overrides = {"num_devices": _SIMULATE.value,
               "micro_batch_frames": _MICRO.value,
               "bp_chunk_frames": _CHUNK.value,
               "serialised": _SERIALISED.value,
               "balance": "" if _BALANCE.value == "model" else "time",
               "temporal": _MODEL_TEMPORAL.value,
               "update_every_ticks": _UPDATE_EVERY_TICKS.value,
               "optimizer": _OPTIMIZER.value,
               "rounds": _ROUNDS.value}
  for name, flag in (("model", _MODEL), ("image_size", _IMAGE_SIZE),
                     ("channels", _CHANNELS), ("batch_size", _BATCH),
                     ("num_frames", _FRAMES), ("num_modules", _MODULES),
                     ("repeats", _REPEATS), ("warmup", _WARMUP)):
    if flag.present:
      overrides[name] = flag.value
  if _MEMORY_FRAMES.present:
    overrides["memory_frames"] = tuple(int(t) for t in _MEMORY_FRAMES.value
                                       if t)
  if _VARIANTS.value:
    overrides["variants"] = tuple(_VARIANTS.value)
  command = "bin/benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  benchmark_devices.run(benchmark_devices.DevicesConfig(**overrides),
                        _BENCH_DIR.value, command=command.strip(),
                        doc_path=_DOC.value or None)


def run():
  """Console-script entry point: parses the flags and runs main."""
  cli.run_app(main, __name__, __doc__)


if __name__ == "__main__":
  run()
