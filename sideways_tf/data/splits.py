"""Train/test assignment of the videos of a folder (no TensorFlow here).

Three ways, in this order of preference:
  * official lists, --split_file (see `read_split_file`):
      UCF101  trainlist01.txt / testlist01.txt, lines "Class/file.avi [label]";
      HMDB51  <class>_test_split1.txt, lines "file.avi 1|2|0"
              (1 = train, 2 = test, 0 = unused in this split);
  * split folders: input_dir/<split>/<class>/... with <split> among
    SPLIT_FOLDER_NAMES (e.g. Kinetics' train/ and val/), names kept as is;
  * otherwise a hash split: a video is in "test" when the hash of its path
    relative to input_dir falls below test_fraction. It is deterministic and
    stable when videos are added, but unaware of groups (UCF101 clips cut
    from one long video can land on both sides): prefer the official lists.

Paths are matched case-insensitively with "/" separators: UCF101's lists
spell some class folders differently from the archive (HandStandPushups).
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from typing import Dict, List, Optional, Tuple

SPLIT_FOLDER_NAMES = ("train", "val", "valid", "validation", "test")
UNUSED = "unused"  # HMDB51 "0": in neither split of this split number
_UCF_LIST = re.compile(r"^(train|test)list(\d+)\.txt$", re.IGNORECASE)
_HMDB_LIST = re.compile(r"^(.+)_test_split(\d+)\.txt$", re.IGNORECASE)
_HMDB_CODES = {"1": "train", "2": "test", "0": UNUSED}


def path_key(relative_path: str) -> str:
  """How a video is matched against split lists."""
  return relative_path.replace("\\", "/").strip("/").lower()


def hash_split(relative_path: str, test_fraction: float) -> str:
  """"test" for about test_fraction of the paths, by a stable hash."""
  digest = hashlib.md5(path_key(relative_path).encode()).hexdigest()
  return "test" if int(digest[:8], 16) / 2**32 < test_fraction else "train"


def read_split_file(split_file, split_number: int = 1
                    ) -> Tuple[Dict[str, str], List[pathlib.Path]]:
  """{path key: split} from official lists, and the list files read.

  `split_file` is one list file (its siblings of the same split number are
  read too: trainlist01 + testlist01, or every *_test_split1.txt), or the
  folder holding them with `split_number` choosing the split.
  HMDB51 keys are "class/file.avi" (the class comes from the list's name).
  """
  split_file = pathlib.Path(split_file).expanduser()
  kind = None  # "ucf" or "hmdb": from the file's name, else what is there
  if split_file.is_dir():
    folder, number = split_file, split_number
  elif split_file.is_file():
    folder = split_file.parent
    match = _UCF_LIST.match(split_file.name)
    kind = "ucf" if match else None
    if not match:
      match = _HMDB_LIST.match(split_file.name)
      kind = "hmdb" if match else None
    if not match:
      raise ValueError(
          f"split file {split_file} is neither a UCF101 list "
          f"(trainlist01.txt, testlist01.txt) nor an HMDB51 list "
          f"(<class>_test_split1.txt)")
    number = int(match.group(2))
  else:
    raise ValueError(f"split file {split_file} does not exist")

  ucf = [folder / f"{name}list{number:02d}.txt" for name in ("train", "test")]
  hmdb = sorted(
      p for p in folder.iterdir()
      if (m := _HMDB_LIST.match(p.name)) and int(m.group(2)) == number)
  if kind == "ucf" or (kind is None and any(p.is_file() for p in ucf)):
    missing = [p for p in ucf if not p.is_file()]
    if missing:
      raise ValueError(f"UCF101 split list {missing[0]} is missing (both "
                       f"trainlist{number:02d}.txt and testlist{number:02d}"
                       f".txt are needed)")
    return _read_ucf(ucf), ucf
  if hmdb:
    return _read_hmdb(hmdb), hmdb
  raise ValueError(f"no split list for split {number} in {folder}: expected "
                   f"trainlist{number:02d}.txt/testlist{number:02d}.txt "
                   f"(UCF101) or *_test_split{number}.txt (HMDB51)")


def _read_ucf(lists) -> Dict[str, str]:
  assignment = {}
  for list_path, split in zip(lists, ("train", "test")):
    for line_number, line in enumerate(_lines(list_path), 1):
      relative = line.split()[0]
      if "/" not in relative.replace("\\", "/"):
        raise ValueError(f"{list_path}:{line_number}: expected "
                         f"'Class/file.avi [label]', got {line!r}")
      assignment[path_key(relative)] = split
  return assignment


def _read_hmdb(lists) -> Dict[str, str]:
  assignment = {}
  for list_path in lists:
    class_name = _HMDB_LIST.match(list_path.name).group(1)
    for line_number, line in enumerate(_lines(list_path), 1):
      parts = line.split()
      if len(parts) != 2 or parts[1] not in _HMDB_CODES:
        raise ValueError(f"{list_path}:{line_number}: expected "
                         f"'file.avi 1|2|0', got {line!r}")
      assignment[path_key(f"{class_name}/{parts[0]}")] = _HMDB_CODES[parts[1]]
  return assignment


def _lines(path: pathlib.Path) -> List[str]:
  return [line.strip() for line in path.read_text().splitlines()
          if line.strip()]


def hmdb_key(class_name: str, relative_path: str) -> str:
  """HMDB51 lists name files without folders: match on class/file name."""
  return path_key(f"{class_name}/{pathlib.PurePosixPath(relative_path).name}")


def assign(videos, assignment: Optional[Dict[str, str]],
           split_from_folder: bool, test_fraction: float):
  """Splits every video; returns ({split: [video]}, unlisted, list keys hit).

  `videos` are (split folder or None, class name, path relative to
  input_dir). Videos missing from the lists are returned as `unlisted`.
  """
  by_split: Dict[str, list] = {}
  unlisted, used_keys = [], set()
  for folder_split, class_name, relative in videos:
    if assignment is not None:
      key = path_key(relative)
      if key not in assignment:
        key = hmdb_key(class_name, relative)
      if key not in assignment:
        unlisted.append((folder_split, class_name, relative))
        continue
      used_keys.add(key)
      split = assignment[key]
    elif split_from_folder:
      split = folder_split
    else:
      split = hash_split(relative, test_fraction)
    by_split.setdefault(split, []).append((class_name, relative))
  return by_split, unlisted, used_keys
