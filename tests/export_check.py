"""Runs in a process where sideways_tf cannot be imported: loads a SavedModel
with plain TensorFlow, checks stream == clip, and prints the results as JSON.

Usage: python tests/export_check.py SAVED_MODEL_DIR VIDEO.npy
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Make sure the package really is out of reach, whatever the cwd or path,
# and also when it is pip-installed (editable installs use a meta-path finder).
sys.path = [p for p in sys.path if not os.path.exists(
    os.path.join(p or ".", "sideways_tf"))]


class _RefuseSidewaysTf:
  """A meta-path finder that makes `import sideways_tf` fail."""

  def find_spec(self, name, path=None, target=None):
    if name == "sideways_tf" or name.startswith("sideways_tf."):
      raise ImportError(f"{name} is deliberately out of reach here")
    return None


sys.meta_path.insert(0, _RefuseSidewaysTf())

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(saved_model_dir, video_path):
  try:
    import sideways_tf  # noqa: F401
    raise SystemExit("sideways_tf is importable; the check would prove nothing")
  except ImportError:
    pass
  video = np.load(video_path)  # uint8 [B, T, H, W, C]
  batch, num_frames = video.shape[:2]
  model = tf.saved_model.load(saved_model_dir)
  clip = model.signatures["serving_default"](video=tf.constant(video))
  state = model.signatures["init_state"](batch_size=tf.constant(batch))
  names = sorted(k for k in state if k != "ticks")
  num_modules = len([k for k in names if k.startswith("activation_")]) + 1
  padding = np.zeros_like(video[:, 0])
  streamed, valid = [], []
  for t in range(num_frames + num_modules - 1):
    frame = video[:, t] if t < num_frames else padding
    out = model.signatures["step"](frame=tf.constant(frame), **state)
    state = {k: out[k] for k in names + ["ticks"]}
    valid.append(bool(np.all(out["valid"].numpy())))
    if valid[-1]:
      streamed.append(out["logits"].numpy())
  streamed = np.stack(streamed, axis=1)
  print(json.dumps({
      "num_modules": num_modules,
      "valid": valid,
      "max_abs_diff_stream_vs_clip": float(
          np.abs(streamed - clip["frame_logits"].numpy()).max()),
      "clip_logits_is_mean": bool(np.allclose(
          clip["logits"].numpy(), clip["frame_logits"].numpy().mean(1),
          atol=1e-5)),
      "probabilities_sum": clip["probabilities"].numpy().sum(-1).tolist(),
      "frame_logits": clip["frame_logits"].numpy().tolist(),
  }))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
