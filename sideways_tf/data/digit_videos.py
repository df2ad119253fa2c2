"""The moving-digits set as mp4 files in class folders, for the user path.

  output_dir/moving_digits.json          the Settings the videos were made with
  output_dir/train/<digit>/train_00000.mp4
  output_dir/test/<digit>/test_00000.mp4

The train/ and test/ folders are split folders for bin/prepare_videos, so the
instance split (test videos show unseen handwriting) survives preparation.
Files are written under a temporary name and renamed when complete; a rerun
into the same folder keeps the finished videos and writes the rest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Dict

import numpy as np

from sideways_tf.data import moving_digits

MANIFEST = "moving_digits.json"
FRAME_RATE = 25


def video_path(output_dir: pathlib.Path, settings: moving_digits.Settings,
               split: str, index: int) -> pathlib.Path:
  label = settings.class_names[index % settings.num_labels]
  return output_dir / split / label / f"{split}_{index:05d}.mp4"


def write_mp4(path: pathlib.Path, video: np.ndarray, crf: int) -> None:
  """uint8 [T, H, W, 3] -> H.264 mp4 at `path`, atomically."""
  import av  # noqa: PLC0415  (only writing needs PyAV)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  with av.open(str(temporary), "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=FRAME_RATE)
    stream.width, stream.height = video.shape[2], video.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": str(crf), "preset": "medium"}
    for frame in video:
      for packet in stream.encode(
          av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                     format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  os.replace(temporary, path)


def write_videos(settings: moving_digits.Settings, output_dir, crf: int = 17,
                 progress: bool = True) -> Dict[str, int]:
  """Writes every video of both splits; returns {"written": n, "kept": m}."""
  if not 0 <= crf <= 51:
    raise ValueError(f"crf must be in [0, 51] (H.264), got {crf}")
  output_dir = pathlib.Path(output_dir).expanduser().resolve()
  manifest = output_dir / MANIFEST
  wanted = {"settings": dataclasses.asdict(settings), "crf": crf}
  if manifest.exists():
    if json.loads(manifest.read_text()) != wanted:
      raise ValueError(
          f"{output_dir} holds moving digits made with other settings "
          f"({manifest}); use another --output_dir or delete it")
  elif output_dir.exists() and any(output_dir.iterdir()):
    raise ValueError(f"{output_dir} is not empty and has no {MANIFEST}; "
                     f"use another --output_dir")
  output_dir.mkdir(parents=True, exist_ok=True)
  temporary = manifest.with_name(f".{manifest.name}.tmp-{os.getpid()}")
  temporary.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
  os.replace(temporary, manifest)

  from tqdm import tqdm  # noqa: PLC0415
  jobs = [(split, index) for split, count in
          (("train", settings.num_train), ("test", settings.num_test))
          for index in range(count)]
  written = kept = 0
  for split, index in tqdm(jobs, desc="Writing videos", unit="video",
                           disable=not progress):
    path = video_path(output_dir, settings, split, index)
    if path.exists():
      kept += 1
      continue
    write_mp4(path, moving_digits.render_video(settings, split, index)[
        "video"], crf)
    written += 1
  return {"written": written, "kept": kept}
