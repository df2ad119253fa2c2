"""Integrity of prepared TFRecord shards (bin/prepare_videos output).

Each shard's JSON records its size, SHA-256 and record count when it is
written. `bin/prepare_videos` rewrites a kept shard that no longer matches,
`bin/prepare_videos --verify` checks a prepared folder, and a read error
during training names the bad shard(s) and the repair instead of
"DataLossError: corrupted record at 18162".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pathlib
from typing import Dict, List, Optional, Tuple


class DataError(ValueError):
  """Bad prepared data; the message names the file and the repair."""


def load_json(path) -> Dict:
  """json.loads of a file, naming the file if it is not valid JSON."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text())
  except ValueError as error:
    raise DataError(f"{path} is not valid JSON ({error}); rerun "
                    f"bin/prepare_videos with the same flags to rewrite "
                    f"it") from None


def digest(path) -> Dict[str, object]:
  """Size and SHA-256 of a shard, for its JSON record."""
  sha = hashlib.sha256()
  size = 0
  with open(path, "rb") as file:
    for block in iter(lambda: file.read(1 << 20), b""):
      sha.update(block)
      size += len(block)
  return {"bytes": size, "sha256": sha.hexdigest()}


def count_records(path) -> int:
  """Reads every record (checking its CRC): raises on a corrupt shard."""
  import tensorflow as tf  # noqa: PLC0415
  return sum(1 for _ in tf.data.TFRecordDataset(str(path)))


def shard_problem(tfrecord, record: Dict) -> Optional[str]:
  """None if `tfrecord` matches its JSON `record`, else what is wrong."""
  tfrecord = pathlib.Path(tfrecord)
  if not tfrecord.is_file():
    return "missing"
  if "sha256" in record:
    found = digest(tfrecord)
    if found["bytes"] != record["bytes"]:
      return (f"{found['bytes']} bytes, expected {record['bytes']} "
              f"(truncated or overwritten)")
    if found["sha256"] != record["sha256"]:
      return "checksum differs from its JSON record (corrupted)"
    return None
  try:  # written before checksums were recorded: read every record
    count = count_records(tfrecord)
  except Exception as error:  # noqa: BLE001
    return f"unreadable ({' '.join(str(error).split())[:120]})"
  if count != record.get("videos"):
    return f"{count} records, expected {record.get('videos')}"
  return None


def verify_folder(output_dir) -> Tuple[int, List[Tuple[str, str]]]:
  """(number of shards checked, [(shard path, problem)]) of a prepared
  folder, from its metadata.json and the shards' JSON records."""
  output_dir = pathlib.Path(output_dir)
  metadata = load_json(output_dir / "metadata.json")
  bad = []
  names = [name for info in metadata["splits"].values()
           for name in info["shards"]]
  for name in names:
    tfrecord = output_dir / name
    json_path = tfrecord.with_suffix(".json")
    if not json_path.is_file():
      bad.append((str(tfrecord), f"its record {json_path.name} is missing"))
      continue
    problem = shard_problem(tfrecord, load_json(json_path))
    if problem:
      bad.append((str(tfrecord), problem))
  return len(names), bad


def repair_hint(output_dir) -> str:
  return (f"rerun bin/prepare_videos with the same flags and "
          f"--output_dir={output_dir} (it rewrites bad shards); "
          f"bin/prepare_videos --verify --output_dir={output_dir} checks it")


@contextlib.contextmanager
def named_data_errors(data_config):
  """Turns a TFRecord read error into a DataError naming the bad shard(s)."""
  import tensorflow as tf  # noqa: PLC0415
  try:
    yield
  except tf.errors.DataLossError as error:
    raise DataError(describe_read_error(data_config, error)) from error


def describe_read_error(data_config, error) -> str:
  first = " ".join(str(error).split("\n")[0].split())[:120]
  if data_config.get("name") != "video_folder" or not data_config.get("path"):
    where = data_config.get("data_dir") or "the data cache"
    return (f"corrupt data file under {where} ({first}); delete that data "
            f"set's folder to have it generated or downloaded again")
  output_dir = pathlib.Path(data_config.path).expanduser().resolve()
  try:
    _, bad = verify_folder(output_dir)
  except Exception:  # noqa: BLE001
    bad = []
  if not bad:
    return f"corrupt shard in {output_dir} ({first}); {repair_hint(output_dir)}"
  names = ", ".join(f"{path} ({problem})" for path, problem in bad[:3])
  return f"bad shard {names}: {repair_hint(output_dir)}"


def kept_shard_ok(output_dir, name: str) -> bool:
  """Whether a finished shard of an earlier run still matches its record;
  warns (naming it) if it is to be rewritten."""
  tfrecord = pathlib.Path(output_dir) / f"{name}.tfrecord"
  try:
    problem = shard_problem(tfrecord, load_json(tfrecord.with_suffix(".json")))
  except DataError as error:
    problem = str(error).split(";")[0]
  if problem:
    import sys  # noqa: PLC0415
    print(f"WARNING: rewriting {tfrecord}: {problem}", file=sys.stderr,
          flush=True)
  return problem is None
