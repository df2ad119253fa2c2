"""Figure 5b: the prepared-folder input pipeline, JPEG vs raw frame storage.

A folder of generated videos (``sideways_tf.data.throughput.write_test_videos``:
a moving gradient with a static random texture, at the benchmark's frame
size) is prepared twice by ``video_folder.prepare`` (what bin/prepare_videos
runs): once with JPEG frames (the default, quality 90) and once with raw
uint8 frames. Both are read through ``sideways_tf.data.get_datasets`` with
``configs/video_folder.py``'s data settings (random crop 0.875, flip, resize
to the frame size) at the benchmark's B and T, the two storages alternating
in rounds in one process; the runner divides each rate by the Sideways
training rate of figure 1.

The folders live under ``<bench_dir>/input_folder/<size>/`` and are kept: a
rerun with the same sizes reuses them (prepare is resumable).
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Dict

from sideways_tf.benchmark.common import BenchmarkConfig

STORAGES = ("jpeg", "raw")
NUM_VIDEOS = 16
TEXTURE = 64  # grey levels of the static random pattern


def folder_name(config: BenchmarkConfig) -> str:
  frames = video_frames(config)
  return f"s{config.image_size}_f{frames}_n{NUM_VIDEOS}_t{TEXTURE}"


def video_frames(config: BenchmarkConfig) -> int:
  """Twice a clip, so training draws clips from different starts."""
  return 2 * config.num_frames


def prepare_folders(config: BenchmarkConfig, root) -> Dict[str, dict]:
  """{storage: {"path", "bytes_per_frame", "prepare_s"}}; the videos and
  both prepared folders under `root` (reused when already complete)."""
  from sideways_tf.data import throughput  # noqa: PLC0415
  from sideways_tf.data import video_folder  # noqa: PLC0415
  root = pathlib.Path(root) / folder_name(config)
  videos = root / "videos"
  if not all((root / s / video_folder.METADATA_FILE).is_file()
             for s in STORAGES):
    # A "train" split folder: every video trains, no hash split.
    throughput.write_test_videos(videos / "train", NUM_VIDEOS,
                                 video_frames(config), config.image_size,
                                 config.image_size, texture=TEXTURE)
  folders = {}
  for storage in STORAGES:
    started = time.perf_counter()
    summary = video_folder.prepare(
        videos, root / storage, video_folder.PrepareOptions(
            short_side=config.image_size, storage=storage),
        num_workers=os.cpu_count() or 1, progress=False)
    metadata = summary["metadata"]
    frames = sum(info["num_frames"] for info in metadata["splits"].values())
    size = sum((root / storage / shard).stat().st_size
               for info in metadata["splits"].values()
               for shard in info["shards"])
    folders[storage] = {"path": str(root / storage),
                        "bytes_per_frame": size / frames,
                        "prepare_s": time.perf_counter() - started,
                        "written": summary["shards_written"] > 0}
  return folders


def data_config(config: BenchmarkConfig, path: str):
  """configs/video_folder.py's data at the benchmark's frame size and T."""
  from sideways_tf.configs import video_folder as folder_config  # noqa: PLC0415
  data = folder_config.get_config().data
  with data.unlocked():
    data.path = path
    data.image_size = config.image_size
    data.num_frames = config.num_frames
    data.eval_split = "train"  # only the train split is timed
  return data


def measure(config: BenchmarkConfig, root, rounds: int = 5) -> dict:
  """Frames/s of each storage's train batches, alternating in `rounds`.

  Each round and storage starts a fresh iterator (so the other storage's
  pipeline is not filling its buffers in the background), draws `batches`
  untimed batches (the shuffle buffer fills; the prefetched burst drains:
  the loop consumes faster than the pipeline produces), then times
  `batches` more.
  """
  import numpy as np  # noqa: PLC0415
  from sideways_tf import data  # noqa: PLC0415
  folders = prepare_folders(config, root)
  datasets = {storage: data.get_datasets(
      data_config(config, folders[storage]["path"]),
      batch_size=config.batch_size, eval_batch_size=config.batch_size,
      seed=0) for storage in STORAGES}
  batches = max(2, config.data_batches // rounds)
  seconds = {storage: [] for storage in STORAGES}
  shapes = {}
  for r in range(rounds):
    for storage in (STORAGES if r % 2 == 0 else STORAGES[::-1]):
      iterator = iter(datasets[storage].train)
      for _ in range(batches):  # untimed: fill, trace, drain the burst
        shapes[storage] = list(next(iterator)["video"].shape)
      start = time.perf_counter()
      for _ in range(batches):
        float(next(iterator)["video"][0, 0, 0, 0, 0])
      seconds[storage].append(time.perf_counter() - start)
      del iterator  # stops its background threads
  frames = batches * config.batch_size * config.num_frames
  result = {"rounds": rounds, "batches_per_round": batches,
            "frames_per_round": frames, "num_videos": NUM_VIDEOS,
            "video_frames": video_frames(config), "texture": TEXTURE,
            "data": json.loads(data_config(config, "").to_json())}
  for storage in STORAGES:
    per_round = [frames / s for s in seconds[storage]]
    result[storage] = dict(
        folders[storage], video_shape=shapes[storage],
        seconds=seconds[storage], frames_per_s_per_round=per_round,
        frames_per_s=float(np.median(per_round)))
  result["raw_over_jpeg"] = (result["raw"]["frames_per_s"] /
                             result["jpeg"]["frames_per_s"])
  return result


def with_training_rate(fig: dict, train_frames_per_s: float,
                       goal: float) -> dict:
  """Adds input / training frames/s per storage and the goal's status."""
  fig["train_frames_per_s"] = train_frames_per_s
  for storage in STORAGES:
    ratio = fig[storage]["frames_per_s"] / train_frames_per_s
    fig[storage].update(ratio=ratio, goal=goal, met=bool(ratio >= goal))
  return fig
