"""The algorithm family: one table, one interface. (That the engine imports
downward only, no circle, is a house rule: tests/test_house_rules.py.)"""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from sideways_tf.engine import algorithms
from sideways_tf.engine.algorithm import Algorithm
from sideways_tf.engine.algorithm import ClipResult

ROOT = pathlib.Path(sideways_tf.__file__).parent.parent


def test_the_table_lists_each_algorithm_once_with_its_interface():
  assert sideways_tf.ALGORITHMS == tuple(algorithms.REGISTRY)
  assert {"sideways", "bp", "gpipe"} <= set(algorithms.ALGORITHMS)
  for name, algorithm in algorithms.REGISTRY.items():
    assert isinstance(algorithm, Algorithm) and algorithm.name == name
    assert algorithm.summary
    assert set(algorithm.config_keys) <= set(algorithm.options)
  assert not algorithms.get("sideways").exact
  assert algorithms.get("bp").exact and algorithms.get("gpipe").exact
  with pytest.raises(ValueError, match="unknown algorithm 'adam'.*'sideways'"):
    algorithms.get("adam")


def test_docs_show_the_table_as_the_registry_writes_it():
  text = (ROOT / "docs" / "engine.md").read_text()
  begin, end = algorithms.TABLE_MARKERS
  section = text[text.index(begin) + len(begin):text.index(end)].strip()
  assert section == algorithms.table_markdown(), (
      "docs/engine.md is stale: python -m sideways_tf.engine.algorithms "
      "docs/engine.md")


def test_every_config_key_of_an_option_exists_in_the_default_config():
  from sideways_tf.configs import default
  options = algorithms.options_from_config(default.get_config())
  assert set(options) == {k for a in algorithms.REGISTRY.values()
                          for k in a.config_keys}


def test_pipeline_refuses_an_option_no_algorithm_knows():
  stage = tf.keras.layers.Dense(3)
  with pytest.raises(TypeError, match="gpipe_micro_batch_frame\\b"):
    sideways_tf.Pipeline([stage], gpipe_micro_batch_frame=2)
  pipe = sideways_tf.Pipeline([stage], gpipe_micro_batch_frames=2)
  assert pipe.gpipe_options.micro_batch_frames == 2
  with pytest.raises(ValueError, match="micro_batch_frames"):
    sideways_tf.Pipeline([stage], gpipe_micro_batch_frames=0)


class _HalfBP(Algorithm):
  """A toy member of the family: BP's gradient halved."""
  name = "half_bp"
  summary = "half of BP"

  def clip_gradients(self, pipeline, frames, labels, reset, loss_scale):
    result = algorithms.get("bp").clip_gradients(pipeline, frames, labels,
                                                 reset, loss_scale)
    return ClipResult([g / 2 for g in result.gradients], *result[1:])


def test_an_algorithm_added_to_the_table_runs_through_pipeline_and_trainer(
    monkeypatch):
  monkeypatch.setitem(algorithms.REGISTRY, "half_bp", _HalfBP())
  tf.keras.utils.set_random_seed(0)
  stages = [tf.keras.Sequential([tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(4, "relu")]),
            tf.keras.layers.Dense(3)]
  pipe = sideways_tf.Pipeline(stages)
  frames = np.random.default_rng(0).normal(size=(2, 5, 4, 4, 1)).astype(
      np.float32)
  labels = np.array([0, 2])
  bp = pipe.compute_gradients(frames, labels, "bp")
  half = pipe.compute_gradients(frames, labels, "half_bp")
  for h, b in zip(half, bp):
    np.testing.assert_allclose(h.numpy(), b.numpy() / 2, rtol=1e-6)
  trainer = sideways_tf.Trainer(pipe, tf.keras.optimizers.SGD(0.1),
                                algorithm="half_bp")
  before = [v.numpy() for v in pipe.trainable_variables]
  trainer.train_step(frames, labels)
  for v, b, g in zip(pipe.trainable_variables, before, half):
    np.testing.assert_allclose(v.numpy(), b - 0.1 * g.numpy(), rtol=1e-5,
                               atol=1e-6)
