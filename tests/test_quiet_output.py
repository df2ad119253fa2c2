"""A run prints its own lines only (item 12 of the robustness list): the
`sideways-*` console scripts hide TensorFlow's C++ start-up lines as bin/*
do, and a warning logged while the progress bar is drawn starts a line of
its own."""

import io
import os
import pathlib
import re
import subprocess
import sys
import tomllib
import warnings

import pytest

from sideways_tf.training import progress

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "faults" / "tiny_config.py")
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())[
    "project"]["scripts"]
# TensorFlow's C++ start-up lines on a CPU machine (TF 2.21).
TF_NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cuda",
            "cpu_feature_guard", "cuInit", "I0000", "E0000")

# What pip writes as bin/sideways-train (setuptools' console-script launcher).
LAUNCHER = """import sys
from {module} import {function}
if __name__ == '__main__':
    sys.argv[0] = sys.argv[0].removesuffix('.exe')
    sys.exit({function}())
"""


@pytest.fixture(scope="module")
def console_run(tmp_path_factory):
  """`sideways-train` as installed (the package on the path, run from
  another directory): a 4-step run whose step 2 logs the fidelity risk
  warning while the progress bar is drawn; stdout and stderr in one
  stream, as a terminal or `2>&1 | tee` shows them."""
  tmp = tmp_path_factory.mktemp("console")
  module, function = SCRIPTS["sideways-train"].split(":")
  script = tmp / "sideways-train"
  script.write_text(LAUNCHER.format(module=module, function=function))
  env = {k: v for k, v in os.environ.items()
         if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell: not set
  env["PYTHONPATH"] = str(ROOT)  # as `pip install -e .` does
  result = subprocess.run(
      [sys.executable, str(script), f"--config={TINY}",
       f"--workdir={tmp / 'run'}", f"--config.data.data_dir={tmp / 'data'}",
       "--config.train.fidelity_every=2", "--config.train.log_every=1"],
      cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:]
  assert "Done: sideways, 4 steps" in result.stdout, result.stdout[-3000:]
  return result.stdout


def test_console_script_prints_no_tensorflow_start_up_lines(console_run):
  for noise in TF_NOISE:
    assert noise not in console_run, noise


def test_a_warning_logged_mid_run_starts_its_own_line(console_run):
  lines = console_run.split("\n")
  warned = [line for line in lines if "fidelity/risk =" in line]
  assert len(warned) == 1, console_run[-3000:]
  # absl's format, from the first character: no progress bar before it.
  assert re.match(r"W\d{4} [\d:.]+ +\d+ hooks\.py:\d+\] step 2: "
                  r"fidelity/risk", warned[0]), repr(warned[0][:300])
  # The bar goes on below the warning.
  after = "\n".join(lines[lines.index(warned[0]) + 1:])
  assert "4/4" in after


def test_python_warnings_end_the_bar_line_first(monkeypatch):
  stdout, stderr = io.StringIO(), io.StringIO()
  monkeypatch.setattr(sys, "stdout", stdout)
  monkeypatch.setattr(sys, "stderr", stderr)
  with warnings.catch_warnings():
    warnings.simplefilter("always")
    # Python's default display (pytest's own recorder would hide it).
    warnings.showwarning = (lambda message, category, *args, **kwargs:
                            sys.stderr.write(f"{category.__name__}: "
                                             f"{message}\n"))
    bar = progress.ProgressBar(10, 0, unit_name="step")
    with bar:
      bar.update(3, [("loss", 1.0)])
      assert not stdout.getvalue().endswith("\n")  # the bar's line is open
      warnings.warn("something odd")
      assert stdout.getvalue().endswith("\n")  # ended before the warning
      assert stderr.getvalue() == "UserWarning: something odd\n"
      warnings.warn("again")  # the line is already ended: no blank line
      assert not stdout.getvalue().endswith("\n\n")
      bar.update(10)
    assert stdout.getvalue().endswith("\n")
    shown = warnings.showwarning
  assert shown.__name__ == "<lambda>"  # restored on leaving the bar


def test_an_error_leaving_the_bar_ends_its_line_first(monkeypatch):
  stdout = io.StringIO()
  monkeypatch.setattr(sys, "stdout", stdout)
  bar = progress.ProgressBar(10, 0, unit_name="step")
  with pytest.raises(FloatingPointError):
    with bar:
      bar.update(3, [("loss", 1.0)])
      assert not stdout.getvalue().endswith("\n")
      raise FloatingPointError("loss is nan at step 3")
  assert stdout.getvalue().endswith("\n")  # the error's line is its own


def test_a_nan_stop_prints_its_message_on_a_line_of_its_own(tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "bin" / "train"), f"--config={TINY}",
       f"--workdir={tmp_path / 'run'}",
       f"--config.data.data_dir={tmp_path / 'data'}",
       "--config.train.learning_rate=1e30", "--config.train.log_every=1"],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=600)
  assert result.returncode == 3, result.stdout[-3000:]
  errors = [line for line in result.stdout.splitlines()
            if "error:" in line]
  assert len(errors) == 1 and errors[0].startswith("train: error: "), \
      result.stdout[-3000:]


def test_rewriting_the_checkpoint_state_prints_no_deprecation(
    tmp_path, capfd, caplog):
  import tensorflow as tf  # noqa: PLC0415
  from sideways_tf.run import checkpoints  # noqa: PLC0415
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(v=tf.Variable(1.0)), str(tmp_path), max_to_keep=3)
  manager.save()
  manager.save()
  (tmp_path / "checkpoint").unlink()  # stale: newest_readable rewrites it
  with caplog.at_level("INFO"):
    newest, bad = checkpoints.newest_readable(tmp_path)
  assert newest.endswith("ckpt-2") and not bad
  assert tf.train.latest_checkpoint(str(tmp_path)) == newest  # rewritten
  printed = capfd.readouterr()
  logged = "\n".join(r.getMessage() for r in caplog.records)
  for text in (printed.out, printed.err, logged):
    assert "deprecated" not in text, text


# Runs `start` with imports of TensorFlow/Keras refused, printing the
# sideways_tf function the first one came from.
_PROBE = """
import sys, traceback
class Refuse:
  def find_spec(self, fullname, path=None, target=None):
    if fullname.split(".")[0] in ("tensorflow", "keras"):
      frames = [f for f in traceback.extract_stack()
                if "sideways_tf" in f.filename]
      print("FIRST", frames[-1].filename, frames[-1].name)
      raise ImportError("refused " + fullname)
sys.meta_path.insert(0, Refuse())
try:
  {start}
except ImportError as error:
  print("STOPPED", error)
"""


def assert_first_tensorflow_import_is_quiet(start):
  result = subprocess.run([sys.executable, "-c", _PROBE.format(start=start)],
                          cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  first = re.search(r"FIRST (\S+) (\S+)", result.stdout)
  assert first, result.stdout + result.stderr[-2000:]
  assert first.group(1).endswith("sideways_tf/run/quiet.py"), result.stdout
  assert first.group(2) == "import_tensorflow", result.stdout


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_imports_tensorflow_quietly_first(name):
  """Each entry module's first TensorFlow import happens inside
  quiet.import_tensorflow (checked without importing TensorFlow: the
  import is refused and where it came from is recorded)."""
  assert_first_tensorflow_import_is_quiet(
      f"import {SCRIPTS[name].split(':')[0]}")


def test_the_example_imports_tensorflow_quietly_first():
  assert_first_tensorflow_import_is_quiet(
      "import runpy; runpy.run_path('examples/keras_fit.py', "
      "run_name='__main__')")


def test_tflite_export_prints_no_converter_lines(tmp_path):
  """SidewaysModel.export(tflite=True) in a user's script that sets no
  TF_CPP_MIN_LOG_LEVEL: the converter's C++ lines (about ten per
  conversion) are hidden."""
  script = f"""
import keras, sideways_tf
from sideways_tf.models import frame_cnn_stages
model = sideways_tf.SidewaysModel(frame_cnn_stages(num_classes=3,
                                                   widths=(2, 2, 2)))
model.compile(optimizer="sgd")
model.build((1, 4, 8, 8, 3))
print("EXPORTING", flush=True)
model.export({str(tmp_path / "exported")!r}, tflite=True)
print("EXPORTED", flush=True)
"""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env["PYTHONPATH"] = str(ROOT)
  result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:]
  export_output = result.stdout.split("EXPORTING\n", 1)[1]
  assert export_output == "EXPORTED\n", export_output[-3000:]
  assert (tmp_path / "exported" / "tflite" / "step.tflite").is_file()


def test_pyproject_license_is_an_spdx_string():
  """setuptools >= 77 prints a deprecation banner for every build (three
  during `make`) for a `license` table; the string form needs >= 77."""
  pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
  assert pyproject["project"]["license"] == "Apache-2.0"
  assert pyproject["build-system"]["requires"] == ["setuptools>=77"]
