"""VGG-8: a VGG-style frame CNN with 8 weight layers, cut into Sideways modules.

    conv(w)    pool                       block1
    conv(2w)   pool                       block2
    conv(4w)   conv(4w)   pool            block3
    conv(8w)   conv(8w)   global-avg-pool block4
    dense(fc_width)   dense(num_classes)  head

Every conv is 3x3, "same" padding, followed by the normalisation (``norm``)
and a ReLU (and, in a temporal variant, the causal temporal layer of
``temporal``); pools are 2x2 max-pools. The last max-pool of VGG is replaced by
global average pooling so one set of weights works at any input size from
8x8 (e.g. 32x32) to 224x224 and beyond: the head always sees ``8w`` features.
6 convs + 2 dense layers = 8 weight layers.

Units (where a module boundary may fall): each weight layer with the pooling
that follows it. ``granularity="layer"`` gives 8 modules, ``"block"`` gives 5
(the four conv blocks and the head), an int N gives N modules balanced by
trainable parameter count (see :mod:`sideways_tf.models.zoo`).
"""

from __future__ import annotations

from typing import List, Optional, Union

import keras

from sideways_tf.models import zoo

# (block, channel multiplier of the base width) of the six convs.
_CONVS = (("block1", 1), ("block2", 2), ("block3", 4), ("block3", 4),
          ("block4", 8), ("block4", 8))


def vgg8_units(num_classes: int, width: int = 64, norm: str = "batch",
               fc_width: Optional[int] = None, dropout: float = 0.0,
               bn_momentum: float = 0.99, norm_groups: int = 32,
               in_channels: int = 3, temporal: str = "") -> List[zoo.Unit]:
  """The 8 units of VGG-8 (fresh, unbuilt layers)."""
  zoo.check_norm(norm)
  zoo.parse_temporal(temporal)
  width = int(width)
  fc_width = int(fc_width) if fc_width else 8 * width
  units = []
  channels = int(in_channels)
  for i, (block, multiplier) in enumerate(_CONVS):
    out = multiplier * width
    name = f"conv{i + 1}"
    layers = [keras.layers.Conv2D(out, 3, padding="same",
                                  use_bias=norm == "none",
                                  kernel_initializer="he_normal", name=name)]
    norm_layer = zoo.make_norm(norm, out, f"{name}_norm", bn_momentum,
                               norm_groups=norm_groups)
    if norm_layer is not None:
      layers.append(norm_layer)
    layers.append(keras.layers.ReLU(name=f"{name}_relu"))
    mixer = zoo.make_temporal(temporal, f"{name}_temporal")
    if mixer is not None:
      layers.append(mixer)
    last_of_block = i + 1 == len(_CONVS) or _CONVS[i + 1][0] != block
    if i + 1 == len(_CONVS):
      layers.append(keras.layers.GlobalAveragePooling2D(name="global_pool"))
    elif last_of_block:
      layers.append(keras.layers.MaxPooling2D(2, name=f"{block}_pool"))
    units.append(zoo.Unit(name, layers,
                          zoo.conv_params(3, channels, out, norm)
                          + zoo.temporal_params(temporal, out), block))
    channels = out
  fc1 = [keras.layers.Dense(fc_width, activation="relu",
                            kernel_initializer="he_normal", name="fc1")]
  if dropout:
    fc1.append(keras.layers.Dropout(float(dropout), name="fc1_dropout"))
  units.append(zoo.Unit("fc1", fc1, zoo.dense_params(channels, fc_width),
                        "head"))
  units.append(zoo.Unit(
      "fc2", [keras.layers.Dense(num_classes, name="fc2")],
      zoo.dense_params(fc_width, num_classes), "head"))
  return units


def vgg8_stages(num_classes: int, granularity: Union[str, int] = "block",
                width: int = 64, norm: str = "batch", num_modules: int = 0,
                fc_width: Optional[int] = None, dropout: float = 0.0,
                bn_momentum: float = 0.99, norm_groups: int = 32,
                in_channels: int = 3, temporal: str = ""):
  """VGG-8 as Sideways stages; the last emits `num_classes` logits.

  Args:
    num_classes: logits of the top module.
    granularity: "layer" (8 modules), "block" (5) or an int number of
      modules balanced by trainable parameters.
    width: base width w (channels of the first conv; the convs have w, 2w,
      4w, 4w, 8w, 8w channels).
    norm: "batch", "group" or "none" (after every conv).
    num_modules: if > 0, overrides `granularity` with this many modules.
    fc_width: units of the hidden dense layer (default 8w).
    dropout: dropout rate after the hidden dense layer (0 = none).
    bn_momentum: BatchNormalization momentum (Keras convention: moving =
      momentum * moving + (1 - momentum) * batch). Sideways updates the
      moving statistics once per tick, i.e. T times per clip.
    norm_groups: at most this many groups for norm="group".
    in_channels: frame channels; used only to balance an int granularity
      (the weights are built from the frames the pipeline sees).
    temporal: "" (a frame model), "conv:K" or "shift[:fraction]": a causal
      temporal layer after every conv's ReLU (zoo.parse_temporal).

  Any input size from 8x8 up works with the same weights (global pooling).
  """
  units = vgg8_units(num_classes, width, norm, fc_width, dropout, bn_momentum,
                     norm_groups, in_channels, temporal)
  return zoo.to_stages(zoo.group_units(units, granularity, num_modules))
