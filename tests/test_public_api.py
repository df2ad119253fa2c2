"""The public names README's "Using the engine" needs, from `import sideways_tf`."""

import sideways_tf
from sideways_tf.engine import pipeline
from sideways_tf.engine import module
from sideways_tf.training import data_parallel
from sideways_tf.training import trainer
from sideways_tf import callbacks
from sideways_tf.keras_api import model as keras_model


def test_public_names_are_the_engine_and_trainer_objects():
  assert set(sideways_tf.__all__) == {
      "ALGORITHMS", "ClipResult", "DataParallel", "Pipeline", "SidewaysModel",
      "SidewaysModule", "Trainer", "callbacks", "sparse_softmax_cross_entropy"}
  assert sideways_tf.SidewaysModel is keras_model.SidewaysModel
  assert sideways_tf.callbacks is callbacks
  assert sideways_tf.Pipeline is pipeline.Pipeline
  assert sideways_tf.Trainer is trainer.Trainer
  assert sideways_tf.DataParallel is data_parallel.DataParallel
  assert sideways_tf.SidewaysModule is module.SidewaysModule
  assert {"sideways", "bp"} <= set(sideways_tf.ALGORITHMS)
  assert callable(sideways_tf.Pipeline.compute_gradients)
