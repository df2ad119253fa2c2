"""The tiny config of the fault-injection tests: a few steps, tiny frames."""

from sideways_tf.configs import default


def get_config():
  config = default.get_config()
  config.experiment = "tiny"
  config.data.image_size = 16
  config.data.num_frames = 7  # >= 2L-1: no starvation warning
  config.data.num_train = 16
  config.data.num_test = 8
  config.model.widths = (2, 2, 2)
  config.train.batch_size = 2
  config.eval.batch_size = 8
  config.train.update(dict(num_steps=4, log_every=2, eval_every=4,
                           checkpoint_every=2, fidelity_every=0,
                           stage_time_every=0, keep_checkpoints=3))
  return config
