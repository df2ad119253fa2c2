"""HMDB-51 (a folder of videos), VGG-8 at 112x112, 32-frame clips, 4 modules.

Hardware: 4x V100 16 GB (any 4 GPUs with >= 8 GB), one module per GPU.
Devices: 4 modules balanced by parameter count (conv1-conv4 | conv5 |
conv6+global pool | fc1+fc2) on /GPU:0 .. /GPU:3, module k on
/GPU:k. For 8 GPUs set --config.model.num_modules=8 and
--config.devices='("/GPU:0", ..., "/GPU:7")'.
Memory per GPU is one module's weights, its two Sideways buffers and one
frame's activations at batch 32: it does not grow with the clip length.

Run:  bin/train --config=configs/hmdb51_vgg8.py --workdir=DIR --config.data.path=PATH
      bin/train --config=configs/hmdb51_vgg8.py --workdir=DIR --config.data.path=PATH --config.algorithm=bp
"""

from sideways_tf.configs import default
from sideways_tf.configs import common


def get_config():
  config = default.get_config()
  config.experiment = "hmdb51_vgg8"
  common.video_folder_data(config, num_frames=32, image_size=112,
                           num_classes=51)
  config.train.num_steps = 10000
  config.train.eval_every = 1000
  return common.vgg8_on_gpus(config, num_modules=4, granularity="block")
