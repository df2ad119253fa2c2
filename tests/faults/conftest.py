"""The fault tests' shared set-up (every test module of tests/faults/): one
short trained run per test module, copied afresh for every test (a test may
break its copy as it likes)."""

import pytest

from tests.faults import harness


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The generated videos of the module's runs (made once per module)."""
  return tmp_path_factory.mktemp("fault_data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  """A 4-step run with checkpoints ckpt-2 and ckpt-4 (keep_checkpoints=3),
  trained once per module; tests get copies (`run`)."""
  return harness.train_once(tmp_path_factory.mktemp("trained") / "run",
                            data_dir)


@pytest.fixture
def run(trained, tmp_path):
  """A fresh copy of the trained run's workdir for one test."""
  return harness.copy_run(trained, tmp_path)
