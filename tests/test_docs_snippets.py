"""The README and docs snippets run as written (item 13 of the robustness
list): the engine snippet runs outside the checkout, the export snippet
defines every name it uses, `make setup` installs the package."""

import ast
import builtins
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def python_block(markdown: str, after: str) -> str:
  return markdown.split(after, 1)[1].split("```python", 1)[1].split("```")[0]


def test_readme_engine_snippet_runs_outside_the_checkout(tmp_path):
  code = python_block((ROOT / "README.md").read_text(), "## Using the engine")
  env = dict(os.environ, PYTHONPATH=str(ROOT))  # as `pip install -e .` does
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert re.search(r"'loss': [0-9.]+", result.stdout), result.stdout


def test_readme_keras_snippet_runs_verbatim(tmp_path):
  """Complete as written: its data (fixed-size batches, T >= 2L-1 frames,
  floats in [0, 1]), fit, evaluate, and an export with the class names."""
  code = python_block((ROOT / "README.md").read_text(),
                      "## Keras: compile and fit")
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = ast.literal_eval(result.stdout.strip().splitlines()[-1])
  assert set(metrics) == {"loss", "clip_accuracy", "frame_accuracy"}
  exported = tmp_path / "exported"
  assert (exported / "assets.extra" / "class_names.txt").read_text(
      ).split() == ["square", "circle", "triangle", "plus"]
  assert (exported / "tflite" / "step.tflite").stat().st_size > 0
  assert list((tmp_path / "logs" / "validation").iterdir())
  assert not (tmp_path / "backup").exists()  # removed after a finished fit


def _undefined_names(code: str):
  tree = ast.parse(code)
  defined = set(dir(builtins))
  used = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
      defined.add(node.id)
    elif isinstance(node, ast.Name):
      used.append(node.id)
  return sorted(set(used) - defined)


def test_export_snippet_defines_every_name():
  code = python_block((ROOT / "docs" / "export.md").read_text(),
                      "# SavedModel export")
  assert _undefined_names(code) == []
  assert "frames = " in code


def test_make_setup_installs_the_package_and_messages_name_flags():
  makefile = (ROOT / "Makefile").read_text()
  assert re.search(r"pip install .*-e \.", makefile)
  export = (ROOT / "sideways_tf" / "serving" / "export.py").read_text()
  assert "pass --overwrite" in export
  assert ".venv/bin/saved_model_cli" in (ROOT / "docs" / "export.md").read_text()
