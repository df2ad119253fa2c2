"""Where the project lives and how files are written (no TensorFlow import)."""

import os
import pathlib

# The directory `sideways_tf` is imported from.
PACKAGE_PARENT = pathlib.Path(__file__).resolve().parents[2]
# The checkout (it holds pyproject.toml); for an installed package (pip
# install .) the working directory: the default home of workdir/ and
# data_cache/.
PROJECT_ROOT = (PACKAGE_PARENT if (PACKAGE_PARENT / "pyproject.toml").exists()
                else pathlib.Path.cwd())


def atomic_write_text(path: pathlib.Path, text: str) -> None:
  """Write to a temporary name, then rename: readers never see half a file."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


def write_marked_section(path: pathlib.Path, begin: str, end: str,
                         lines, new_file: str = "# Results\n\n") -> None:
  """Puts `lines` between the markers `begin` and `end` of the file at
  `path`, keeping the rest of it (the section is appended the first time; a
  missing file starts as `new_file`). Atomic."""
  path = pathlib.Path(path)
  text = path.read_text() if path.exists() else new_file
  block = "\n".join([begin, ""] + list(lines) + [end])
  if begin in text and end in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
  else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
  atomic_write_text(path, text)
