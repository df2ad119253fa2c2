"""Multi-device placement, each case in its own process (TF sets devices once)."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("num_devices", [2, 4])
def test_stages_on_logical_devices_match_default_placement(num_devices):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(
      [sys.executable, "-m", "tests.multi_device_check", str(num_devices)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  assert result.stdout.strip().startswith(f"OK {num_devices} devices")
