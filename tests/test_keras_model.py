"""SidewaysModel: Keras fit/evaluate/predict are the Pipeline's and Trainer's."""

import csv
import json
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf
from sideways_tf.run import summaries
from sideways_tf import Trainer
from tests import util

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHAPE = (6, 6, 2)  # frame shape
NUM_FRAMES = 6


def clips(num=4, seed=0):
  video = util.moving_clip(batch=num, frames=NUM_FRAMES, shape=SHAPE,
                           seed=seed)
  return video, util.labels_for(num).astype("int32")


def dataset(video, label, batch=2, as_dict=False, drop_remainder=True):
  data = (tf.data.Dataset.from_tensor_slices({"video": video, "label": label})
          if as_dict else
          tf.data.Dataset.from_tensor_slices((video, label)))
  return data.batch(batch, drop_remainder=drop_remainder)


def new_model(algorithm="sideways", optimizer=None, **kwargs):
  model = sideways_tf.SidewaysModel(util.conv_stages(3), algorithm=algorithm,
                                    **kwargs)
  model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1))
  return model


def numpy_list(variables):
  return [np.array(v) for v in variables]


def state(model):
  """Everything a checkpoint must bring back."""
  return {"weights": numpy_list(model.pipeline.trainable_variables),
          "buffers": numpy_list(model.pipeline.state_variables),
          "optimizer": numpy_list(model.optimizer.variables)}


# --------------------------------------------------------------- the step

@pytest.mark.parametrize("as_dict", [False, True])
@pytest.mark.parametrize("algorithm", ["sideways", "bp", "pipelined_bp"])
def test_one_sgd_step_of_fit_is_w_minus_lr_times_pipeline_gradient(
    algorithm, as_dict):
  video, label = clips(2)
  model = new_model(algorithm, keras.optimizers.SGD(0.5))
  model.build((2, NUM_FRAMES) + SHAPE)
  expected = model.pipeline.compute_gradients_and_metrics(video, label,
                                                          algorithm)
  before = numpy_list(model.pipeline.trainable_variables)
  history = model.fit(dataset(video, label, as_dict=as_dict), epochs=1,
                      verbose=0)
  after = numpy_list(model.pipeline.trainable_variables)
  for w, w0, g in zip(after, before, expected.gradients):
    np.testing.assert_allclose(w, w0 - 0.5 * np.asarray(g), rtol=1e-5,
                               atol=1e-6)
  assert any(np.abs(w - w0).max() > 0 for w, w0 in zip(after, before))
  # fit reports the Trainer's numbers.
  np.testing.assert_allclose(history.history["loss"], [expected.loss],
                             rtol=1e-6)
  np.testing.assert_allclose(history.history["accuracy"],
                             [expected.accuracy], rtol=1e-6)


def test_algorithm_switches_the_same_model():
  assert set(sideways_tf.ALGORITHMS) >= {"sideways", "bp"}
  for algorithm in sideways_tf.ALGORITHMS:
    assert new_model(algorithm).trainer.algorithm == algorithm


def test_fit_epoch_logs_are_the_mean_of_the_trainer_steps():
  video, label = clips(4)
  model = new_model()
  model.build((2, NUM_FRAMES) + SHAPE)
  # The same steps by hand on a copy.
  reference = new_model()
  reference.build((2, NUM_FRAMES) + SHAPE)
  reference.set_weights(model.get_weights())
  steps = [reference.trainer.train_step(video[i:i + 2], label[i:i + 2])
           for i in (0, 2)]
  history = model.fit(dataset(video, label), epochs=1, verbose=0)
  np.testing.assert_allclose(history.history["loss"],
                             [np.mean([s["loss"] for s in steps])], rtol=1e-6)
  np.testing.assert_allclose(history.history["accuracy"],
                             [np.mean([s["accuracy"] for s in steps])],
                             rtol=1e-6)


# ------------------------------------------------- evaluate and predict

def test_predict_is_the_mean_of_the_pipeline_frame_logits():
  video, label = clips(5)
  model = new_model()
  expected = np.asarray(model.pipeline.predict_frames(video)).mean(axis=1)
  np.testing.assert_allclose(model.predict(video, batch_size=2, verbose=0),
                             expected, rtol=1e-5, atol=1e-6)
  videos_only = tf.data.Dataset.from_tensor_slices(video).batch(3)
  np.testing.assert_allclose(model.predict(videos_only, verbose=0), expected,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.predict(dataset(video, label, 2, True,
                                                   False), verbose=0),
                             expected, rtol=1e-5, atol=1e-6)
  assert model.predict(video, verbose=0).shape == (5, 3)


@pytest.mark.parametrize("as_dict", [False, True])
def test_evaluate_gives_the_trainer_evaluate_numbers(as_dict):
  video, label = clips(5, seed=3)
  model = new_model()
  model.fit(dataset(video, label), epochs=1, verbose=0)
  data = dataset(video, label, batch=2, as_dict=as_dict,
                 drop_remainder=False)  # a partial last batch counts too
  got = model.evaluate(data, return_dict=True, verbose=0)
  expected = Trainer(model.pipeline, keras.optimizers.SGD(0.1)).evaluate(
      dataset(video, label, 2, as_dict=True, drop_remainder=False))
  assert set(got) == {"loss", "clip_accuracy", "frame_accuracy"}
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12)


def test_compiled_metrics_see_the_clip_logits():
  video, label = clips(4)
  model = sideways_tf.SidewaysModel(util.conv_stages(3))
  model.compile("sgd", metrics=[
      "sparse_categorical_accuracy",
      keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3")])
  got = model.evaluate(dataset(video, label), return_dict=True, verbose=0)
  assert got["top3"] == 1.0  # 3 classes: top-3 always hits
  # Of the clip logits: the clip accuracy again.
  assert got["sparse_categorical_accuracy"] == got["clip_accuracy"]
  assert 0 < got["loss"]
  metrics = model.evaluate(dataset(video, label), verbose=0)
  assert metrics[0] == got["loss"] and len(metrics) == 5
  with pytest.raises(ValueError, match="accuracy is always reported"):
    model.compile("sgd", metrics=["accuracy"])
  with pytest.raises(ValueError, match="'clip_accuracy' is taken"):
    model.compile("sgd", metrics=[keras.metrics.SparseCategoricalAccuracy(
        name="clip_accuracy")])


# ----------------------------------------------------------- bad input

def test_bad_input_gets_a_clear_value_error():
  video, label = clips(4)
  with pytest.raises(ValueError, match="unknown algorithm 'sidways'"):
    sideways_tf.SidewaysModel(util.conv_stages(3), algorithm="sidways")
  model = sideways_tf.SidewaysModel(util.conv_stages(3))
  with pytest.raises(ValueError, match="loss='mse'"):
    model.compile("sgd", loss="mse")
  with pytest.raises(ValueError, match="run_eagerly=True"):
    model.compile("sgd", run_eagerly=True)
  with pytest.raises(ValueError, match="steps_per_execution=4"):
    model.compile("sgd", steps_per_execution=4)
  model = new_model()
  with pytest.raises(ValueError, match=r"shape \[B, T, H, W, C\]"):
    model.fit(tf.data.Dataset.from_tensor_slices(
        (video[:, 0], label)).batch(2), verbose=0)
  with pytest.raises(ValueError, match="dtype uint8"):
    model.fit(dataset((video * 10).astype(np.uint8), label), verbose=0)
  with pytest.raises(ValueError, match=r"missing \['label'\]"):
    model.fit(tf.data.Dataset.from_tensor_slices({"video": video}).batch(2),
              verbose=0)
  with pytest.raises(ValueError, match="sample weights"):
    model.fit(video, label, sample_weight=np.ones(4), batch_size=2,
              verbose=0)
  with pytest.raises(ValueError, match="need labels"):
    model.evaluate(tf.data.Dataset.from_tensor_slices(video).batch(2),
                   verbose=0)
  # Sideways buffers hold one batch size: a partial batch is refused.
  model = new_model()
  with pytest.raises(ValueError, match="a Sideways training batch of 1"):
    model.fit(dataset(video[:3], label[:3], drop_remainder=False), verbose=0)
  with pytest.raises(ValueError, match="frames of shape"):
    model.fit(dataset(video[..., :4, :4, :], label), verbose=0)


# ------------------------------------------------------------ callbacks

def event_tags(directory):
  tags = {}
  for path in pathlib.Path(directory).glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return tags


def test_tensorboard_and_gradient_fidelity_write_their_tags(tmp_path):
  video, label = clips(4)
  model = new_model()
  fidelity = sideways_tf.callbacks.GradientFidelity(tmp_path, every_n_steps=2)
  model.fit(dataset(video, label), validation_data=dataset(video, label),
            epochs=2, verbose=0, callbacks=[
                keras.callbacks.TensorBoard(tmp_path), fidelity])
  train, validation = (event_tags(tmp_path / d)
                       for d in ("train", "validation"))
  assert {"epoch_loss", "epoch_accuracy"} <= set(train)
  assert {"epoch_clip_accuracy", "epoch_frame_accuracy",
          "epoch_loss"} <= set(validation)
  # Fidelity at steps 2 and 4, one tag pair per module, the values of
  # summaries.gradient_fidelity on the last batch with the final weights.
  for k in (1, 2, 3):
    assert [s for s, _ in train[f"fidelity/cosine/module_{k}"]] == [2, 4]
    assert f"fidelity/norm_ratio/module_{k}" in train
  frames, labels = model.last_batch
  expected = summaries.gradient_fidelity(
      model.pipeline,
      model.pipeline.compute_gradients(frames, labels, "sideways"),
      model.pipeline.compute_gradients(frames, labels, "bp"))
  assert fidelity.history[-1][0] == 4
  for module, measures in expected.items():
    for measure, value in measures.items():
      np.testing.assert_allclose(train[f"fidelity/{measure}/{module}"][-1][1],
                                 value, rtol=1e-5)
  # The top module's gradient is BP's on its frames: cosine close to 1.
  assert expected["module_3"]["cosine"] > 0.9


def test_model_checkpoint_weights_restore_weights_buffers_and_optimizer(
    tmp_path):
  video, label = clips(4)
  model = new_model(optimizer=keras.optimizers.Adam(0.01))
  path = tmp_path / "ckpt-{epoch}.weights.h5"
  model.fit(dataset(video, label), epochs=2, verbose=0, callbacks=[
      keras.callbacks.ModelCheckpoint(str(path), save_weights_only=True)])
  saved = state(model)
  assert any(np.abs(b).max() > 0 for b in saved["buffers"])  # stream state
  assert int(model.optimizer.iterations) == 4
  restored = new_model(optimizer=keras.optimizers.Adam(0.01))
  restored.build((2, NUM_FRAMES) + SHAPE)
  restored.load_weights(str(tmp_path / "ckpt-2.weights.h5"))
  for key, values in state(restored).items():
    assert len(values) == len(saved[key]), key
    for got, want in zip(values, saved[key]):
      np.testing.assert_array_equal(got, want, err_msg=key)


def test_early_stopping_stops_at_the_patience_epoch():
  video, label = clips(4)
  model = new_model()
  stop = keras.callbacks.EarlyStopping(monitor="val_clip_accuracy",
                                       min_delta=2.0, patience=2, mode="max")
  history = model.fit(dataset(video, label),
                      validation_data=dataset(video, label), epochs=10,
                      verbose=0, callbacks=[stop])
  # Epoch 1 sets the best; no later epoch can beat it by 2: stop after 3.
  assert len(history.history["val_clip_accuracy"]) == 3
  assert stop.stopped_epoch == 2


def test_reduce_lr_on_plateau_lowers_the_rate_the_trainer_applies():
  video, label = clips(4)
  model = new_model(optimizer=keras.optimizers.SGD(0.1))
  model.fit(dataset(video, label), validation_data=dataset(video, label),
            epochs=3, verbose=0, callbacks=[keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=1, min_delta=100.0)])
  # Epoch 1 sets the best; epochs 2 and 3 are plateaus: 0.1 -> 0.05 -> 0.025.
  np.testing.assert_allclose(float(model.trainer.optimizer.learning_rate),
                             0.025, rtol=1e-6)
  # The next step moves the weights by that rate.
  before = numpy_list(model.pipeline.trainable_variables)
  grads = model.pipeline.compute_gradients(video[:2], label[:2])
  model.fit(dataset(video[:2], label[:2]), epochs=1, verbose=0)
  for w, w0, g in zip(numpy_list(model.pipeline.trainable_variables), before,
                      grads):
    np.testing.assert_allclose(w, w0 - 0.025 * np.asarray(g), rtol=1e-5,
                               atol=1e-6)


def test_csv_logger_writes_the_fit_logs(tmp_path):
  video, label = clips(4)
  model = new_model()
  path = tmp_path / "log.csv"
  history = model.fit(dataset(video, label),
                      validation_data=dataset(video, label), epochs=2,
                      verbose=0, callbacks=[keras.callbacks.CSVLogger(
                          str(path))])
  rows = list(csv.DictReader(path.open()))
  assert [int(r["epoch"]) for r in rows] == [0, 1]
  for key in ("loss", "accuracy", "val_loss", "val_clip_accuracy",
              "val_frame_accuracy"):
    np.testing.assert_allclose([float(r[key]) for r in rows],
                               history.history[key], rtol=1e-6)


def run_resume_check(workdir, *args):
  result = subprocess.run(
      [sys.executable, str(ROOT / "tests" / "keras_resume_check.py"),
       str(workdir), *args], cwd=str(ROOT), capture_output=True, text=True,
      timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
  return result


def test_backup_and_restore_resumes_after_kill_9(tmp_path):
  """kill -9 after step 11; the backup of step 9 brings back everything and
  training goes on at epoch 2 (1-based), batch 2, ending where an
  uninterrupted run ends."""
  killed = run_resume_check(tmp_path / "run", "--kill_at_step=11")
  assert killed.returncode == -9, killed.stderr[-3000:]
  backup = dict(np.load(tmp_path / "run" / "at_step_9.npz"))
  assert not (tmp_path / "run" / "done.json").exists()
  resumed = run_resume_check(tmp_path / "run")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  report = json.loads((tmp_path / "run" / "done.json").read_text())
  restored = dict(np.load(tmp_path / "run" / "restored.npz"))
  assert sorted(restored) == sorted(backup)
  assert any(k.startswith("buffer") for k in backup)
  assert any(k.startswith("optimizer") for k in backup)
  for key, value in backup.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)
  # 8 batches an epoch: step 10 is epoch index 1, batch index 1.
  assert report["first_trained"] == {"epoch": 1, "batch": 1, "step": 10}
  assert report["steps_trained"] == 24 - 9
  reference = run_resume_check(tmp_path / "reference")
  assert reference.returncode == 0, reference.stderr[-3000:]
  final = dict(np.load(tmp_path / "run" / "final.npz"))
  expected = dict(np.load(tmp_path / "reference" / "final.npz"))
  for key, value in expected.items():
    np.testing.assert_allclose(final[key], value, rtol=1e-5, atol=1e-6,
                               err_msg=key)


# --------------------------------------------------------------- export

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A trained model exported with class names and TFLite, then moved away
  from everything it was made in."""
  keras.utils.set_random_seed(7)
  tmp = tmp_path_factory.mktemp("keras_export")
  video, label = clips(4)
  model = sideways_tf.SidewaysModel(util.conv_stages(3),
                                    class_names=["ant", "bee", "cat"])
  model.compile(keras.optimizers.Adam(0.01))
  model.fit(dataset(video, label), epochs=2, verbose=0)
  path = model.export(tmp / "work" / "model", tflite=True)
  moved = tmp / "served"
  path.rename(moved)
  (tmp / "work").rmdir()
  frames = np.random.RandomState(0).randint(
      0, 256, size=(2, NUM_FRAMES) + SHAPE).astype(np.uint8)
  expected = np.asarray(model.pipeline.predict_frames(frames / 255.0))
  return moved, frames, expected


def test_exported_model_carries_its_class_names(exported):
  path, frames, expected = exported
  assert (path / "assets.extra" / "class_names.txt").read_text().split(
      "\n") == ["ant", "bee", "cat", ""]
  model = tf.saved_model.load(str(path))
  out = model.signatures["serving_default"](video=tf.constant(frames))
  np.testing.assert_allclose(out["frame_logits"], expected, rtol=1e-5,
                             atol=1e-5)
  names = np.array(["ant", "bee", "cat"])
  assert [s.decode() for s in out["labels"].numpy()] == list(
      names[expected.mean(1).argmax(-1)])


def test_tflite_step_streams_like_the_saved_model_clip(exported):
  path, frames, _ = exported
  clip = tf.saved_model.load(str(path)).signatures["serving_default"](
      video=tf.constant(frames))["frame_logits"].numpy()
  assert (path / "tflite" / "class_names.txt").read_text().split() == [
      "ant", "bee", "cat"]
  with warnings.catch_warnings():  # "use ai_edge_litert" deprecation note
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(str(path / "tflite" / "step.tflite"))
  step = interpreter.get_signature_runner("step")
  inputs = step.get_input_details()
  assert set(inputs) == {"frame", "activation_2", "activation_3", "ticks"}
  batch, num_frames, num_modules = frames.shape[0], frames.shape[1], 3
  state = {name: np.zeros([batch] + list(d["shape_signature"][1:]),
                          d["dtype"])
           for name, d in inputs.items() if name != "frame"}
  streamed, valid = [], []
  for t in range(num_frames + num_modules - 1):  # then L-1 padding frames
    frame = frames[:, t] if t < num_frames else np.zeros_like(frames[:, 0])
    out = step(frame=frame, **state)
    state = {name: out[name] for name in state}  # state: explicit in/out
    valid.append(bool(out["valid"].all()))
    if valid[-1]:
      streamed.append(out["logits"])
  assert valid == [False] * (num_modules - 1) + [True] * num_frames
  streamed = np.stack(streamed, axis=1)
  assert streamed.shape == clip.shape
  print("max |tflite stream - saved model clip| =",
        np.abs(streamed - clip).max())
  assert np.abs(streamed - clip).max() <= 1e-4


def test_compiled_loss_is_the_pipeline_loss():
  """A Keras Loss gives the default gradient; a doubled loss doubles it."""
  video, label = clips(2)
  reference = new_model()
  reference.build((2, NUM_FRAMES) + SHAPE)
  grads = reference.pipeline.compute_gradients(video, label)
  for loss, factor in [
      (keras.losses.SparseCategoricalCrossentropy(from_logits=True), 1.0),
      (lambda y, logits: 2.0 * sideways_tf.sparse_softmax_cross_entropy(
          y, logits), 2.0)]:
    model = sideways_tf.SidewaysModel(util.conv_stages(3))
    model.compile(keras.optimizers.SGD(0.5), loss=loss)
    model.build((2, NUM_FRAMES) + SHAPE)
    model.set_weights(reference.get_weights())
    model.fit(dataset(video, label), epochs=1, verbose=0)
    for w, w0, g in zip(model.pipeline.trainable_variables,
                        reference.pipeline.trainable_variables, grads):
      np.testing.assert_allclose(w, np.asarray(w0) - 0.5 * factor *
                                 np.asarray(g), rtol=1e-5, atol=1e-6)


def test_skip_sideways_model_steps_with_the_pipeline_gradient():
  video, label = clips(2)
  model = new_model(skips={2: [0]}, optimizer=keras.optimizers.SGD(0.5))
  model.build((2, NUM_FRAMES) + SHAPE)
  assert model.pipeline.skip_sources[2] == (0,)
  grads = model.pipeline.compute_gradients(video, label)
  before = numpy_list(model.pipeline.trainable_variables)
  model.fit(dataset(video, label), epochs=1, verbose=0)
  for w, w0, g in zip(model.pipeline.trainable_variables, before, grads):
    np.testing.assert_allclose(w, w0 - 0.5 * np.asarray(g), rtol=1e-5,
                               atol=1e-6)


def test_replay_model_steps_with_the_replayed_pipeline_gradient():
  video, label = clips(2)
  model = new_model(replay_modules=2, optimizer=keras.optimizers.SGD(0.5))
  model.build((2, NUM_FRAMES) + SHAPE)
  plain = sideways_tf.Pipeline(model.pipeline.stages)
  grads = model.pipeline.compute_gradients(video, label)
  assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(
      numpy_list(grads), numpy_list(plain.compute_gradients(video, label))))
  before = numpy_list(model.pipeline.trainable_variables)
  model.fit(dataset(video, label), epochs=1, verbose=0)
  for w, w0, g in zip(model.pipeline.trainable_variables, before, grads):
    np.testing.assert_allclose(w, w0 - 0.5 * np.asarray(g), rtol=1e-5,
                               atol=1e-6)
  with pytest.raises(ValueError, match="replay_modules"):
    new_model(replay_modules=3)  # L-1 = 2 at most
