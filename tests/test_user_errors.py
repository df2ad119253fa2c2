"""User errors (items 9-11 of the robustness list): at most 3 lines, no
traceback, and the corrected command then works with the same workdir."""

import pathlib
import subprocess
import sys

import pytest

from sideways_tf.run import cli
from sideways_tf.run import run_keys
from sideways_tf.run import user_errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "faults" / "tiny_config.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("user_error_data")


def train(workdir, data_dir, *args):
  return subprocess.run(
      [sys.executable, str(ROOT / "bin" / "train"), f"--config={TINY}",
       f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *args],
      capture_output=True, text=True, timeout=600, cwd=ROOT)


def error_lines(result):
  """Every line printed but the run's opening line: TensorFlow's C++
  start-up lines would count too."""
  return [line for line in (result.stdout + result.stderr).splitlines()
          if line.strip() and not line.startswith("Training ")]


@pytest.mark.parametrize("args, expected", [
    (["--config.train.num_step=3"], "did you mean 'num_steps'"),
    (["--config=configs/no_such_config.py"],
     "configs/no_such_config.py not found"),
    (["--config.algorithm=BP"], "'sideways', 'bp', 'gpipe' or 'pipelined_bp', "
     "got 'BP'"),
    (["--num_steps=3"], "did you mean --config.train.num_steps"),
    (["--config.data.name=video_folder", "--config.data.path=/no/such/dir"],
     "/no/such/dir/metadata.json not found"),
    (["--config.train.keep_checkpoints=0"],
     "--config.train.keep_checkpoints must be a positive integer"),
    (["--config.model.widths=abc"], "--config.model.widths must be"),
])
def test_user_error_is_short_and_has_no_traceback(
    tmp_path, data_dir, args, expected):
  result = train(tmp_path / "run", data_dir, *args)
  lines = error_lines(result)
  assert result.returncode == user_errors.EXIT_USER, result.stderr
  assert "Traceback" not in result.stderr
  assert len(lines) <= 3, lines
  assert expected in "\n".join(lines)
  assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("program, args, expected", [
    ("train", ["--config.train.num_step=5"], "did you mean 'num_steps'"),
    ("make_digit_videos", ["--output_dir=OUT", "--config.data.num_trian=5"],
     "did you mean 'num_train'"),
])
def test_misspelled_field_of_the_default_config(tmp_path, program, args,
                                                expected):
  """Without --config= the default file loads while the flag is defined,
  before the program's error handling: the same two lines, exit 2."""
  args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
  result = subprocess.run(
      [sys.executable, str(ROOT / "bin" / program), *args,
       f"--workdir={tmp_path / 'run'}"] if program == "train" else
      [sys.executable, str(ROOT / "bin" / program), *args],
      capture_output=True, text=True, timeout=600, cwd=tmp_path)
  lines = error_lines(result)
  assert result.returncode == user_errors.EXIT_USER, result.stderr[-2000:]
  assert len(lines) == 2 and expected in lines[0], lines
  assert "Traceback" not in result.stderr
  assert list(tmp_path.iterdir()) == []


def test_config_file_without_get_config(tmp_path, data_dir):
  config = tmp_path / "mine.py"
  config.write_text("learning_rate = 0.1\n")
  result = subprocess.run(
      [sys.executable, str(ROOT / "bin" / "train"), f"--config={config}",
       f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True,
      timeout=600, cwd=ROOT)
  lines = error_lines(result)
  assert result.returncode == user_errors.EXIT_USER
  assert len(lines) == 2 and f"{config} defines no get_config()" in lines[0]
  assert not (tmp_path / "run").exists()


def test_workdir_that_is_a_file(tmp_path, data_dir):
  path = tmp_path / "a_file"
  path.write_text("x")
  result = train(path, data_dir)
  lines = error_lines(result)
  assert result.returncode == user_errors.EXIT_USER
  assert len(lines) <= 3 and "is a file, not a directory" in lines[0]
  assert path.read_text() == "x"


def test_failed_start_writes_nothing_and_the_fix_works(tmp_path, data_dir):
  """T < L fails before config.json is written: the fixed rerun (same
  workdir) is not refused as 'another config'; rerunning past num_steps says
  there is nothing to do."""
  workdir = tmp_path / "run"
  result = train(workdir, data_dir, "--config.data.num_frames=2",
                 "--config.train.num_steps=2")
  lines = error_lines(result)
  assert result.returncode == user_errors.EXIT_USER
  assert len(lines) <= 3 and "T = 2 < L = 4" in "\n".join(lines), lines
  assert "Traceback" not in result.stderr
  assert not (workdir / "config.json").exists()
  fixed = train(workdir, data_dir, "--config.train.num_steps=2")
  assert fixed.returncode == 0, fixed.stderr
  assert "2 steps (2 this run)" in fixed.stdout
  # Quiet start-up: no TF C++ lines, no TFDS download text, no tqdm codes.
  output = fixed.stdout + fixed.stderr
  for noise in ("I0000", "E0000", "absl::InitializeLog", "cuInit",
                "Downloading and preparing", "\x1b[A", "Using custom data"):
    assert noise not in output, noise
  done = train(workdir, data_dir, "--config.train.num_steps=1")
  assert done.returncode == 0
  assert "Already at step 2 >= num_steps 1" in done.stdout
  assert "nan" not in done.stdout


def test_overrides_get_their_own_default_workdir(monkeypatch):
  config = type("C", (), {"experiment": "default", "algorithm": "sideways"})
  base = cli.resolve_workdir(None, config, ["bin/train"])
  assert base.name == "default_sideways"
  # How long / how often: the same run.
  assert cli.resolve_workdir(None, config, [
      "bin/train", "--config.train.num_steps=2000"]) == base
  other = cli.resolve_workdir(None, config, [
      "bin/train", "--config.train.learning_rate=1e-4",
      "--config.model.widths=(8, 8)"])
  assert other.name == \
      "default_sideways-learning_rate=1e-4,widths=_8,_8_"
  assert cli.resolve_workdir("/x/y", config, ["bin/train", "--config.a=1"]) \
      == pathlib.Path("/x/y")
  assert "train.learning_rate" in run_keys.RESUMABLE_KEYS
