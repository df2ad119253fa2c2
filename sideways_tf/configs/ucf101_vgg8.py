"""UCF-101 (TFDS), VGG-8 at 112x112, 32-frame clips, one module per weight layer.

Hardware: 8x V100 16 GB (any 8 GPUs with >= 8 GB), one module per GPU.
Devices: 8 modules (conv1, conv2, conv3, conv4, conv5, conv6+global pool,
fc1, fc2) on /GPU:0 .. /GPU:7, module k on /GPU:k.
Memory per GPU is one module's weights, its two Sideways buffers and one
frame's activations at batch 32: it does not grow with the clip length.

Run:  bin/train --config=configs/ucf101_vgg8.py --workdir=DIR
      bin/train --config=configs/ucf101_vgg8.py --workdir=DIR --config.algorithm=bp
"""

from sideways_tf.configs import default
from sideways_tf.configs import common


def get_config():
  config = default.get_config()
  config.experiment = "ucf101_vgg8"
  config.data.name = "tfds"
  config.data.tfds_name = "ucf101"
  config.data.video_key = "video"
  config.data.label_key = "label"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.num_frames = 32
  config.data.image_size = 112
  config.data.num_classes = 101
  config.data.crop_fraction = 0.875
  config.data.random_flip = True
  config.train.num_steps = 30000
  config.train.eval_every = 2000
  return common.vgg8_on_gpus(config, num_modules=8, granularity="layer")
