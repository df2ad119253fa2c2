"""Decoding one video file with PyAV into resized frames, stored as JPEG or
raw RGB bytes (prepare's work, run in worker processes by
video_folder.prepare)."""

from __future__ import annotations

import io
import pathlib

from absl import logging


class VideoError(Exception):
  """A video that cannot be used; the message is the reason recorded."""


def decode_video(path, short_side: int = 128, num_frames_max: int = 0,
                 jpeg_quality: int = 90, storage: str = "jpeg"):
  """(bytes per frame, (height, width)) of a video file, via PyAV.

  storage "jpeg": each frame a JPEG of `jpeg_quality`; "raw": its uint8 RGB
  pixels, height x width x 3 bytes in row-major order.
  """
  import av  # noqa: PLC0415  (only preparing needs PyAV)
  from PIL import Image  # noqa: PLC0415

  path = pathlib.Path(path)
  if path.stat().st_size == 0:
    raise VideoError("empty file (0 bytes)")
  try:
    container = av.open(str(path))
  except Exception as error:  # noqa: BLE001  (any FFmpeg/IO failure)
    raise VideoError(f"cannot open: {error}") from error
  encoded = []
  size = None
  with container:
    if not container.streams.video:
      raise VideoError("no video stream")
    stream = container.streams.video[0]
    try:
      for frame in container.decode(stream):
        if size is None:
          size = _target_size(frame.height, frame.width, short_side)
        rgb = frame.to_ndarray(height=size[0], width=size[1], format="rgb24",
                               interpolation="AREA")
        if storage == "raw":
          encoded.append(rgb.tobytes())
        else:
          buffer = io.BytesIO()
          Image.fromarray(rgb).save(buffer, format="JPEG",
                                    quality=jpeg_quality)
          encoded.append(buffer.getvalue())
        if num_frames_max and len(encoded) >= num_frames_max:
          break
    except Exception as error:  # noqa: BLE001
      if not encoded:
        raise VideoError(f"cannot decode: {error}") from error
      logging.warning("%s: decoding stopped after %d frames (%s); keeping "
                      "them", path, len(encoded), error)
  if not encoded:
    raise VideoError("no decodable frame")
  return encoded, size


def _target_size(height: int, width: int, short_side: int):
  """Only ever downscale: a video already smaller keeps its size."""
  if not short_side or min(height, width) <= short_side:
    return height, width
  scale = short_side / min(height, width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def decode_task(task):
  """Worker: decode one video; never raises (a failure is a skip reason)."""
  path, options = task
  try:
    frames, size = decode_video(path, options.short_side,
                                options.num_frames_max, options.jpeg_quality,
                                options.storage)
    return {"frames": frames, "size": size}
  except VideoError as error:
    return {"error": str(error)}
  except Exception as error:  # noqa: BLE001  (never abort the whole run)
    return {"error": f"{type(error).__name__}: {error}"}
