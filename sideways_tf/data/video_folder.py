"""Folders of video files (HMDB51, UCF101, Kinetics, your own) as TFRecords.

`prepare` (bin/prepare_videos) decodes every video once with PyAV, resizes
it to a short side of `short_side` pixels and stores each frame as a JPEG
(`storage="jpeg"`, the default) or as its raw uint8 RGB bytes
(`storage="raw"`: no decoding when training, for small frames) in a
tf.train.Example (the decoding: video_decode.py); `load_source`
(config.data.name = "video_folder") reads either back, as metadata.json's
options say. Output directory:

  metadata.json                      class names, counts, skipped files
  prepare_plan.json                  options + which video goes to which shard
  <split>-00000-of-00012.tfrecord    one Example per video
  <split>-00000-of-00012.json        that shard's counts and skipped files

Input layouts: input_dir/<class>/**/<video> or, with split folders,
input_dir/<split>/<class>/**/<video> (splits.py). Class names are the sorted
class folder names. Videos are ordered by a hash of their path inside a split,
so every shard mixes classes and a small shuffle buffer is enough.

Robustness: a video that cannot be opened or decoded (corrupt, empty, no
video stream) is skipped with a warning and listed in metadata.json; it never
stops the run. Shards and JSON files are written under a temporary name and
renamed when complete, so a crash leaves no half file, and a rerun with the
same inputs and options only does the shards that are missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import signal
import time
from typing import Dict, List, Optional

from absl import logging

from sideways_tf.data import shard_check
from sideways_tf.data import splits as splits_lib
from sideways_tf.data.video_decode import decode_task
from sideways_tf.run.files import atomic_write_text

# Containers FFmpeg (PyAV) opens, matched case-insensitively (.MOV from phones).
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg",
                    ".mpeg", ".3gp", ".3g2", ".flv", ".wmv", ".asf", ".ts",
                    ".mts", ".m2ts", ".ogv", ".vob", ".mxf", ".dv", ".divx",
                    ".f4v", ".qt")
METADATA_FILE = "metadata.json"
PLAN_FILE = "prepare_plan.json"
FORMAT_VERSION = 1
# Which split evaluates by default when config.data.eval_split is "".
EVAL_SPLIT_PREFERENCE = ("val", "validation", "valid", "test")
# How frames are stored: JPEG (small on disk, decoded when training) or raw
# uint8 RGB bytes (H x W x 3 per frame, no decoding; for small frames).
STORAGES = ("jpeg", "raw")


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Everything that changes the written bytes (kept in prepare_plan.json)."""
  short_side: int = 128  # 0 = keep the original size
  num_frames_max: int = 0  # 0 = every frame; else the first N
  jpeg_quality: int = 90
  test_fraction: float = 0.2  # hash split only
  videos_per_shard: int = 64
  split_file: str = ""
  split_number: int = 1
  storage: str = "jpeg"  # or "raw" (STORAGES)

  def __post_init__(self):
    if self.storage not in STORAGES:
      raise ValueError(f"storage must be one of {STORAGES}, got "
                       f"{self.storage!r}")
    if self.short_side < 0 or self.num_frames_max < 0:
      raise ValueError(f"short_side and num_frames_max must be >= 0, got "
                       f"{self.short_side} and {self.num_frames_max}")
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(
          f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
    if not 0.0 <= self.test_fraction < 1.0:
      raise ValueError(
          f"test_fraction must be in [0, 1), got {self.test_fraction}")
    if self.videos_per_shard < 1:
      raise ValueError(
          f"videos_per_shard must be >= 1, got {self.videos_per_shard}")


# ------------------------------------------------------------------ planning

def find_videos(input_dir: pathlib.Path):
  """(class names, [(split folder or None, class, relative path)], ignored).

  Raises ValueError for a missing or empty folder, or one without class
  folders holding videos.
  """
  if not input_dir.is_dir():
    raise ValueError(f"input directory {input_dir} does not exist")
  top = sorted(p for p in input_dir.iterdir() if p.is_dir()
               and not p.name.startswith("."))
  if not top:
    raise ValueError(f"input directory {input_dir} has no class folders "
                     f"(expected {input_dir}/<class>/<video files>)")
  split_folders = all(p.name.lower() in splits_lib.SPLIT_FOLDER_NAMES
                      for p in top)
  roots = [(p.name, p) for p in top] if split_folders else [(None, input_dir)]
  videos, class_names, ignored = [], set(), []
  for split, root in roots:
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()
                            and not p.name.startswith(".")):
      for path in sorted(class_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
          continue
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
          ignored.append(path.relative_to(input_dir).as_posix())
          continue
        class_names.add(class_dir.name)
        videos.append((split, class_dir.name,
                       path.relative_to(input_dir).as_posix()))
  if not videos:
    raise ValueError(
        f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in the class "
        f"folders of {input_dir}")
  if ignored:
    shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
    print(f"Ignored {len(ignored)} file(s) whose extension is not a video "
          f"container ({shown}); known: {' '.join(VIDEO_EXTENSIONS)}",
          flush=True)
  return sorted(class_names), videos, len(ignored), split_folders


def _warn_one_class(input_dir, class_names) -> None:
  """One class trains to loss 0 and accuracy 1 and learns nothing (bin/train
  refuses it): say so while the folder is at hand."""
  if len(class_names) < 2:
    import sys  # noqa: PLC0415
    print(f"WARNING: only one class folder of {input_dir} holds videos "
          f"({class_names[0]}): a classifier has nothing to tell apart and "
          f"bin/train refuses it. Put each class's videos in a folder of its "
          f"own: {input_dir}/<class>/<video>", file=sys.stderr, flush=True)


def _warn_classes_without_test(class_names, by_split) -> None:
  """A hash split of few videos can leave a class out of 'test'."""
  tested = {class_name for class_name, _ in by_split.get("test", [])}
  missing = [name for name in class_names if name not in tested]
  if missing:
    import sys  # noqa: PLC0415
    print(f"WARNING: the hash split left {len(missing)} class(es) with no "
          f"test video: {', '.join(missing[:10])}. Add videos, raise "
          f"--test_fraction, or give a --split_file", file=sys.stderr,
          flush=True)


def _shuffled(videos):
  """A fixed order that mixes classes: by hash of the relative path."""
  return sorted(videos, key=lambda v: hashlib.md5(v[1].encode()).hexdigest())


def make_plan(input_dir: pathlib.Path, options: PrepareOptions) -> Dict:
  """Which video goes to which shard, and what is skipped before decoding."""
  class_names, videos, ignored, split_folders = find_videos(input_dir)
  _warn_one_class(input_dir, class_names)
  assignment, list_files = None, []
  if options.split_file:
    assignment, list_files = splits_lib.read_split_file(
        options.split_file, options.split_number)
  by_split, unlisted, used_keys = splits_lib.assign(
      videos, assignment, split_folders, options.test_fraction)
  skipped = [{"path": relative, "reason": "not in the split lists"}
             for _, _, relative in unlisted]
  if assignment is not None:
    missing = sorted(set(assignment) - used_keys)
    if missing:
      shown = ", ".join(missing[:5])
      raise ValueError(
          f"split lists {', '.join(str(p) for p in list_files[:2])}"
          f"{' ...' if len(list_files) > 2 else ''} name {len(missing)} "
          f"videos that are not in {input_dir} (e.g. {shown})")
    unused = by_split.pop(splits_lib.UNUSED, [])
    skipped += [{"path": relative, "reason": "unused in this split (0)"}
                for _, relative in unused]
  if assignment is None and not split_folders:
    _warn_classes_without_test(class_names, by_split)
  label_of = {name: index for index, name in enumerate(class_names)}
  shards = []
  for split in sorted(by_split):
    members = _shuffled(by_split[split])
    count = math.ceil(len(members) / options.videos_per_shard)
    for index in range(count):
      chunk = members[index * options.videos_per_shard:
                      (index + 1) * options.videos_per_shard]
      shards.append({
          "name": f"{split}-{index:05d}-of-{count:05d}",
          "split": split,
          "videos": [[relative, label_of[class_name]]
                     for class_name, relative in chunk]})
  return {"format_version": FORMAT_VERSION,
          "options": dataclasses.asdict(options),
          "class_names": class_names, "shards": shards,
          "skipped": skipped, "ignored_files": ignored}


# ------------------------------------------------------------------ writing

def _shard_done(output_dir: pathlib.Path, name: str) -> bool:
  return ((output_dir / f"{name}.tfrecord").is_file()
          and (output_dir / f"{name}.json").is_file())


def _serialize(frames, size, label: int, relative: str) -> bytes:
  import tensorflow as tf  # noqa: PLC0415

  def int64(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

  return tf.train.Example(features=tf.train.Features(feature={
      "frames": tf.train.Feature(bytes_list=tf.train.BytesList(value=frames)),
      "label": int64(label),
      "num_frames": int64(len(frames)),
      "height": int64(size[0]),
      "width": int64(size[1]),
      "path": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[relative.encode()])),
  })).SerializeToString()


def prepare(input_dir, output_dir, options: Optional[PrepareOptions] = None,
            num_workers: int = 1, progress: bool = True) -> Dict:
  """Decodes the videos of input_dir into sharded TFRecords in output_dir.

  Resumable: shards already complete are kept. Returns a summary with the
  number of shards written and reused, videos written and skipped, and the
  decoding rate.
  """
  import tqdm  # noqa: PLC0415

  options = options or PrepareOptions()
  input_dir = pathlib.Path(input_dir).expanduser().resolve()
  output_dir = pathlib.Path(output_dir).expanduser().resolve()
  plan = _write_plan(input_dir, output_dir, options)
  pending = [shard for shard in plan["shards"]
             if not (_shard_done(output_dir, shard["name"]) and
                     shard_check.kept_shard_ok(output_dir, shard["name"]))]
  tasks = [(input_dir / relative, options)
           for shard in pending for relative, _ in shard["videos"]]
  started = time.perf_counter()
  bar = tqdm.tqdm(total=len(tasks), unit="video", disable=not progress,
                  desc=f"Preparing {input_dir.name}")
  pool, results = _decode_all(tasks, num_workers)
  videos_written = videos_skipped = 0
  finished = False
  try:
    for shard in pending:
      record = {"name": shard["name"], "split": shard["split"], "videos": 0,
                "frames": 0, "per_label": {}, "skipped": []}
      final = output_dir / f"{shard['name']}.tfrecord"
      temporary = final.with_name(f".{final.name}.tmp-{os.getpid()}")
      try:
        _write_shard(shard, temporary, results, record, bar, input_dir)
      except BaseException:
        temporary.unlink(missing_ok=True)  # e.g. Ctrl-C: no stale temp file
        raise
      record.update(shard_check.digest(temporary))  # checked on a rerun
      videos_written += record["videos"]
      videos_skipped += len(record["skipped"])
      atomic_write_text(output_dir / f"{shard['name']}.json",
                        json.dumps(record, indent=1))
      os.replace(temporary, final)
    finished = True
  finally:
    bar.close()
    _stop_pool(pool, finished)
  seconds = time.perf_counter() - started
  metadata = write_metadata(output_dir, plan)
  return {"shards_written": len(pending),
          "shards_reused": len(plan["shards"]) - len(pending),
          "videos_written": videos_written, "videos_skipped": videos_skipped,
          "seconds": seconds,
          "videos_per_second": len(tasks) / seconds if seconds else 0.0,
          "metadata": metadata}


def _write_plan(input_dir, output_dir, options) -> Dict:
  """The plan of this run, written to output_dir; refuses another run's."""
  plan = make_plan(input_dir, options)
  plan["input_dir"] = str(input_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  plan_path = output_dir / PLAN_FILE
  plan_text = json.dumps(plan, indent=1, sort_keys=True)
  if plan_path.exists() and _with_default_options(
      plan_path.read_text()) != plan_text:
    raise ValueError(
        f"{output_dir} was prepared from other videos or options (its "
        f"{PLAN_FILE} differs); use another --output_dir or delete it")
  atomic_write_text(plan_path, plan_text)
  return plan


def _with_default_options(plan_text: str) -> str:
  """A saved plan with the options added since it was written at their
  defaults (a folder prepared before `storage` existed is a jpeg one)."""
  try:
    plan = json.loads(plan_text)
  except ValueError:
    return plan_text
  plan["options"] = dict(dataclasses.asdict(PrepareOptions()),
                         **plan.get("options", {}))
  return json.dumps(plan, indent=1, sort_keys=True)


def _decode_all(tasks, num_workers):
  """(pool or None, iterator of decoded videos in task order)."""
  if num_workers > 1 and len(tasks) > 1:
    pool = decode_pool(num_workers)
    return pool, pool.imap(decode_task, tasks, chunksize=1)
  return None, map(decode_task, tasks)


def _stop_pool(pool, finished: bool) -> None:
  """Done: the idle workers exit when told there is no more work. On an
  error or a signal, stop them (SIGTERM; _reset_worker_signals makes it end
  them)."""
  if pool is None:
    return
  if finished:
    pool.close()
  else:
    pool.terminate()
  pool.join()


def decode_pool(num_workers: int):
  """The decode workers' pool, never forked from this process.

  This process has TensorFlow loaded and may have run ops (a notebook, a
  test session, a program that prepares after training): forking it
  copies locks its other threads held at that moment, and a worker could
  wait on one forever before running any code (seen with 2 workers forked
  from a test process, which left pool.join() waiting for good). A fork
  server is a fresh single-threaded interpreter that preloads nothing, so
  the workers it forks start clean; spawn where there is no fork server.
  Either way each worker imports this module and the program's main one
  (hence the `__name__ == "__main__"` guard of bin/*), which loads
  TensorFlow without running an op: a few seconds once per prepare."""
  if "forkserver" in multiprocessing.get_all_start_methods():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([])
  else:
    context = multiprocessing.get_context("spawn")
  return context.Pool(num_workers, initializer=_reset_worker_signals)


def _reset_worker_signals() -> None:
  """A decode worker's signals: SIGTERM ends it (the default), SIGINT is
  the parent's to handle. Workers forked from the bin/ program itself once
  inherited its handlers (run/user_errors.py), under which SIGTERM raised
  SystemExit inside the pool's worker loop and pool.terminate() could wait
  forever for a worker that never exited; whatever starts them, they set
  their own."""
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_shard(shard, path, results, record, bar, input_dir):
  """Writes the next decoded videos of `results` into one TFRecord file."""
  import tensorflow as tf  # noqa: PLC0415
  with tf.io.TFRecordWriter(str(path)) as writer:
    for relative, label in shard["videos"]:
      result = next(results)
      bar.update(1)
      if "error" in result:
        logging.warning("Skipping %s: %s", input_dir / relative,
                        result["error"])
        record["skipped"].append({"path": relative,
                                  "reason": result["error"]})
        continue
      writer.write(_serialize(result["frames"], result["size"], label,
                              relative))
      record["videos"] += 1
      record["frames"] += len(result["frames"])
      record["per_label"][str(label)] = (
          record["per_label"].get(str(label), 0) + 1)


def write_metadata(output_dir: pathlib.Path, plan: Dict) -> Dict:
  """Sums the shard records into metadata.json (atomically)."""
  class_names = plan["class_names"]
  split_info: Dict[str, Dict] = {}
  skipped = list(plan["skipped"])
  for shard in plan["shards"]:
    record = shard_check.load_json(output_dir / f"{shard['name']}.json")
    info = split_info.setdefault(shard["split"], {
        "num_videos": 0, "num_frames": 0,
        "per_class": {name: 0 for name in class_names}, "shards": []})
    info["num_videos"] += record["videos"]
    info["num_frames"] += record["frames"]
    for label, count in record["per_label"].items():
      info["per_class"][class_names[int(label)]] += count
    info["shards"].append(f"{shard['name']}.tfrecord")
    skipped += [dict(entry, split=shard["split"])
                for entry in record["skipped"]]
  if not any(info["num_videos"] for info in split_info.values()):
    raise ValueError(
        f"no decodable video in {plan['input_dir']} ({len(skipped)} "
        f"skipped; e.g. {skipped[0]['path']}: {skipped[0]['reason']})"
        if skipped else f"no decodable video in {plan['input_dir']}")
  metadata = {"format_version": FORMAT_VERSION,
              "input_dir": plan["input_dir"],
              "options": plan["options"],
              "class_names": class_names,
              "num_classes": len(class_names),
              "splits": split_info,
              "skipped": sorted(skipped, key=lambda entry: entry["path"]),
              "ignored_files": plan["ignored_files"]}
  atomic_write_text(output_dir / METADATA_FILE, json.dumps(metadata, indent=1))
  return metadata


# ------------------------------------------------------------------ reading

def read_metadata(path) -> Dict:
  path = pathlib.Path(path).expanduser()
  metadata_path = path / METADATA_FILE
  if not metadata_path.is_file():
    raise ValueError(
        f"{metadata_path} not found: is {path} an --output_dir of "
        f"bin/prepare_videos?")
  metadata = shard_check.load_json(metadata_path)
  if metadata.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{metadata_path} has format version "
                     f"{metadata.get('format_version')}, expected "
                     f"{FORMAT_VERSION}: prepare {path} again")
  return metadata


def storage_of(metadata) -> str:
  """How a prepared folder stores its frames ("jpeg" before raw existed)."""
  storage = metadata.get("options", {}).get("storage", "jpeg")
  if storage not in STORAGES:
    raise ValueError(f"unknown frame storage {storage!r} in metadata.json "
                     f"(known: {', '.join(STORAGES)}): prepare it again")
  return storage


def _parse(serialized):
  """JPEG storage: the encoded frames (clips.py decodes the sampled ones).

  The frames are a RaggedFeature (a dense 1-D string tensor straight away):
  a VarLenFeature's sparse tensor would copy every frame once more.
  """
  import tensorflow as tf  # noqa: PLC0415
  parsed = tf.io.parse_single_example(serialized, {
      "frames": tf.io.RaggedFeature(tf.string),
      "label": tf.io.FixedLenFeature([], tf.int64)})
  return {"frames": parsed["frames"], "label": parsed["label"]}


def _parse_raw(serialized):
  """Raw storage: uint8 [N, H, W, 3] straight from the bytes, no decoding."""
  import tensorflow as tf  # noqa: PLC0415
  parsed = tf.io.parse_single_example(serialized, {
      "frames": tf.io.RaggedFeature(tf.string),
      "label": tf.io.FixedLenFeature([], tf.int64),
      "height": tf.io.FixedLenFeature([], tf.int64),
      "width": tf.io.FixedLenFeature([], tf.int64)})
  pixels = tf.io.decode_raw(parsed["frames"], tf.uint8)
  shape = tf.stack([tf.shape(pixels)[0], tf.cast(parsed["height"], tf.int32),
                    tf.cast(parsed["width"], tf.int32), 3])
  return {"frames": tf.reshape(pixels, shape), "label": parsed["label"]}


def load_source(data_config, seed: int = 0):
  """config.data (name="video_folder", path=...) -> clips.Source."""
  import tensorflow as tf  # noqa: PLC0415
  from sideways_tf.data import clips  # noqa: PLC0415

  path = data_config.get("path", "")
  if not path:
    raise ValueError("config.data.path is empty: set --config.data.path to an "
                     "--output_dir of bin/prepare_videos")
  path = pathlib.Path(path).expanduser().resolve()
  metadata = read_metadata(path)
  class_names: List[str] = metadata["class_names"]
  if data_config.num_classes and data_config.num_classes != len(class_names):
    raise ValueError(
        f"config.data.num_classes is {data_config.num_classes} but the videos "
        f"prepared in {path} have {len(class_names)} classes "
        f"(see {path / METADATA_FILE})")
  available = sorted(metadata["splits"])
  train_split = data_config.get("train_split", "") or "train"
  eval_split = data_config.get("eval_split", "") or next(
      (name for name in EVAL_SPLIT_PREFERENCE if name in available), "test")

  def shard_paths(split):
    if split not in metadata["splits"]:
      raise ValueError(f"split {split!r} is not in {path} (splits: "
                       f"{', '.join(available)})")
    if not metadata["splits"][split]["num_videos"]:
      raise ValueError(f"split {split!r} of {path} has no video")
    files = [str(path / name) for name in metadata["splits"][split]["shards"]]
    for file in files:
      if not os.path.isfile(file):
        raise ValueError(f"shard {file} listed in {path / METADATA_FILE} is "
                         f"missing: rerun bin/prepare_videos")
    return files

  parse = _parse_raw if storage_of(metadata) == "raw" else _parse
  train_files = shard_paths(train_split)
  train = tf.data.Dataset.from_tensor_slices(train_files).shuffle(
      len(train_files), seed=seed, reshuffle_each_iteration=True)
  train = train.interleave(
      tf.data.TFRecordDataset, cycle_length=min(8, len(train_files)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  eval_ = tf.data.TFRecordDataset(shard_paths(eval_split))
  return clips.Source(
      train=train.map(parse, num_parallel_calls=tf.data.AUTOTUNE),
      eval=eval_.map(parse, num_parallel_calls=tf.data.AUTOTUNE),
      class_names=class_names, shuffle_buffer=256, random_flip=True,
      crop_fraction=0.875)
