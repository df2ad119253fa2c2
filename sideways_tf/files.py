"""Where the project lives and how files are written (no TensorFlow import)."""

import os
import pathlib

# The directory `sideways_tf` is imported from.
PACKAGE_PARENT = pathlib.Path(__file__).resolve().parent.parent
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
