"""The package's rooms: old import paths of moved modules still work, warn
and give the very module at its new path; `sideways_tf.callbacks` is public
and does not warn; the package root holds no loose modules."""

import importlib
import pathlib
import subprocess
import sys
import warnings

import pytest

import sideways_tf

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Old path -> new path, as a user may have written them (not read from the
# package's own table, so a wrong entry there shows up here).
MOVED = {
    "sideways_tf.checkpoints": "sideways_tf.run.checkpoints",
    "sideways_tf.cli": "sideways_tf.run.cli",
    "sideways_tf.distributed": "sideways_tf.run.distributed",
    "sideways_tf.distributed_start": "sideways_tf.run.distributed_start",
    "sideways_tf.files": "sideways_tf.run.files",
    "sideways_tf.quiet": "sideways_tf.run.quiet",
    "sideways_tf.run_keys": "sideways_tf.run.run_keys",
    "sideways_tf.summaries": "sideways_tf.run.summaries",
    "sideways_tf.user_errors": "sideways_tf.run.user_errors",
    "sideways_tf.workdir_lock": "sideways_tf.run.workdir_lock",
    "sideways_tf.diagnostics": "sideways_tf.training.diagnostics",
    "sideways_tf.export": "sideways_tf.serving.export",
    "sideways_tf.keras_model": "sideways_tf.keras_api.model",
}


@pytest.fixture
def forget_old_path():
  """Makes the old path look never imported (so its import warns again);
  puts back what was there afterwards."""
  saved = []

  def forget(old):
    name = old.rpartition(".")[2]
    saved.append((old, sys.modules.pop(old, None),
                  sideways_tf.__dict__.pop(name, None)))

  yield forget
  for old, module, attribute in saved:
    name = old.rpartition(".")[2]
    sys.modules.pop(old, None)
    sideways_tf.__dict__.pop(name, None)
    if module is not None:
      sys.modules[old] = module
    if attribute is not None:
      setattr(sideways_tf, name, attribute)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_import_of_an_old_path_warns_and_gives_the_moved_module(
    old, forget_old_path):
  forget_old_path(old)
  new = importlib.import_module(MOVED[old])
  with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: "
                    f"import {MOVED[old]}"):
    module = importlib.import_module(old)
  assert module is new
  assert sys.modules[old] is new


@pytest.mark.parametrize("old", ["sideways_tf.checkpoints",
                                 "sideways_tf.keras_model"])
def test_an_old_path_as_an_attribute_of_the_package_warns_and_gives_the_module(
    old, forget_old_path):
  new = importlib.import_module(MOVED[old])
  forget_old_path(old)
  with pytest.warns(DeprecationWarning, match=f"import {MOVED[old]}"):
    assert getattr(sideways_tf, old.rpartition(".")[2]) is new


def test_from_an_old_path_import_a_name_gives_the_public_object(
    forget_old_path):
  forget_old_path("sideways_tf.keras_model")
  with pytest.warns(DeprecationWarning, match="sideways_tf.keras_api.model"):
    from sideways_tf.keras_model import SidewaysModel  # noqa: PLC0415
  assert SidewaysModel is sideways_tf.SidewaysModel


def test_callbacks_is_public_at_its_old_path_without_a_warning(
    forget_old_path):
  from sideways_tf.keras_api import callbacks  # noqa: PLC0415
  forget_old_path("sideways_tf.callbacks")
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)
    module = importlib.import_module("sideways_tf.callbacks")
    assert sideways_tf.callbacks is callbacks
  assert module is callbacks
  assert module.GradientFidelity is callbacks.GradientFidelity


def test_a_script_sees_the_warning_at_its_import_line_without_tensorflow():
  """Python's default filters show a DeprecationWarning only when it is
  attributed to __main__: the warning must point at the user's line, not
  at the import machinery. Importing the old path of a TF-free module
  imports no TensorFlow (the package stays lazy)."""
  script = ("import sys\n"
            "import sideways_tf.files\n"
            "from sideways_tf import run_keys\n"
            "print('tensorflow' in sys.modules)\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "False"
  warned = [line for line in result.stderr.splitlines()
            if "DeprecationWarning" in line]
  assert warned == [
      "<string>:2: DeprecationWarning: sideways_tf.files is deprecated: "
      "import sideways_tf.run.files (the old path goes in the next release)",
      "<string>:3: DeprecationWarning: sideways_tf.run_keys is deprecated: "
      "import sideways_tf.run.run_keys (the old path goes in the next "
      "release)"]


def test_the_package_root_holds_only_its_init_and_subpackages():
  package = ROOT / "sideways_tf"
  assert sorted(p.name for p in package.glob("*.py")) == ["__init__.py"]
  for directory in package.iterdir():
    if directory.is_dir() and directory.name != "__pycache__":
      assert (directory / "__init__.py").exists(), directory
