"""Runs in its own process: TF must see N logical CPUs before it initialises.

Usage: python -m tests.multi_device_check NUM_DEVICES
Prints "OK" after asserting that
  * each stage's variables and buffers live on its device,
  * each stage's ops in the tick loop are placed on its device,
  * Sideways and BP gradients equal those of the default-placement run.
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
from tests.util import canonical, function_node_devices  # noqa: E402


def main():
  logical = tf.config.list_logical_devices("CPU")
  assert len(logical) == NUM_DEVICES, logical
  devices = [d.name for d in logical]
  keras.utils.set_random_seed(0)
  frames = util.moving_clip(batch=2, frames=2 * NUM_DEVICES + 1,
                            shape=(6, 6, 2))
  labels = util.labels_for(2)

  # Unbuilt stages are built under their device by the pipeline.
  placed_stages = util.conv_stages(NUM_DEVICES)
  placed = sideways_tf.Pipeline(placed_stages, devices=devices)
  placed_grads = {a: util.to_numpy(placed.compute_gradients(frames, labels, a))
                  for a in sideways_tf.ALGORITHMS}
  default = sideways_tf.Pipeline(placed_stages)  # same weights, no devices
  for algorithm in sideways_tf.ALGORITHMS:
    expected = util.to_numpy(default.compute_gradients(frames, labels,
                                                       algorithm))
    for a, e in zip(placed_grads[algorithm], expected):
      np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7)

  for k, (module, device) in enumerate(zip(placed.modules, devices)):
    for variable in module.stage.trainable_variables:
      assert canonical(variable.value.device) == canonical(device), (
          k, variable.path, variable.value.device)
    for buffer in module.state_variables:
      assert canonical(buffer.value.device) == canonical(device), (
          k, buffer.path, buffer.value.device)

  # Ops: every node of the tick loop named under stage_k is pinned to device k.
  prepared = placed.prepare_inputs(frames, labels)
  concrete = tf.function(
      lambda f, l: placed.clip_gradients(f, l, "sideways")
  ).get_concrete_function(*prepared)
  nodes = function_node_devices(concrete)
  for k, device in enumerate(devices):
    stage_nodes = {n: d for n, d in nodes.items() if f"stage_{k}/" in n}
    assert len(stage_nodes) > 10, (k, len(stage_nodes))
    # A variable read carries no device of its own: TF runs it where the
    # variable lives, which is checked above.
    wrong = {n: (op, d) for n, (op, d) in stage_nodes.items()
             if canonical(d) != canonical(device) and
             not (op == "ReadVariableOp" and d == "")}
    assert not wrong, (k, list(wrong.items())[:5])
  print("OK", NUM_DEVICES, "devices,", len(nodes), "nodes checked")


if __name__ == "__main__":
  main()
