"""The Trainer: one optimizer step per clip (or per N ticks) with the clip gradient."""

import keras
import numpy as np
import pytest

import sideways_tf
from sideways_tf.training.trainer import Trainer
from tests import util


def weights(pipe):
  return util.to_numpy(pipe.trainable_variables)


@pytest.mark.parametrize("algorithm", ["sideways", "bp"])
def test_one_sgd_step_per_clip_with_the_clip_gradient(algorithm):
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  frames = util.moving_clip(batch=2, frames=6, shape=(6, 6, 2))
  labels = util.labels_for(2)
  grads = util.to_numpy(pipe.compute_gradients(frames, labels, algorithm))
  before = weights(pipe)
  trainer = Trainer(pipe, keras.optimizers.SGD(0.5), algorithm)
  metrics = trainer.train_step(frames, labels)
  for w, w0, g in zip(weights(pipe), before, grads):
    np.testing.assert_allclose(w, w0 - 0.5 * g, rtol=1e-5, atol=1e-6)
  assert set(metrics) == {"loss", "accuracy"}
  assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0


def copy_pipeline(pipe):
  clone = sideways_tf.Pipeline([keras.models.clone_model(s)
                                for s in pipe.stages])
  clone.allocate_state(2, (6, 6, 2))
  for copy, stage in zip(clone.stages, pipe.stages):
    copy.set_weights(stage.get_weights())
  return clone


def test_update_every_n_ticks_is_online_sgd_on_the_stream():
  frames = util.moving_clip(batch=2, frames=8, shape=(6, 6, 2))
  labels = util.labels_for(2)
  pipe = sideways_tf.Pipeline(util.conv_stages(3))
  pipe.allocate_state(2, (6, 6, 2))
  reference, per_clip = copy_pipeline(pipe), copy_pipeline(pipe)
  # Reference: the public API by hand, chunk by chunk, updating in between.
  reference.reset_state()
  updates = 0
  for start in range(0, 8, 3):
    result = reference.compute_gradients_and_metrics(
        frames[:, start:start + 3], labels, reset=False)
    if float(result.num_loss_terms) > 0:
      updates += 1
      for v, g in zip(reference.trainable_variables, result.gradients):
        v.assign(v - 0.1 * g)
  assert updates == 3  # ticks 1-3 hold the first valid loss (tick 3)
  Trainer(pipe, keras.optimizers.SGD(0.1), "sideways",
          update_every_ticks=3).train_step(frames, labels)
  for w, expected in zip(weights(pipe), weights(reference)):
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
  # Three updates within the clip are not one update per clip.
  Trainer(per_clip, keras.optimizers.SGD(0.1)).train_step(frames, labels)
  assert not np.allclose(weights(per_clip)[0], weights(pipe)[0], atol=1e-4)


def test_evaluate_reports_clip_and_frame_accuracy():
  pipe = sideways_tf.Pipeline(util.dense_stages(2, num_classes=3))
  frames = util.moving_clip(batch=4, frames=5)
  labels = np.array([0, 1, 2, 0])
  logits = np.asarray(pipe.predict_frames(frames))
  clip_expected = np.mean(logits.mean(1).argmax(-1) == labels)
  frame_expected = np.mean(logits.argmax(-1) == labels[:, None])
  trainer = Trainer(pipe, keras.optimizers.SGD(0.1))
  batches = [{"video": frames[:2], "label": labels[:2]},
             {"video": frames[2:], "label": labels[2:]}]
  metrics = trainer.evaluate(batches)
  assert metrics["clip_accuracy"] == pytest.approx(clip_expected)
  assert metrics["frame_accuracy"] == pytest.approx(frame_expected)
  with pytest.raises(ValueError, match="empty"):
    trainer.evaluate([])


@pytest.mark.parametrize("algorithm", ["sideways", "bp"])
def test_training_fits_a_learnable_task(algorithm):
  """Class = sign pattern of a smooth clip: both algorithms fit it."""
  rng = np.random.RandomState(0)
  pipe = sideways_tf.Pipeline(util.dense_stages(3, in_dim=5, hidden=16,
                                                num_classes=2))
  trainer = Trainer(pipe, keras.optimizers.Adam(0.02), algorithm)
  centres = np.stack([np.ones(5), -np.ones(5)]).astype("float32")
  losses = []
  for _ in range(60):
    labels = rng.randint(0, 2, size=8)
    frames = (centres[labels][:, None, :] +
              0.3 * util.moving_clip(batch=8, frames=6,
                                     seed=rng.randint(1 << 30)))
    losses.append(trainer.train_step(frames, labels)["loss"])
  assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:5])


def test_rejects_bad_trainer_settings():
  pipe = sideways_tf.Pipeline(util.dense_stages(2))
  with pytest.raises(ValueError, match="unknown algorithm 'sgd'"):
    Trainer(pipe, keras.optimizers.SGD(0.1), "sgd")
  with pytest.raises(ValueError, match="update_every_ticks must be >= 0"):
    Trainer(pipe, keras.optimizers.SGD(0.1), update_every_ticks=-1)
