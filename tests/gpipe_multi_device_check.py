"""GPipe on N logical CPUs, in its own process (TF sets devices once).

Usage: python -m tests.gpipe_multi_device_check NUM_DEVICES
Prints "OK" after asserting, with and without re-materialisation and for
two micro-batch sizes, that
  * the placed GPipe gradient equals BP's without placement (exact),
  * every op named under stage_k, forward and backward clocks alike, is on
    device k (so stage k and k+1 can work on neighbouring micro-batches at
    once).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

NUM_DEVICES = int(sys.argv[1]) if len(sys.argv) > 1 else 4
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_DEVICES)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sideways_tf  # noqa: E402
from tests import util  # noqa: E402
from tests.multi_device_check import canonical  # noqa: E402
from tests.multi_device_check import function_node_devices  # noqa: E402


def main():
  devices = [d.name for d in tf.config.list_logical_devices("CPU")]
  assert len(devices) == NUM_DEVICES, devices
  keras.utils.set_random_seed(0)
  num_frames = 2 * NUM_DEVICES
  frames = util.moving_clip(batch=2, frames=num_frames, shape=(6, 6, 2))
  labels = util.labels_for(2)
  stages = util.conv_stages(NUM_DEVICES)
  bp = util.to_numpy(sideways_tf.Pipeline(stages).compute_gradients(
      frames, labels, "bp"))
  checked = 0
  for rematerialize in (False, True):
    for micro_batch_frames in (1, 2):
      placed = sideways_tf.Pipeline(
          stages, devices=devices, gpipe_micro_batch_frames=micro_batch_frames,
          gpipe_rematerialize=rematerialize)
      grads = util.to_numpy(placed.compute_gradients(frames, labels, "gpipe"))
      for g, e in zip(grads, bp):
        assert np.abs(g - e).max() <= 1e-5 * np.abs(e).max(), (
            rematerialize, micro_batch_frames, np.abs(g - e).max())

      prepared = placed.prepare_inputs(frames, labels, "gpipe")
      concrete = tf.function(
          lambda f, l, p=placed: p.clip_gradients(f, l, "gpipe")
      ).get_concrete_function(*prepared)
      nodes = function_node_devices(concrete)
      for k, device in enumerate(devices):
        stage_nodes = {n: d for n, d in nodes.items() if f"stage_{k}/" in n}
        backward = [n for n in stage_nodes if "grad" in n.lower()]
        assert len(stage_nodes) > 10 and backward, (k, len(stage_nodes))
        wrong = {n: (op, d) for n, (op, d) in stage_nodes.items()
                 if canonical(d) != canonical(device) and
                 not (op == "ReadVariableOp" and d == "")}
        assert not wrong, (rematerialize, k, list(wrong.items())[:5])
        checked += len(stage_nodes)
  print("OK", NUM_DEVICES, "devices,", checked, "stage nodes checked")


if __name__ == "__main__":
  main()
