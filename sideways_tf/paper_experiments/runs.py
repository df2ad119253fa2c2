"""The paper's experiments at reduced scale: Sideways vs BP, side by side.

Each experiment is a list of training runs (`train_lib.train`, the same loop
as bin/train) with config overrides; results are read back from each run's
TensorBoard logs and summarised as JSON, a markdown table and PNG plots.

  bin/experiments --only=convergence,smoothness,depth,skip --outdir=DIR
  bin/experiments --base_config=configs/ucf101_vgg8.py --steps=30000  # paper

Reduced scale = configs/default.py (the synthetic set on a CPU); a GPU config
as `--base_config` with more `--steps` runs the same experiments at scale.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
import time
from typing import Dict, List

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from sideways_tf.configs import default
from sideways_tf import data as data_lib
from sideways_tf.run import user_errors
from sideways_tf.run.files import atomic_write_text
from sideways_tf.training import train_lib
from sideways_tf.data import clips

# The paper compares these two (GPipe is BP's gradient: docs/scaling.md).
ALGORITHMS = ("sideways", "bp")

EXPERIMENTS = ("convergence", "smoothness", "depth", "skip")


def load_config_file(path) -> object:
  """get_config() of a config file (configs/*.py)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise ValueError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def base_config(steps: int, seed: int = 0, config_path: str = ""):
  config = load_config_file(config_path) if config_path else default.get_config()
  config.seed = seed
  config.train.num_steps = steps
  config.train.eval_every = max(steps // 4, 1)
  config.train.log_every = max(steps // 20, 1)
  config.train.checkpoint_every = steps
  config.train.fidelity_every = max(steps // 4, 1)
  config.train.stage_time_every = 0
  return config


def runs_for(name: str, steps: int) -> List[Dict]:
  """(label, overrides) of each run of an experiment."""
  runs = []
  if name == "convergence":
    for seed in (0, 1, 2):
      for algorithm in ALGORITHMS:
        runs.append(dict(label=f"{algorithm}/seed{seed}", seed=seed,
                         algorithm=algorithm))
  elif name == "smoothness":
    for stride in (1, 2, 4, 8):
      for algorithm in ALGORITHMS:
        runs.append(dict(label=f"{algorithm}/stride{stride}",
                         algorithm=algorithm, **{"data.temporal_stride": stride}))
  elif name == "depth":
    for modules in (2, 4, 8):
      for algorithm in ALGORITHMS:
        runs.append(dict(label=f"{algorithm}/L{modules}", algorithm=algorithm,
                         model=dict(name="vgg8", granularity=modules,
                                    num_modules=modules, width=8,
                                    norm="none"),
                         **{"model.granularity": modules,
                            "model.num_modules": modules}))
  elif name == "skip":
    for label_key in ("motion", "appearance"):
      for algorithm, skips in (("sideways", "2:0"), ("sideways", ""),
                               ("bp", "2:0"), ("bp", "")):
        kind = "skip" if skips else "plain"
        runs.append(dict(label=f"{label_key}/{algorithm}-{kind}",
                         algorithm=algorithm, skips=skips,
                         **{"data.label_key": label_key, "data.speed": 2.0}))
  else:
    raise ValueError(f"unknown experiment {name!r}; expected one of "
                     f"{EXPERIMENTS}")
  for run in runs:
    run["steps"] = steps
  return runs


def make_config(run: Dict, config_path: str = ""):
  """The run's config: the base config plus the run's overrides.

  A base config that already uses VGG-8 (the GPU configs) keeps its model and
  devices in the depth experiment and only changes the number of modules;
  the default one switches to a small VGG-8 (`run["model"]`).
  """
  config = base_config(run["steps"], run.get("seed", 0), config_path)
  config.algorithm = run["algorithm"]
  for key, value in run.items():
    if key.startswith("data.") and (config.data.name == "synthetic" or
                                    key == "data.temporal_stride"):
      config.data[key[5:]] = value
  if "skips" in run:
    config.skips = run["skips"]
  if "model" in run:
    if config.model.name == "vgg8":
      config.model.granularity = str(run["model.granularity"])
      config.model.num_modules = run["model.num_modules"]
      if len(config.devices) > 1:
        config.devices = ("auto",)
    else:
      config.model = type(config.model)(run["model"])
      config.devices = ()
  return config


def scalars(logdir: pathlib.Path, tag: str):
  """[(step, value)] of a scalar written with tf.summary."""
  accumulator = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  if tag not in accumulator.Tags()["tensors"]:
    return []
  return [(e.step, float(tf.make_ndarray(e.tensor_proto)))
          for e in accumulator.Tensors(tag)]


def train_split_accuracy(config, workdir) -> float:
  """Clip accuracy on the training videos, sampled like the eval split."""
  exp = train_lib.restore_for_inference(workdir)
  source = data_lib.load_source(config.data)
  options = data_lib.clip_options(config.data, source)
  batches = clips.eval_dataset(source.train, options, config.eval.batch_size)
  return exp.trainer.evaluate(batches)["clip_accuracy"]


def run_one(run: Dict, workdir: pathlib.Path, config_path: str = "") -> Dict:
  config = make_config(run, config_path)
  started = time.time()
  summary = train_lib.train(config, workdir, overwrite=True)
  if summary.get("interrupted"):  # SIGINT/SIGTERM: saved; a rerun resumes
    sys.exit(user_errors.signal_exit_code(summary.get("signal") or 15))
  result = dict(label=run["label"], algorithm=run["algorithm"],
                test_accuracy=summary["eval_clip_accuracy"],
                test_frame_accuracy=summary["eval_frame_accuracy"],
                train_accuracy=train_split_accuracy(config, workdir),
                seconds=time.time() - started,
                curve=scalars(workdir / "eval", "eval/accuracy"))
  result["gap"] = result["train_accuracy"] - result["test_accuracy"]
  if run["algorithm"] == "sideways":
    num_modules = len(train_lib.restore_for_inference(workdir).pipeline.stages)
    result["cosine"] = {
        k: float(np.mean([v for _, v in scalars(
            workdir / "train", f"fidelity/cosine/module_{k}")] or [np.nan]))
        for k in range(1, num_modules + 1)}
  return result


def run_experiment(name: str, outdir: pathlib.Path, steps: int,
                   config_path: str = "") -> List[Dict]:
  results = []
  synthetic = base_config(steps, 0, config_path).data.name == "synthetic"
  for run in runs_for(name, steps):
    if not synthetic and run.get("data.label_key") == "motion":
      print(f"[{name}] {run['label']}: skipped (the motion label exists only "
            f"in the synthetic set)", flush=True)
      continue
    print(f"[{name}] {run['label']} ...", flush=True)
    results.append(run_one(run, outdir / "runs" / name / run["label"],
                           config_path))
  atomic_write_text(outdir / f"{name}.json",
                               json.dumps(results, indent=2))
  return results
