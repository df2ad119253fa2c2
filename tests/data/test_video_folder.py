"""Preparing a folder of videos and reading it through get_datasets."""

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import av
import numpy as np
import pytest

from sideways_tf import data
from sideways_tf.data import video_folder
from tests.data.conftest import CLASSES
from tests.data.conftest import folder_config
from tests.data.conftest import frame_index
from tests.data.conftest import VIDEO_FRAMES
from tests.data.conftest import write_video

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _all(dataset):
  videos, labels = [], []
  for batch in dataset:
    videos.append(batch["video"].numpy())
    labels.append(batch["label"].numpy())
  return np.concatenate(videos), np.concatenate(labels)


def test_metadata_counts_classes_and_skipped(prepared):
  output_dir, summary = prepared
  metadata = json.loads((output_dir / "metadata.json").read_text())
  assert metadata["class_names"] == list(CLASSES)
  assert metadata["splits"]["test"]["num_videos"] == 3
  assert metadata["splits"]["test"]["per_class"] == {c: 1 for c in CLASSES}
  # 2 good per class + the 2-frame video (kept: the loader loops it).
  assert metadata["splits"]["train"]["per_class"] == {
      "class_a": 2, "class_b": 2, "class_c": 3}
  assert metadata["splits"]["train"]["num_frames"] == 6 * VIDEO_FRAMES + 2
  reasons = {entry["path"]: entry["reason"] for entry in metadata["skipped"]}
  assert set(reasons) == {"class_a/broken.avi", "class_b/empty.avi"}
  assert "empty" in reasons["class_b/empty.avi"]
  assert "cannot open" in reasons["class_a/broken.avi"]
  assert metadata["ignored_files"] == 1  # notes.txt
  assert summary["videos_written"] == 10 and summary["videos_skipped"] == 2
  assert not list(output_dir.glob(".*tmp*"))  # no temporary file left


def test_get_datasets_shapes_labels_and_counts(prepared):
  output_dir, _ = prepared
  datasets = data.get_datasets(folder_config(output_dir), batch_size=2,
                               eval_batch_size=2, seed=0)
  assert datasets.num_classes == 3
  assert datasets.frame_shape == (16, 16, 3)
  assert datasets.class_names == list(CLASSES)
  batch = next(iter(datasets.train))
  assert batch["video"].shape == (2, 4, 16, 16, 3)
  assert batch["video"].dtype.name == "float32"
  assert batch["label"].dtype.name == "int32"
  videos, labels = _all(datasets.eval)
  assert videos.shape == (3, 4, 16, 16, 3)
  assert 0.0 <= videos.min() and videos.max() <= 1.0
  assert sorted(labels.tolist()) == [0, 1, 2]


def test_stride_and_clip_sampling(prepared):
  output_dir, _ = prepared
  datasets = data.get_datasets(folder_config(output_dir), batch_size=5,
                               eval_batch_size=3, seed=0)
  videos, _ = _all(datasets.eval)
  # 12 frames, span (4 - 1) * 2 + 1 = 7: the centred clip starts at 2.
  np.testing.assert_array_equal(frame_index(videos),
                                np.tile([2, 4, 6, 8], (3, 1)))
  starts = set()
  for batch in datasets.train.take(6):
    for indices in frame_index(batch["video"].numpy()):
      if indices.max() <= 1:  # the 2-frame video, looped: 0 0 0 0 / 1 1 1 1
        assert len(set(indices)) == 1
        continue
      np.testing.assert_array_equal(np.diff(indices), [2, 2, 2])
      starts.add(int(indices[0]))
  assert starts <= set(range(VIDEO_FRAMES - 6)) and len(starts) > 1


def test_several_eval_clips_spread_over_the_video(prepared):
  output_dir, _ = prepared
  datasets = data.get_datasets(
      folder_config(output_dir, eval_clips=3, num_frames=2,
                    temporal_stride=1), batch_size=1, eval_batch_size=4,
      seed=0)
  videos, labels = _all(datasets.eval)
  assert videos.shape[0] == 9 and np.bincount(labels).tolist() == [3, 3, 3]
  np.testing.assert_array_equal(frame_index(videos[:3]),
                                [[0, 1], [5, 6], [10, 11]])


@pytest.mark.parametrize("mode", ["loop", "pad", "drop"])
def test_short_video_modes(prepared, mode):
  output_dir, _ = prepared
  config = folder_config(output_dir, short_video=mode, eval_split="train",
                         num_frames=3, temporal_stride=1)
  datasets = data.get_datasets(config, batch_size=1, eval_batch_size=8,
                               seed=0)
  videos, _ = _all(datasets.eval)
  # The 2-frame video is the only clip whose frames are all 0 or 1 (black
  # padding reads as frame 0).
  short = [clip for clip in videos if frame_index(clip).max() <= 1]
  if mode == "drop":
    assert len(videos) == 6 and not short
    return
  assert len(videos) == 7 and len(short) == 1
  clip = short[0]
  if mode == "loop":
    np.testing.assert_array_equal(frame_index(clip), [0, 1, 0])
  else:  # pad: frames past the end are black
    np.testing.assert_array_equal(frame_index(clip[:2]), [0, 1])
    assert clip[2].max() == 0.0


def test_train_batches_are_deterministic_under_a_seed(prepared):
  output_dir, _ = prepared

  def first_batches(seed):
    datasets = data.get_datasets(folder_config(output_dir), batch_size=3,
                                 eval_batch_size=3, seed=seed)
    return [np.concatenate([b["video"].numpy().ravel(),
                            b["label"].numpy().astype(np.float32)])
            for b in datasets.train.take(4)]

  first, again, other = first_batches(1), first_batches(1), first_batches(2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_rerun_resumes_and_writes_nothing_new(prepared):
  output_dir, _ = prepared
  plan = json.loads((output_dir / video_folder.PLAN_FILE).read_text())
  lists = pathlib.Path(plan["options"]["split_file"])
  options = video_folder.PrepareOptions(
      short_side=16, videos_per_shard=2, split_file=str(lists))
  shards = sorted(output_dir.glob("*.tfrecord"))
  mtimes = {p: p.stat().st_mtime_ns for p in shards}
  summary = video_folder.prepare(plan["input_dir"], output_dir, options,
                                 progress=False)
  assert summary["shards_written"] == 0
  assert summary["shards_reused"] == len(shards)
  assert {p: p.stat().st_mtime_ns for p in shards} == mtimes
  # A lost shard (e.g. a crash before its rename) is the only one redone.
  shards[0].unlink()
  summary = video_folder.prepare(plan["input_dir"], output_dir, options,
                                 progress=False)
  assert summary["shards_written"] == 1 and shards[0].is_file()
  with pytest.raises(ValueError, match="other videos or options"):
    video_folder.prepare(plan["input_dir"], output_dir,
                         dataclasses.replace(options, short_side=8),
                         progress=False)


def test_num_classes_mismatch_names_the_path(prepared):
  output_dir, _ = prepared
  datasets = data.get_datasets(folder_config(output_dir, num_classes=0),
                               batch_size=1, eval_batch_size=1, seed=0)
  assert datasets.num_classes == 3  # 0 = from metadata.json
  with pytest.raises(ValueError, match=re.escape(str(output_dir))):
    data.get_datasets(folder_config(output_dir, num_classes=5), batch_size=1,
                      eval_batch_size=1, seed=0)


def test_missing_metadata_and_split_name_the_path(tmp_path, prepared):
  with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
    data.get_datasets(folder_config(tmp_path), batch_size=1,
                      eval_batch_size=1, seed=0)
  output_dir, _ = prepared
  with pytest.raises(ValueError, match="'val' is not in"):
    data.get_datasets(folder_config(output_dir, eval_split="val"),
                      batch_size=1, eval_batch_size=1, seed=0)


def test_empty_folder_and_no_decodable_video(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match=re.escape(str(empty))):
    video_folder.prepare(empty, tmp_path / "out1", progress=False)
  broken = tmp_path / "broken"
  (broken / "cls").mkdir(parents=True)
  (broken / "cls" / "x.avi").write_bytes(b"\x00" * 100)
  (broken / "cls" / "y.mp4").write_bytes(b"")
  with pytest.raises(ValueError,
                     match="no decodable video in " + re.escape(str(broken))):
    video_folder.prepare(broken, tmp_path / "out2", progress=False)
  (broken / "cls" / "x.avi").unlink()
  (broken / "cls" / "y.mp4").unlink()
  with pytest.raises(ValueError,
                     match="no video files .* " + re.escape(str(broken))):
    video_folder.prepare(broken, tmp_path / "out3", progress=False)


def test_split_list_naming_a_missing_video(video_tree, tmp_path):
  lists = tmp_path / "lists"
  with open(lists / "testlist01.txt", "a") as file:
    file.write("class_a/gone.avi\n")
  with pytest.raises(ValueError, match="class_a/gone.avi"):
    video_folder.prepare(video_tree, tmp_path / "out", video_folder.
                         PrepareOptions(split_file=str(lists)),
                         progress=False)


def test_split_folders_and_hash_split(tmp_path):
  for split in ("train", "val"):
    for class_name in ("x", "y"):
      write_video(tmp_path / "kinetics" / split / class_name / "v.mp4", 3,
                  codec="libx264")
  metadata = video_folder.prepare(
      tmp_path / "kinetics", tmp_path / "out", video_folder.PrepareOptions(
          short_side=0), progress=False)["metadata"]
  assert metadata["class_names"] == ["x", "y"]
  assert sorted(metadata["splits"]) == ["train", "val"]
  # eval_split "" picks "val" when there is one.
  datasets = data.get_datasets(
      folder_config(tmp_path / "out", num_classes=2, image_size=8,
                    num_frames=2, temporal_stride=1), batch_size=1,
      eval_batch_size=4, seed=0)
  assert sum(b["label"].shape[0] for b in datasets.eval) == 2


def test_prepare_videos_command(video_tree, tmp_path):
  output_dir = tmp_path / "out"
  command = [sys.executable, str(PROJECT_ROOT / "bin" / "prepare_videos"),
             f"--input_dir={video_tree}", f"--output_dir={output_dir}",
             "--short_side=16", "--num_workers=2", "--test_fraction=0.5",
             "--storage=raw"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=600, check=False)  # bounds a hang
  assert result.returncode == 0, result.stderr[-2000:]
  metadata = json.loads((output_dir / "metadata.json").read_text())
  assert set(metadata["splits"]) == {"train", "test"}  # the hash split
  assert sum(s["num_videos"] for s in metadata["splits"].values()) == 10
  assert metadata["options"]["storage"] == "raw"
  assert f"--config.data.path={output_dir}" in result.stdout


def test_decode_workers_end_on_sigterm_whatever_the_parent_handles():
  """bin/prepare_videos turns SIGTERM into SystemExit (run/user_errors.py);
  forked workers inherited that, and pool.terminate() at the end of a
  prepare could then wait forever for a worker. The workers reset it."""
  import signal  # noqa: PLC0415
  from sideways_tf.run import user_errors  # noqa: PLC0415
  saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  user_errors.stop_cleanly_in_main()
  try:
    pool = video_folder.decode_pool(2)
    try:  # bounded: a worker that never starts fails the test, not CI
      got = [pool.apply_async(signal.getsignal, (s,)).get(timeout=300)
             for s in (signal.SIGTERM, signal.SIGINT)]
    finally:
      pool.terminate()
      pool.join()
  finally:
    signal.signal(signal.SIGTERM, saved[0])
    signal.signal(signal.SIGINT, saved[1])
  assert got == [signal.SIG_DFL, signal.SIG_IGN]


def test_decode_workers_are_not_forked_from_this_process():
  """This (test) process has TensorFlow loaded and has run ops, so its
  other threads may hold locks; a worker forked from it once hung before
  running any code, and pool.join() waited for good. The workers come from
  a fresh fork server instead: their parent is not this process, and they
  do not share its modules."""
  import os  # noqa: PLC0415
  import sys  # noqa: PLC0415
  import sideways_tf.models  # noqa: F401,PLC0415  (in this process only)
  pool = video_folder.decode_pool(2)
  try:
    parent = pool.apply_async(os.getppid).get(timeout=300)
    worker_modules = pool.apply_async(_loaded_modules).get(timeout=300)
  finally:
    pool.close()
    pool.join()
  assert parent != os.getpid()
  assert "sideways_tf.models" in sys.modules
  assert "sideways_tf.models" not in worker_modules


def _loaded_modules():
  import sys  # noqa: PLC0415
  return set(sys.modules)


# ------------------------------------------------------------ frame storage

PATTERN_FRAMES, PATTERN_HEIGHT, PATTERN_WIDTH = 6, 24, 32


def write_pattern_video(path, shift):
  """A grey ramp, steeper along the width than the height (a transposed or
  mis-shaped read scrambles it), brightening by `shift` per frame."""
  rows = np.arange(PATTERN_HEIGHT)[:, None]
  columns = np.arange(PATTERN_WIDTH)[None, :]

  def image_of(t):
    grey = (20 + 3 * rows + 4 * columns + shift * t).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)

  write_video(path, PATTERN_FRAMES, PATTERN_HEIGHT, PATTERN_WIDTH,
              image_of=image_of)


def pattern_tree(root):
  for split in ("train", "test"):
    for index, class_name in enumerate(("x", "y")):
      write_pattern_video(root / split / class_name / "v.avi",
                          shift=1 + index + (split == "test"))
  return root


def decoded_frames(path):
  """What prepare decodes (PyAV, RGB at the stored size), as uint8."""
  with av.open(str(path)) as container:
    return np.stack([
        frame.to_ndarray(height=frame.height, width=frame.width,
                         format="rgb24", interpolation="AREA")
        for frame in container.decode(container.streams.video[0])])


def pattern_config(path, **overrides):
  return folder_config(path, **dict(dict(
      num_classes=2, num_frames=4, temporal_stride=1,
      image_size=PATTERN_HEIGHT), **overrides))


def test_raw_storage_gives_exactly_the_decoded_frames(tmp_path):
  videos = pattern_tree(tmp_path / "videos")
  metadata = video_folder.prepare(
      videos, tmp_path / "raw", video_folder.PrepareOptions(
          short_side=0, storage="raw"), progress=False)["metadata"]
  assert metadata["options"]["storage"] == "raw"
  datasets = data.get_datasets(pattern_config(tmp_path / "raw"),
                               batch_size=2, eval_batch_size=2, seed=0)
  videos_read, labels = _all(datasets.eval)
  assert videos_read.shape == (2, 4, PATTERN_HEIGHT, PATTERN_HEIGHT, 3)
  for clip, label in zip(videos_read, labels):
    expected = decoded_frames(videos / "test" / "xy"[label] / "v.avi")
    # Centred clip (frames 1-4) and centred square crop (columns 4-27),
    # resized 24 -> 24 (identity): exactly the decoded pixels / 255.
    np.testing.assert_array_equal(
        np.round(clip * 255.0).astype(np.uint8), expected[1:5, :, 4:28])


def test_raw_and_jpeg_folders_give_the_same_clips(tmp_path):
  videos = pattern_tree(tmp_path / "videos")
  for storage in ("jpeg", "raw"):
    video_folder.prepare(videos, tmp_path / storage,
                         video_folder.PrepareOptions(
                             short_side=0, storage=storage, jpeg_quality=100),
                         progress=False)
  read = {}
  for storage in ("jpeg", "raw"):
    datasets = data.get_datasets(
        pattern_config(tmp_path / storage, crop_fraction=0.875,
                       image_size=16), batch_size=2, eval_batch_size=2,
        seed=0)
    read[storage] = [b["video"].numpy() for b in datasets.train.take(3)] + [
        b["video"].numpy() for b in datasets.eval]
  for jpeg, raw in zip(read["jpeg"], read["raw"]):
    assert jpeg.shape == raw.shape and jpeg.dtype == raw.dtype == np.float32
    # The same clips, crops and flips; JPEG at quality 100 is close.
    assert np.abs(jpeg - raw).max() <= 4.0 / 255.0
  def size(storage):
    return sum(p.stat().st_size
               for p in (tmp_path / storage).glob("*.tfrecord"))
  assert size("raw") > size("jpeg")  # raw trades disk for decoding


def test_folder_prepared_before_storage_existed_reads_and_resumes(tmp_path):
  videos = pattern_tree(tmp_path / "videos")
  output_dir = tmp_path / "out"
  options = video_folder.PrepareOptions(short_side=0)
  video_folder.prepare(videos, output_dir, options, progress=False)
  for name in (video_folder.PLAN_FILE, video_folder.METADATA_FILE):
    saved = json.loads((output_dir / name).read_text())
    del saved["options"]["storage"]  # as written before the option existed
    (output_dir / name).write_text(json.dumps(saved, indent=1,
                                              sort_keys=True))
  metadata = video_folder.read_metadata(output_dir)
  assert video_folder.storage_of(metadata) == "jpeg"
  summary = video_folder.prepare(videos, output_dir, options, progress=False)
  assert summary["shards_written"] == 0 and summary["shards_reused"] == 2
  with pytest.raises(ValueError, match="other videos or options"):
    video_folder.prepare(videos, output_dir, dataclasses.replace(
        options, storage="raw"), progress=False)


def test_unknown_storage_is_named():
  with pytest.raises(ValueError, match="storage must be one of .* 'png'"):
    video_folder.PrepareOptions(storage="png")
  with pytest.raises(ValueError, match="unknown frame storage 'png'"):
    video_folder.storage_of({"options": {"storage": "png"}})
