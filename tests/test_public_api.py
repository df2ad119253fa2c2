"""The public names README's "Using the engine" needs, from `import sideways_tf`."""

import sideways_tf
from sideways_tf.engine import pipeline
from sideways_tf.engine import module
from sideways_tf.training import trainer


def test_public_names_are_the_engine_and_trainer_objects():
  assert set(sideways_tf.__all__) == {
      "ALGORITHMS", "ClipResult", "Pipeline", "SidewaysModule", "Trainer",
      "sparse_softmax_cross_entropy"}
  assert sideways_tf.Pipeline is pipeline.Pipeline
  assert sideways_tf.Trainer is trainer.Trainer
  assert sideways_tf.SidewaysModule is module.SidewaysModule
  assert {"sideways", "bp"} <= set(sideways_tf.ALGORITHMS)
  assert callable(sideways_tf.Pipeline.compute_gradients)
