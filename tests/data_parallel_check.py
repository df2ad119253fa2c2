"""Data parallel replicas on 4 logical CPUs, in its own process (TF sets up
devices once per process); run by tests/test_data_parallel.py.

  python -m tests.data_parallel_check gradients REPLICAS DEVICES_PER_REPLICA
  python -m tests.data_parallel_check batch_norm
  python -m tests.data_parallel_check online
  python -m tests.data_parallel_check loss_scale
  python -m tests.data_parallel_check keras WORKDIR
  python -m tests.data_parallel_check checkpoint DATA_DIR WORKDIR

`gradients`: for every algorithm of the table, one Trainer step with R
replicas (SGD, learning rate 1, so the applied gradient is w0 - w1) against
the same step with one replica on the whole batch: the applied gradient and
the logged loss, every replica's buffers (the algorithms with buffers), the
placement of weights, buffers and ops.
`batch_norm`: with a batch-norm stage each replica's moving statistics are
those of its own clips. `online`: update_every_ticks with replicas.
`loss_scale`: mixed_float16's skipped and applied
steps. `keras`: SidewaysModel with replicas (fit, save_weights across
replica counts). `checkpoint`: bin/train's loop with R = 2 then 1
then 2 on one workdir, each resuming from the other's checkpoint.
Prints "OK ..." when every assertion holds.
"""

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

NUM_DEVICES = 4
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * NUM_DEVICES)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sideways_tf  # noqa: E402
from sideways_tf.benchmark import exactness  # noqa: E402
from sideways_tf.engine import algorithms  # noqa: E402
from sideways_tf.training.data_parallel import DataParallel  # noqa: E402
from tests import util  # noqa: E402
from tests.util import canonical, function_node_devices  # noqa: E402

NUM_MODULES, BATCH, FRAME = 2, 4, (6, 6, 2)
EPS32 = 2.0 ** -24  # float32's unit roundoff


def device_grid(replicas, per_replica):
  """Replica r on the r-th group of `per_replica` logical CPUs, its
  NUM_MODULES modules mapped onto them (sharing when fewer)."""
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
  return [[cpus[r * per_replica + k * per_replica // NUM_MODULES]
           for k in range(NUM_MODULES)] for r in range(replicas)]


def one_step(algorithm, frames, labels, grid=None):
  """(weights before, the pipeline after one SGD(1) step, trainer, loss)."""
  keras.utils.set_random_seed(0)
  pipeline = sideways_tf.Pipeline(util.conv_stages(NUM_MODULES))
  parallel = DataParallel(pipeline, grid)
  parallel.build(FRAME)
  before = [v.numpy() for v in pipeline.trainable_variables]
  with parallel.scope():
    optimizer = keras.optimizers.SGD(learning_rate=1.0)
  trainer = sideways_tf.Trainer(pipeline, optimizer, algorithm,
                                data_parallel=parallel)
  loss = trainer.train_step(frames, labels)["loss"]
  return before, pipeline, trainer, loss


def check_gradients(replicas, per_replica):
  grid = device_grid(replicas, per_replica)
  frames = util.moving_clip(batch=BATCH, frames=2 * NUM_MODULES + 1,
                            shape=FRAME)
  labels = util.labels_for(BATCH)
  worst = 0.0  # the largest error / tolerance
  for algorithm in sideways_tf.ALGORITHMS:
    before, single, _, single_loss = one_step(algorithm, frames, labels)
    single_gradient = [w - v.numpy() for w, v in zip(
        before, single.trainable_variables)]
    # The same algorithm in float64 on the same weights: the exact gradient,
    # against which float32's own rounding at this size is measured.
    reference = sideways_tf.Pipeline(exactness.float64_stages(
        stages_with(before), FRAME))
    exact = [np.asarray(g, np.float64) for g in reference.compute_gradients(
        frames.astype(np.float64), labels, algorithm)]
    before_dp, pipeline, trainer, loss = one_step(algorithm, frames, labels,
                                                  grid)
    # conv_stages(2): a conv, then a conv and a dense (kernels and biases).
    assert len(before) == len(before_dp) == 6, before
    for w, w_dp in zip(before, before_dp):
      np.testing.assert_array_equal(w, w_dp)  # the same initial weights
    for k, (variable, w0, g1, g64) in enumerate(zip(
        pipeline.trainable_variables, before, single_gradient, exact)):
      copies = variable.value.values
      assert len(copies) == replicas, copies
      for r, copy in enumerate(copies):
        # Replica r's copy lives on its first stage device, and every copy
        # took the same step.
        assert canonical(copy.device) == canonical(grid[r][0]), copy.device
        np.testing.assert_array_equal(copy.numpy(), copies[0].numpy())
      applied = w0 - copies[0].numpy()
      # Tolerance from the arithmetic: float32 one-replica BP's own error
      # against float64 at this size (the replicas sum the same terms in
      # another order, so twice that), plus the rounding of w0 - g and its
      # recovery (an ulp of the weights each).
      tolerance = (2 * np.abs(g1 - g64).max() +
                   EPS32 * np.abs(g64).max() + 4 * EPS32 * np.abs(w0).max())
      error = np.abs(applied - g64).max()
      assert error <= tolerance, (algorithm, k, error, tolerance)
      worst = max(worst, error / tolerance)
    assert abs(loss - single_loss) <= 4 * EPS32 * abs(single_loss), (
        algorithm, loss, single_loss)
    if algorithms.get(algorithm).streams:
      check_replica_buffers(algorithm, frames, labels, before, trainer)
    check_placement(algorithm, trainer, grid, frames, labels)
  print(f"OK gradients {replicas} x {per_replica}: error at most "
        f"{worst:.2f} of the tolerance")


def stages_with(weights):
  """The test model's stages, built, holding `weights` (as listed by
  Pipeline.trainable_variables)."""
  stages = util.conv_stages(NUM_MODULES)
  sideways_tf.Pipeline(stages).build(FRAME)
  variables = [v for stage in stages for v in stage.trainable_variables]
  for variable, value in zip(variables, weights):
    variable.assign(value)
  return stages


def check_replica_buffers(algorithm, frames, labels, weights, trainer):
  """Each replica streamed its own clips: its buffers after the step are the
  slice of a one-replica run's buffers (on the same `weights`) for its
  clips."""
  whole = sideways_tf.Pipeline(stages_with(weights))
  whole.compute_gradients(frames, labels, algorithm)
  share = BATCH // len(trainer.data_parallel.replicas)
  for r, replica in enumerate(trainer.data_parallel.replicas):
    for module, expected_module in zip(replica.modules, whole.modules):
      for buffer, expected in zip(module.state_variables,
                                  expected_module.state_variables):
        # The batch axis: the one the replica holds B/R of (axis 1 of a
        # replay history [lag, B, ...], else axis 0).
        axis = [a for a, (mine, all_) in enumerate(zip(
            buffer.shape, expected.shape)) if mine != all_]
        assert len(axis) == 1 and buffer.shape[axis[0]] == share, (
            buffer.shape, expected.shape)
        assert canonical(buffer.value.device) == canonical(
            replica.devices[module.index])
        np.testing.assert_allclose(
            buffer.numpy(), np.take(expected.numpy(), range(
                r * share, (r + 1) * share), axis=axis[0]),
            rtol=1e-5, atol=1e-6, err_msg=f"{algorithm} replica {r}")
    assert int(replica.ticks_seen.numpy()) == frames.shape[1]


def check_placement(algorithm, trainer, grid, frames, labels):
  """Every pipeline op (named stage_k) of replica r runs on a device of
  replica r (MirroredStrategy names replica r > 0's ops `replica_r`); with
  the tick engine, stage k's on the replica's device k."""
  parallel = trainer.data_parallel
  prepared = parallel.prepare_inputs(frames, labels, algorithm)
  with parallel.scope():
    concrete = trainer._step_fns[True].get_concrete_function(*prepared)  # pylint: disable=protected-access
  nodes = function_node_devices(concrete)
  per_stage = algorithms.get(algorithm).streams
  for r, row in enumerate(grid):
    mine = {n: canonical(d) for n, (_, d) in nodes.items()
            if "stage_" in n and d
            and (f"replica_{r}" in n if r else "replica_" not in n)}
    assert len(mine) > 10, (algorithm, r, len(mine))
    elsewhere = {n: d for n, d in mine.items()
                 if d not in {canonical(device) for device in row}}
    assert not elsewhere, (algorithm, r, list(elsewhere.items())[:3])
    for k, device in enumerate(row if per_stage else ()):
      wrong = {n: d for n, d in mine.items()
               if f"stage_{k}/" in n and d != canonical(device)}
      assert not wrong, (algorithm, r, k, list(wrong.items())[:3])


def check_online():
  """update_every_ticks=2 with 2 x 2 replicas, for every algorithm with the
  tick engine: one clip's chunk-by-chunk steps end at the one-replica
  run's weights; every replica stashes the weights its replays need."""
  frames = util.moving_clip(batch=BATCH, frames=2 * NUM_MODULES + 2,
                            shape=FRAME)
  labels = util.labels_for(BATCH)
  chunks = frames.shape[1] // 2
  # The chunks' SGD(1) steps agree to the worst-case float32 rounding of a
  # gradient's B*T*H*W terms summed in another order (each step), relative
  # to the update, plus an ulp of the weights per step.
  summands = BATCH * frames.shape[1] * FRAME[0] * FRAME[1]
  for algorithm in [a for a in sideways_tf.ALGORITHMS
                    if algorithms.get(a).streams]:
    results = []
    for grid in (None, device_grid(2, 2)):
      keras.utils.set_random_seed(0)
      pipeline = sideways_tf.Pipeline(util.conv_stages(NUM_MODULES))
      parallel = DataParallel(pipeline, grid)
      parallel.build(FRAME)
      before = [v.numpy() for v in pipeline.trainable_variables]
      with parallel.scope():
        optimizer = keras.optimizers.SGD(learning_rate=1.0)
      trainer = sideways_tf.Trainer(pipeline, optimizer, algorithm,
                                    update_every_ticks=2,
                                    data_parallel=parallel)
      trainer.train_step(frames, labels)
      assert all(replica.replay_weight_stash
                 for replica in parallel.replicas), algorithm
      results.append([v.value.values if grid else [v.value]
                      for v in pipeline.trainable_variables])
    for w0, alone, copies in zip(before, *results):
      step = np.abs(alone[0].numpy() - w0).max()
      for copy in copies:
        np.testing.assert_allclose(
            copy.numpy(), alone[0].numpy(), rtol=0,
            atol=chunks * (summands * EPS32 * step +
                           2 * EPS32 * np.abs(w0).max()),
            err_msg=algorithm)
  print("OK online")


def check_batch_norm():
  """BP with a batch-norm stage on 2 replicas: replica r normalises with,
  and keeps the moving statistics of, its own 2 clips (as a one-replica run
  on them does); the trainable weights stay equal on both."""
  grid = device_grid(2, 1)
  frames = util.moving_clip(batch=BATCH, frames=3, shape=FRAME)
  labels = util.labels_for(BATCH)

  def stages():
    keras.utils.set_random_seed(0)
    return [keras.Sequential([keras.layers.Conv2D(4, 3, padding="same"),
                              keras.layers.BatchNormalization(),
                              keras.layers.Activation("tanh")]),
            util.conv_stages(1)[0]]

  pipeline = sideways_tf.Pipeline(stages())
  parallel = DataParallel(pipeline, grid)
  with parallel.scope():
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
  sideways_tf.Trainer(pipeline, optimizer, "bp",
                      data_parallel=parallel).train_step(frames, labels)
  moving = pipeline.stages[0].non_trainable_variables
  for r in range(2):
    alone = sideways_tf.Pipeline(stages())
    sideways_tf.Trainer(alone, keras.optimizers.SGD(learning_rate=0.1),
                        "bp").train_step(frames[2 * r:2 * r + 2],
                                         labels[2 * r:2 * r + 2])
    for variable, expected in zip(moving,
                                  alone.stages[0].non_trainable_variables):
      np.testing.assert_allclose(variable.value.values[r].numpy(),
                                 expected.numpy(), rtol=1e-5, atol=1e-7)
  assert not np.allclose(moving[0].value.values[0].numpy(),
                         moving[0].value.values[1].numpy())
  for variable in pipeline.trainable_variables:
    copies = variable.value.values
    np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())
  print("OK batch_norm")


def check_loss_scale():
  """mixed_float16 on 2 x 2 replicas: a step whose gradients overflow is
  skipped on every copy and the scale halves; with a workable scale every
  copy takes the same step."""
  from sideways_tf.training.trainer import DynamicLossScale  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_dtype_policy("mixed_float16")
  frames = util.moving_clip(batch=BATCH, frames=2 * NUM_MODULES + 1,
                            shape=FRAME)
  labels = util.labels_for(BATCH)
  for algorithm in sideways_tf.ALGORITHMS:
    for scale, overflows in ((2.0 ** 40, True), (2.0 ** 10, False)):
      keras.utils.set_random_seed(0)
      pipeline = sideways_tf.Pipeline(util.conv_stages(NUM_MODULES))
      parallel = DataParallel(pipeline, device_grid(2, 2))
      parallel.build(FRAME)
      before = [v.numpy() for v in pipeline.trainable_variables]
      with parallel.scope():
        optimizer = keras.optimizers.SGD(learning_rate=1.0)
      loss_scale = DynamicLossScale(initial_scale=scale)
      sideways_tf.Trainer(pipeline, optimizer, algorithm,
                          loss_scale=loss_scale,
                          data_parallel=parallel).train_step(frames, labels)
      assert float(loss_scale.scale.numpy()) == (scale / 2 if overflows
                                                 else scale), algorithm
      for variable, w0 in zip(pipeline.trainable_variables, before):
        copies = [c.numpy() for c in variable.value.values]
        np.testing.assert_array_equal(copies[0], copies[1])
        assert np.array_equal(copies[0], w0) == overflows, algorithm
  keras.mixed_precision.set_dtype_policy("float32")
  print("OK loss_scale")


def check_keras(workdir):
  """SidewaysModel with devices for 2 replicas: fit takes the one-replica
  model's steps (every replica streaming its clips), and save_weights files
  load across replica counts."""
  rows = device_grid(2, 1)
  videos = util.moving_clip(batch=8, frames=2 * NUM_MODULES + 1, shape=FRAME)
  labels = util.labels_for(8)

  def model(devices):
    keras.utils.set_random_seed(0)
    built = sideways_tf.SidewaysModel(util.conv_stages(NUM_MODULES),
                                      devices=devices)
    # A loss of the model's own (twice the default): the replicas must
    # compute the loss compile set, not the one they were made with.
    built.compile(optimizer={"class_name": "sgd",
                             "config": {"learning_rate": 1.0}},
                  loss=lambda y, logits: 2.0 * (
                      sideways_tf.sparse_softmax_cross_entropy(y, logits)))
    built.build((4, videos.shape[1]) + FRAME)
    return built

  one, two = model(None), model(rows)
  assert two.data_parallel.num_replicas == 2
  before = [v.numpy() for v in one.pipeline.trainable_variables]
  for fitted in (one, two):
    fitted.fit(videos, labels, batch_size=4, epochs=1, shuffle=False,
               verbose=0)
  for replica in two.data_parallel.replicas:
    assert int(replica.ticks_seen.numpy()) == videos.shape[1]
  # Two SGD(1) steps: the updates agree to the worst-case float32 rounding
  # of summing a gradient's B*T*H*W terms in another order (each step),
  # relative to the update, plus an ulp of the weights per step.
  summands = 4 * videos.shape[1] * FRAME[0] * FRAME[1]
  for w0, a, b in zip(before, one.pipeline.trainable_variables,
                      two.pipeline.trainable_variables):
    step = np.abs(a.numpy() - w0).max()
    for copy in b.value.values:
      np.testing.assert_allclose(
          copy.numpy(), a.numpy(), rtol=0,
          atol=2 * summands * EPS32 * step + 4 * EPS32 * np.abs(w0).max())
  for saved, loaded in ((two, model(None)), (one, model(rows))):
    path = workdir / f"{saved.data_parallel.num_replicas}.weights.h5"
    saved.save_weights(path)
    loaded.load_weights(path)
    for a, b in zip(saved.pipeline.trainable_variables,
                    loaded.pipeline.trainable_variables):
      for copy in getattr(b.value, "values", [b.value]):
        np.testing.assert_array_equal(copy.numpy(), a.numpy())
    for a, b in zip(saved.optimizer.variables, loaded.optimizer.variables):
      np.testing.assert_array_equal(np.asarray(b.numpy()),
                                    np.asarray(a.numpy()))
  print("OK keras")


def check_checkpoints(data_dir, workdir):
  """bin/train's loop (train_lib.train) on one workdir with 2 replicas, then
  1, then 2, each resuming from the other's checkpoint, ends where a run
  with 1 replica throughout (resumed at the same steps, so the same data)
  ends; every checkpoint holds exactly a one-replica checkpoint's keys."""
  from sideways_tf.training import train_lib  # pylint: disable=g-import-not-at-top
  from tests.test_train_lib import tiny_config  # pylint: disable=g-import-not-at-top

  def train(run, replicas, steps):
    config = tiny_config(data_dir, num_steps=steps, checkpoint_every=2,
                         fidelity_every=2, stage_time_every=2, eval_every=0)
    config.replicas = replicas
    config.devices = ("auto",)  # 4 logical CPUs: 2 per replica, or 4
    result = train_lib.train(config, workdir / run)
    assert result["step"] == steps, result

  for steps, replicas in ((2, 2), (4, 1), (6, 2)):
    train("mixed", replicas, steps)
    train("single", 1, steps)
  mixed, single = (tf.train.load_checkpoint(str(workdir / run / "checkpoints"
                                                / "ckpt-6"))
                   for run in ("mixed", "single"))
  keys = sorted(single.get_variable_to_shape_map())
  assert sorted(mixed.get_variable_to_shape_map()) == keys
  # The 4 modules' kernels and biases (saved once, under the optimizer's
  # list of the variables it trains), then its slots and counters.
  weights = [k for k in keys if "_trainable_variables/" in k]
  assert len(weights) == 8, keys
  for key in keys:
    if "VARIABLE_VALUE" not in key or "/modules/" in key:
      continue  # the buffers of one clip (every clip starts from zeros)
    np.testing.assert_allclose(mixed.get_tensor(key), single.get_tensor(key),
                               rtol=1e-5, atol=1e-6, err_msg=key)
  # replay_modules="auto" measures the stages before the run's pipeline
  # exists: with replicas they are built (mirrored) first, then measured.
  from sideways_tf.training import builder  # pylint: disable=g-import-not-at-top
  config = tiny_config(data_dir)
  config.replicas, config.devices, config.replay_modules = 2, ("auto",), "auto"
  setup = builder.build(config)
  assert setup.replay["replay_modules_from"] == "auto", setup.replay
  assert setup.trainer.data_parallel.num_replicas == 2
  batch = next(iter(setup.datasets.train))
  assert np.isfinite(setup.trainer.train_step(batch["video"],
                                              batch["label"])["loss"])
  print("OK checkpoint", len(keys), "keys")


def main():
  mode = sys.argv[1]
  if mode == "gradients":
    check_gradients(int(sys.argv[2]), int(sys.argv[3]))
  elif mode == "batch_norm":
    check_batch_norm()
  elif mode == "online":
    check_online()
  elif mode == "loss_scale":
    check_loss_scale()
  elif mode == "keras":
    check_keras(pathlib.Path(sys.argv[2]))
  elif mode == "checkpoint":
    check_checkpoints(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]))
  else:
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
  main()
