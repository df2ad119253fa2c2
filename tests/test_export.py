"""SavedModel export: loads without sideways_tf, stream == clip."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import sideways_tf
from sideways_tf.models import frame_cnn_stages
from sideways_tf.serving import export

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("export")
  pipe = sideways_tf.Pipeline(frame_cnn_stages(5, num_modules=4,
                                               widths=(4, 8, 8)))
  rng = np.random.RandomState(0)
  video = rng.randint(0, 256, size=(2, 6, 16, 16, 3)).astype(np.uint8)
  expected = np.asarray(pipe.predict_frames(video.astype(np.float32) / 255.0))
  path = export.export_saved_model(pipe, (16, 16, 3), tmp / "model")
  np.save(tmp / "video.npy", video)
  return path, tmp / "video.npy", expected


def run_check(saved_model, video):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run(
      [sys.executable, str(ROOT / "tests" / "export_check.py"),
       str(saved_model), str(video)],
      cwd="/", env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_saved_model_streams_like_the_clip_path_without_the_package(exported):
  path, video, expected = exported
  report = run_check(path, video)
  assert report["num_modules"] == 4
  # Frames 1..T leave the pipeline at ticks L..T+L-1.
  assert report["valid"] == [False] * 3 + [True] * 6
  assert report["max_abs_diff_stream_vs_clip"] < 1e-5
  assert report["clip_logits_is_mean"]
  np.testing.assert_allclose(report["probabilities_sum"], 1.0, rtol=1e-5)
  np.testing.assert_allclose(report["frame_logits"], expected, rtol=1e-5,
                             atol=1e-6)


def test_export_refuses_to_overwrite_by_default(exported):
  path, _, _ = exported
  pipe = sideways_tf.Pipeline(frame_cnn_stages(5, num_modules=2))
  with pytest.raises(ValueError, match="exists"):
    export.export_saved_model(pipe, (16, 16, 3), path)


def test_export_resizes_other_frame_sizes(exported, tmp_path):
  """uint8 -> float scaling and resizing happen inside the signature."""
  path, _, _ = exported
  import tensorflow as tf
  model = tf.saved_model.load(str(path))
  big = np.full((1, 3, 32, 32, 3), 255, np.uint8)
  small = np.full((1, 3, 16, 16, 3), 255, np.uint8)
  a = model.signatures["serving_default"](video=tf.constant(big))
  b = model.signatures["serving_default"](video=tf.constant(small))
  np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-6)


def test_docs_streaming_snippet_runs_on_an_exported_model(exported, capsys):
  """docs/export.md's python block, as written but for the model path."""
  path, _, _ = exported
  doc = (ROOT / "docs" / "export.md").read_text()
  code = doc.split("```python\n", 1)[1].split("```", 1)[0]
  assert '"/tmp/exported"' in code
  exec(compile(code.replace('"/tmp/exported"', repr(str(path))),
               "docs/export.md", "exec"), {})
  printed = capsys.readouterr().out
  # 20 frames through 4 modules: frames 1..17 leave it, one logits row each.
  assert printed.count("tf.Tensor(") == 20 - (4 - 1), printed[-2000:]


def _documented_signatures():
  """{signature: {"inputs"|"outputs": {name: (dtype, shape)}}} from the
  `saved_model_cli show --all` excerpt of docs/export.md."""
  text = (ROOT / "docs" / "export.md").read_text()
  excerpt = text.split("signatures part:\n\n```\n", 1)[1].split("```", 1)[0]
  signatures, current, side = {}, None, None
  for line in excerpt.splitlines():
    found = re.match(r"signature_def\['(\w+)'\]:", line)
    if found:
      current = signatures.setdefault(found.group(1),
                                      {"inputs": {}, "outputs": {}})
    tensor = re.match(r"\s+(inputs|outputs)\['(\w+)'\]", line)
    if tensor:
      side, name = tensor.groups()
    dtype = re.match(r"\s+dtype: (DT_\w+)", line)
    if dtype:
      current[side][name] = [dtype.group(1)]
    shape = re.match(r"\s+shape: (.*)", line)
    if shape:
      current[side][name].append(
          tuple(int(d) for d in re.findall(r"-?\d+", shape.group(1))))
  return signatures


def test_the_documented_saved_model_cli_excerpt_is_what_an_export_shows(
    tmp_path):
  """docs/export.md's excerpt: the default model (configs/default.py, 32x32
  frames, 4 classes) exported, signature by signature."""
  import tensorflow as tf  # noqa: PLC0415
  from tensorflow.core.framework import types_pb2  # noqa: PLC0415
  from sideways_tf.configs import default  # noqa: PLC0415
  from sideways_tf.training import builder  # noqa: PLC0415
  setup = builder.build_model(default.get_config(), 4, (32, 32, 3))
  path = export.export_saved_model(setup.pipeline, (32, 32, 3),
                                   tmp_path / "model")
  loaded = tf.saved_model.load(str(path))

  def described(spec):
    return [types_pb2.DataType.Name(spec.dtype.as_datatype_enum),
            tuple(-1 if d is None else d for d in spec.shape.as_list())]
  actual = {
      name: {"inputs": {k: described(v) for k, v in
                        function.structured_input_signature[1].items()},
             "outputs": {k: described(v) for k, v in
                         function.structured_outputs.items()}}
      for name, function in loaded.signatures.items()}
  assert _documented_signatures() == actual
