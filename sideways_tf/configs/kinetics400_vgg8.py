"""Kinetics-400 (a folder of videos), VGG-8 at 224x224, 64-frame clips, one module per weight layer.

Hardware: 8x V100 16 GB (or 8x A100), one module per GPU.
Devices: 8 modules (conv1, conv2, conv3, conv4, conv5, conv6+global pool,
fc1, fc2) on /GPU:0 .. /GPU:7, module k on /GPU:k.
Memory per GPU is one module's weights, its two Sideways buffers and one
frame's activations at batch 32: it does not grow with the clip length.

Run:  bin/train --config=configs/kinetics400_vgg8.py --workdir=DIR --config.data.path=PATH
      bin/train --config=configs/kinetics400_vgg8.py --workdir=DIR --config.data.path=PATH --config.algorithm=bp
"""

from sideways_tf.configs import default
from sideways_tf.configs import common


def get_config():
  config = default.get_config()
  config.experiment = "kinetics400_vgg8"
  common.video_folder_data(config, num_frames=64, image_size=224,
                           num_classes=400)
  config.train.num_steps = 200000
  config.train.eval_every = 10000
  return common.vgg8_on_gpus(config, num_modules=8, granularity="layer")
