"""A small per-frame CNN, cut into Sideways modules.

conv blocks (3x3 conv, ReLU, 2x2 max-pool; the last block global-pools) and a
dense head. With `num_modules` = number of blocks + 1 each block is one module
and the head is the top module; fewer modules group consecutive blocks.
`temporal` ("conv:K", "shift"; see zoo.parse_temporal) puts a causal
temporal layer after every conv's ReLU.
"""

from typing import Sequence

import keras

from sideways_tf.models import zoo


def frame_cnn_stages(num_classes: int, num_modules: int = 4,
                     widths: Sequence[int] = (16, 32, 64), temporal: str = ""):
  """Returns `num_modules` Keras stages; the last emits `num_classes` logits."""
  widths = [int(w) for w in widths]
  zoo.parse_temporal(temporal)
  layers = []
  for i, width in enumerate(widths):
    block = [keras.layers.Conv2D(width, 3, padding="same", activation="relu")]
    mixer = zoo.make_temporal(temporal, f"temporal_{i + 1}")
    if mixer is not None:
      block.append(mixer)
    if i + 1 < len(widths):
      block.append(keras.layers.MaxPooling2D(2))
    else:
      block.append(keras.layers.GlobalAveragePooling2D())
    layers.append(block)
  layers.append([keras.layers.Dense(num_classes)])
  if not 1 <= num_modules <= len(layers):
    raise ValueError(
        f"num_modules must be between 1 and {len(layers)} for widths "
        f"{widths}, got {num_modules}")
  # Consecutive groups whose sizes differ by at most one, larger ones last.
  base, extra = divmod(len(layers), num_modules)
  sizes = [base + (1 if k >= num_modules - extra else 0)
           for k in range(num_modules)]
  return zoo.to_stages(zoo.split(layers, sizes))
