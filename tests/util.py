"""Small models and clips for the engine tests."""

import ast
import json

import keras
import numpy as np
import tensorflow as tf


def dense_stages(num_modules, in_dim=5, hidden=4, num_classes=3):
  """Tanh dense modules and a linear top: the tiny network of the references."""
  stages = []
  for k in range(num_modules):
    top = k == num_modules - 1
    stage = keras.layers.Dense(num_classes if top else hidden,
                               activation=None if top else "tanh",
                               name=f"dense_{k}")
    stage.build((None, in_dim if k == 0 else hidden))
    stages.append(stage)
  return stages


def conv_stages(num_modules, num_classes=3):
  """Conv modules on small images; the top global-pools and classifies."""
  stages = []
  for k in range(num_modules - 1):
    stages.append(keras.Sequential([
        keras.layers.Conv2D(4, 3, padding="same", activation="tanh"),
    ], name=f"conv_{k}"))
  stages.append(keras.Sequential([
      keras.layers.Conv2D(4, 3, padding="same", activation="tanh"),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(num_classes),
  ], name="head"))
  return stages


def moving_clip(batch=2, frames=7, shape=(5,), seed=0):
  """A smooth but non-static clip: a random start drifting by small steps."""
  rng = np.random.RandomState(seed)
  start = rng.randn(batch, 1, *shape)
  drift = 0.3 * rng.randn(batch, 1, *shape)
  steps = np.arange(frames).reshape(1, frames, *([1] * len(shape)))
  noise = 0.1 * rng.randn(batch, frames, *shape)
  return (start + drift * steps + noise).astype("float32")


def static_clip(batch=2, frames=7, shape=(5,), seed=0):
  rng = np.random.RandomState(seed)
  frame = rng.randn(batch, 1, *shape).astype("float32")
  return np.repeat(frame, frames, axis=1)


def labels_for(batch, num_classes=3):
  return np.arange(batch) % num_classes


def to_numpy(tensors):
  return [np.asarray(t) for t in tensors]


def assert_two_chunks_equal_whole(pipe, frames, labels, split, terms,
                                  algorithm="sideways"):
  """Streaming `frames` as two chunks (cut at `split`, no reset between)
  gives the whole clip's gradient, each chunk's normalised by its own valid
  loss terms: `terms` = (first, second) per example."""
  whole = pipe.compute_gradients(frames, labels, algorithm)
  pipe.reset_state()
  first = pipe.compute_gradients_and_metrics(frames[:, :split], labels,
                                             algorithm, reset=False)
  second = pipe.compute_gradients_and_metrics(frames[:, split:], labels,
                                              algorithm, reset=False)
  batch = frames.shape[0]
  assert (float(first.num_loss_terms), float(second.num_loss_terms)) == (
      batch * terms[0], batch * terms[1])
  for w, a, b in zip(whole, first.gradients, second.gradients):
    np.testing.assert_allclose(np.asarray(w) * sum(terms),
                               np.asarray(a) * terms[0]
                               + np.asarray(b) * terms[1],
                               rtol=1e-4, atol=1e-6)


def free_ports(count):
  """`count` free TCP ports on 127.0.0.1 (for local multi-worker tests)."""
  import socket
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def canonical(device):
  """(type, index) of a device string, whatever job/replica prefix it has."""
  spec = tf.DeviceSpec.from_string(device)
  return spec.device_type, spec.device_index


def function_node_devices(concrete):
  """{node name: (op type, device)} over the graph and the functions it calls."""
  graph_def = concrete.graph.as_graph_def()
  nodes = {n.name: (n.op, n.device) for n in graph_def.node}
  for function in graph_def.library.function:
    nodes.update({f"{function.signature.name}/{n.name}": (n.op, n.device)
                  for n in function.node_def})
  return nodes


def write_finished_run(workdir, result, overrides):
  """A run as gap_map.run_one leaves it, in `workdir` (created): its
  result.json, eval.json at result["steps"], and the config.json bin/train
  writes for `overrides` ({"a.b": text}: nested keys, values parsed as
  Python literals where they are one, as the config flags do)."""
  workdir.mkdir(parents=True)
  (workdir / "result.json").write_text(json.dumps(result))
  (workdir / "eval.json").write_text(json.dumps({"step": result["steps"]}))
  config = {}
  for key, text in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node.setdefault(part, {})
    try:
      node[leaf] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      node[leaf] = text
  (workdir / "config.json").write_text(json.dumps(config))
