"""Runs one test file with pytest: the main of every Bazel py_test (tests/BUILD).

  python tests/pytest_main.py tests/test_pipeline.py [pytest args]
"""

import pathlib
import sys

import pytest

if __name__ == "__main__":
  root = pathlib.Path(__file__).resolve().parent.parent
  sys.exit(pytest.main(["-q", "-c", str(root / "pytest.ini"),
                        "--rootdir", str(root)] + sys.argv[1:]))
