"""The pieces every bin/ entry point shares."""

import pathlib
import re
import shutil
import sys

import ml_collections
import pytest

import sideways_tf
from sideways_tf.run import cli
from sideways_tf.run import files


def test_extra_arguments_are_named():
  cli.reject_extra_args(["prog"])
  with pytest.raises(ValueError, match=r"unexpected arguments \['oops'\]"):
    cli.reject_extra_args(["prog", "oops"])


def test_algorithm_shorthand_overrides_and_is_checked():
  config = ml_collections.ConfigDict({"algorithm": "sideways"})
  assert cli.with_algorithm(config, None).algorithm == "sideways"
  assert cli.with_algorithm(config, "bp").algorithm == "bp"
  assert cli.with_algorithm(config, "gpipe").algorithm == "gpipe"
  from sideways_tf.engine import algorithms  # noqa: PLC0415
  with pytest.raises(ValueError, match=re.escape(
      f"{algorithms.names_for_humans()}, got 'backprop'")):
    cli.with_algorithm(ml_collections.ConfigDict({"algorithm": "backprop"}),
                       None)


def test_workdir_is_absolute_or_named_after_the_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.resolve_workdir("runs/a", None) == (tmp_path / "runs" / "a")
  config = ml_collections.ConfigDict({"experiment": "motion_skip",
                                      "algorithm": "bp"})
  assert cli.resolve_workdir("", config) == (
      files.PROJECT_ROOT / "workdir" / "motion_skip_bp")


def test_default_config_ships_in_the_package():
  path = pathlib.Path(cli.default_config_path())
  assert path.is_file()
  assert path.parent.parent == pathlib.Path(sideways_tf.__file__).resolve().parent


def test_atomic_write_replaces_whole_files(tmp_path):
  target = tmp_path / "out.json"
  files.atomic_write_text(target, "first")
  files.atomic_write_text(target, "second")
  assert target.read_text() == "second"
  assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp left


def test_suggested_commands_run_with_this_interpreter(monkeypatch, tmp_path):
  """bin/* started by another python (no TensorFlow outside the venv)
  fails: a printed command names this interpreter, as a path that works
  from the working directory."""
  monkeypatch.chdir(files.PROJECT_ROOT)
  interpreter, script = cli.command("prepare_videos").split()
  assert pathlib.Path(interpreter).resolve() == pathlib.Path(
      sys.executable).resolve()
  assert script == "bin/prepare_videos"
  assert cli.config_file("video_folder.py") == "configs/video_folder.py"
  monkeypatch.chdir(tmp_path)  # elsewhere: paths that still work
  interpreter, script = cli.command("train").split()
  assert pathlib.Path(script).resolve() == files.PROJECT_ROOT / "bin" / "train"
  assert pathlib.Path(cli.config_file("video_folder.py")).is_file()


def test_venv_tools_are_named_by_a_path_not_found_on_path(monkeypatch):
  """`saved_model_cli` is not on PATH unless the venv is activated."""
  monkeypatch.setenv("PATH", "/usr/bin:/bin")
  tool = cli.venv_tool("saved_model_cli")
  assert "/" in tool and shutil.which(tool) is not None
