"""Tiny generated videos for the data-layer tests (PyAV, in tmp_path)."""

import pathlib

import av
import ml_collections
import numpy as np
import pytest

VIDEO_FRAMES = 12
CLASSES = ("class_a", "class_b", "class_c")
# The stored value of frame i: a uniform grey that survives the codecs.
FRAME_VALUE_OFFSET, FRAME_VALUE_STEP = 10, 20


def write_video(path, num_frames, height=24, width=32, codec="mpeg4",
                image_of=None):
  """Frame i is `image_of(i)` (uint8 [height, width, 3]); by default a
  uniform grey of value 10 + 20 i (frame_index recovers i)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), "w") as container:
    stream = container.add_stream(codec, rate=25)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if codec == "mpeg4":
      stream.options = {"qscale": "1"}
    for index in range(num_frames):
      image = (image_of(index) if image_of else np.full(
          (height, width, 3), FRAME_VALUE_OFFSET + FRAME_VALUE_STEP * index,
          np.uint8))
      for packet in stream.encode(
          av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def frame_index(frames):
  """[..., H, W, C] float frames in [0, 1] -> [...] stored frame indices."""
  mean = np.asarray(frames).mean(axis=(-3, -2, -1)) * 255.0
  return np.round((mean - FRAME_VALUE_OFFSET) / FRAME_VALUE_STEP).astype(int)


def make_video_tree(tmp_path):
  """3 classes x 3 good videos (.avi, .mp4, .mkv) + broken, empty, short.

  UCF101-style lists (tmp_path/lists) put video 0 of each class in test, the
  rest in train. Returns the videos' root.
  """
  root = tmp_path / "videos"
  for class_name in CLASSES:
    for index, extension in enumerate(("avi", "mp4", "mkv")):
      codec = "libx264" if extension == "mp4" else "mpeg4"
      write_video(root / class_name / f"{class_name}_{index}.{extension}",
                  VIDEO_FRAMES, codec=codec)
  (root / "class_a" / "broken.avi").write_bytes(
      np.random.default_rng(0).bytes(4096))
  (root / "class_b" / "empty.avi").write_bytes(b"")
  write_video(root / "class_c" / "short.avi", 2)
  (root / "class_a" / "notes.txt").write_text("not a video")
  lists = tmp_path / "lists"
  lists.mkdir()
  train, test = [], []
  for class_name in CLASSES:
    for index, extension in enumerate(("avi", "mp4", "mkv")):
      name = f"{class_name}/{class_name}_{index}.{extension}"
      (test if index == 0 else train).append(name)
  train += ["class_a/broken.avi", "class_b/empty.avi", "class_c/short.avi"]
  (lists / "trainlist01.txt").write_text(
      "".join(f"{name} 1\n" for name in train))
  (lists / "testlist01.txt").write_text("".join(f"{name}\n" for name in test))
  return root


@pytest.fixture
def video_tree(tmp_path):
  return make_video_tree(tmp_path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """The video tree prepared once (official lists, 2 workers) per module."""
  from sideways_tf.data import video_folder
  tmp_path = tmp_path_factory.mktemp("prepared")
  root = make_video_tree(tmp_path)
  output_dir = tmp_path / "records"
  summary = video_folder.prepare(
      root, output_dir, video_folder.PrepareOptions(
          short_side=16, videos_per_shard=2,
          split_file=str(tmp_path / "lists" / "trainlist01.txt")),
      num_workers=2, progress=False)
  return output_dir, summary


def folder_config(path, **overrides):
  """config.data for a prepared folder: 4 frames, stride 2, 16 px."""
  config = ml_collections.ConfigDict(dict(
      name="video_folder", path=str(path), label_key="label", num_frames=4,
      temporal_stride=2, image_size=16, num_classes=len(CLASSES),
      data_dir="", short_video="loop", eval_clips=1, crop_fraction=1.0,
      random_flip=True, shuffle_buffer=0, train_split="train",
      eval_split=""))
  config.update(overrides)
  return config
