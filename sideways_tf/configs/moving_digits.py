"""Moving digits: real handwriting over real photos, a hard offline benchmark.

Hardware: sized like configs/default.py (a 2-core CPU, a few minutes). The
videos are made on first use from data bundled in scikit-learn (no download)
and cached (sideways_tf/data/moving_digits.py, docs/data.md). Unlike the
moving shapes of configs/default.py, BP does not saturate here, so the
algorithms can be told apart; test videos show unseen handwriting.

Run:  bin/train --config=configs/moving_digits.py            (Sideways)
      bin/train --config=configs/moving_digits.py --config.algorithm=bp
      slower motion: --config.data.speed_range="(0.25, 0.5)", or relative to
      the object: --config.data.speed_per_object="(0.0625, 0.125)"
"""

from sideways_tf.configs import default


def get_config():
  config = default.get_config()
  config.experiment = "moving_digits"
  data = config.data
  data.name = "moving_digits"
  data.label_key = "label"
  # Moving-shapes fields that mean nothing here: gone, so that setting one
  # is an error instead of being ignored.
  for key in ("speed", "num_shapes", "num_directions"):
    del data[key]
  data.num_classes = 10  # digits 0..num_classes-1
  data.num_frames = 16
  data.temporal_stride = 1
  data.image_size = 32
  data.object_size = 16  # px; the 8x8 digits are enlarged bilinearly
  data.speed_range = (1.0, 2.0)  # px per stored frame, uniform per video
  # Non-empty: (min, max) in object sizes per frame, overriding speed_range.
  data.speed_per_object = ()
  data.clutter = 0.5  # contrast of the photo behind the digit; 0 = black
  data.num_distractors = 0  # static digits of random class under the moving one
  data.noise = 0.1  # Gaussian pixel noise std, fresh every frame
  data.num_train = 1000  # training videos
  data.num_test = 500  # test videos, of handwriting never seen in training
  data.num_train_instances = 0  # digit images used in training; 0 = all
  data.test_instance_fraction = 0.25  # share of each digit's images kept for test
  data.seed = 0  # generation seed: instance split and videos
  # "photos": scikit-image's bundled photos as the moving objects instead of
  # digits (one class per photo, unseen crops in test).
  data.objects = "digits"
  # "skimage": scikit-image's textures behind the object instead of
  # scikit-learn's two photos (another family of clutter).
  data.backgrounds = "sklearn"
  # Real video moves: the two bottom modules take their backward step at the
  # input their gradient belongs to (docs/fidelity.md: on moving digits at
  # 1-2 px/frame this takes Sideways from ~38 to ~4 points behind BP).
  config.replay_modules = 2
  config.train.num_steps = 4000
  config.train.eval_every = 1000
  config.train.checkpoint_every = 500
  config.train.fidelity_every = 250
  config.train.stage_time_every = 250
  return config
