"""ResNet-18 (2D, per frame), cut into Sideways modules.

    stem:    conv 7x7/2 (w), norm, ReLU, max-pool 3x3/2
    conv2_x: 2 basic blocks, w channels,  stride 1
    conv3_x: 2 basic blocks, 2w channels, first stride 2 (projection shortcut)
    conv4_x: 2 basic blocks, 4w channels, first stride 2 (projection shortcut)
    conv5_x: 2 basic blocks, 8w channels, first stride 2 (projection shortcut),
             then global average pooling
    head:    dense(num_classes)

A basic block (:class:`BasicBlock`) is conv3x3-norm-ReLU-conv3x3-norm, plus
the identity (or a 1x1 conv + norm projection when the shape changes), then
ReLU. In a temporal variant (``temporal="conv:K"`` or ``"shift"``) the
residual branch starts with the causal temporal layer, as TSM places its
shift, so the shortcut keeps the frame itself. It is ONE Keras layer, so a module boundary between two blocks passes a
single tensor, which is all the Sideways pipeline carries between modules.
1 + 16 + 1 = 18 weight layers (plus 3 projection convs). Global pooling makes
the same weights work at any input size (32x32 to 224x224 and beyond).

Units (where a module boundary may fall): the stem, each of the 8 blocks and
the head. ``granularity="layer"`` gives 10 modules, ``"block"`` gives 6 (stem,
the four stages, head), an int N gives N modules balanced by trainable
parameter count (see :mod:`sideways_tf.models.zoo`).
"""

from __future__ import annotations

from typing import List, Union

import keras

from sideways_tf.models import zoo

_STAGES = (("conv2_x", 1, 1), ("conv3_x", 2, 2), ("conv4_x", 4, 2),
           ("conv5_x", 8, 2))  # (name, width multiplier, first stride)


@keras.saving.register_keras_serializable(package="sideways_tf")
class BasicBlock(keras.layers.Layer):
  """ResNet basic block as a single layer: ``relu(F(x) + shortcut(x))``.

  Args:
    filters: output channels.
    strides: stride of the first conv (and of the projection).
    project: use a 1x1 conv (+ norm) shortcut instead of the identity;
      required when `strides` > 1 or the channel count changes.
    norm: "batch", "group" or "none".
    bn_momentum, bn_epsilon, norm_groups: normalisation settings.
    temporal: "" or a causal temporal layer at the start of the residual
      branch ("conv:K", "shift[:fraction]"; zoo.parse_temporal).
  """

  def __init__(self, filters: int, strides: int = 1, project: bool = False,
               norm: str = "batch", bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-5, norm_groups: int = 32,
               temporal: str = "", **kwargs):
    super().__init__(**kwargs)
    self.temporal = str(temporal or "")
    self.temporal_layer = zoo.make_temporal(self.temporal, "temporal")
    self.filters = int(filters)
    self.strides = int(strides)
    self.project = bool(project)
    self.norm = zoo.check_norm(norm)
    self.bn_momentum = float(bn_momentum)
    self.bn_epsilon = float(bn_epsilon)
    self.norm_groups = int(norm_groups)
    use_bias = norm == "none"

    def conv(kernel, strides, name):
      return keras.layers.Conv2D(
          self.filters, kernel, strides=strides, padding="same",
          use_bias=use_bias, kernel_initializer="he_normal", name=name)

    def make_norm(name):
      return zoo.make_norm(norm, self.filters, name, bn_momentum, bn_epsilon,
                           norm_groups)

    self.conv1 = conv(3, self.strides, "conv1")
    self.norm1 = make_norm("norm1")
    self.conv2 = conv(3, 1, "conv2")
    self.norm2 = make_norm("norm2")
    if self.project:
      self.shortcut_conv = conv(1, self.strides, "shortcut_conv")
      self.shortcut_norm = make_norm("shortcut_norm")

  def build(self, input_shape):
    input_shape = tuple(input_shape)
    if not self.project and input_shape[-1] != self.filters:
      raise ValueError(
          f"{self.name}: an identity shortcut needs {self.filters} input "
          f"channels, got input shape {input_shape}; use project=True")
    if self.temporal_layer is not None:
      self.temporal_layer.build(input_shape)
    self.conv1.build(input_shape)
    shape = self.conv1.compute_output_shape(input_shape)
    if self.norm1 is not None:
      self.norm1.build(shape)
    self.conv2.build(shape)
    if self.norm2 is not None:
      self.norm2.build(shape)
    if self.project:
      self.shortcut_conv.build(input_shape)
      if self.shortcut_norm is not None:
        self.shortcut_norm.build(shape)

  def call(self, inputs, training=None):
    x = inputs if self.temporal_layer is None else self.temporal_layer(inputs)
    x = self.conv1(x)
    if self.norm1 is not None:
      x = self.norm1(x, training=training)
    x = keras.ops.relu(x)
    x = self.conv2(x)
    if self.norm2 is not None:
      x = self.norm2(x, training=training)
    shortcut = inputs
    if self.project:
      shortcut = self.shortcut_conv(inputs)
      if self.shortcut_norm is not None:
        shortcut = self.shortcut_norm(shortcut, training=training)
    return keras.ops.relu(x + shortcut)

  def compute_output_shape(self, input_shape):
    return self.conv1.compute_output_shape(tuple(input_shape))

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, strides=self.strides,
                  project=self.project, norm=self.norm,
                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  norm_groups=self.norm_groups, temporal=self.temporal)
    return config

  @staticmethod
  def num_params(in_channels: int, filters: int, project: bool,
                 norm: str, temporal: str = "") -> int:
    """Trainable parameters of a block (analytic)."""
    total = (zoo.conv_params(3, in_channels, filters, norm) +
             zoo.conv_params(3, filters, filters, norm) +
             zoo.temporal_params(temporal, in_channels))
    if project:
      total += zoo.conv_params(1, in_channels, filters, norm)
    return total


def resnet18_units(num_classes: int, width: int = 64, norm: str = "batch",
                   bn_momentum: float = 0.99, norm_groups: int = 32,
                   in_channels: int = 3, temporal: str = "") -> List[zoo.Unit]:
  """The 10 units of ResNet-18 (fresh, unbuilt layers)."""
  zoo.check_norm(norm)
  zoo.parse_temporal(temporal)
  width = int(width)
  stem = [keras.layers.Conv2D(width, 7, strides=2, padding="same",
                              use_bias=norm == "none",
                              kernel_initializer="he_normal", name="stem_conv")]
  stem_norm = zoo.make_norm(norm, width, "stem_norm", bn_momentum,
                            norm_groups=norm_groups)
  if stem_norm is not None:
    stem.append(stem_norm)
  stem += [keras.layers.ReLU(name="stem_relu"),
           keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                     name="stem_pool")]
  units = [zoo.Unit("stem", stem,
                    zoo.conv_params(7, int(in_channels), width, norm), "stem")]
  channels = width
  for stage, multiplier, first_stride in _STAGES:
    filters = multiplier * width
    for i in range(2):
      strides = first_stride if i == 0 else 1
      project = strides != 1 or channels != filters
      name = f"{stage}_{i + 1}"
      layers = [BasicBlock(filters, strides, project, norm, bn_momentum,
                           norm_groups=norm_groups, temporal=temporal,
                           name=name)]
      if stage == _STAGES[-1][0] and i == 1:
        layers.append(keras.layers.GlobalAveragePooling2D(name="global_pool"))
      units.append(zoo.Unit(
          name, layers, BasicBlock.num_params(channels, filters, project,
                                              norm, temporal), stage))
      channels = filters
  units.append(zoo.Unit("fc", [keras.layers.Dense(num_classes, name="fc")],
                        zoo.dense_params(channels, num_classes), "head"))
  return units


def resnet18_stages(num_classes: int, granularity: Union[str, int] = "block",
                    width: int = 64, norm: str = "batch", num_modules: int = 0,
                    bn_momentum: float = 0.99, norm_groups: int = 32,
                    in_channels: int = 3, temporal: str = ""):
  """ResNet-18 as Sideways stages; the last emits `num_classes` logits.

  Args:
    num_classes: logits of the top module.
    granularity: "layer" (10 modules: stem, 8 blocks, head), "block" (6:
      stem, conv2_x..conv5_x, head) or an int number of modules balanced by
      trainable parameters.
    width: base width w (the stages have w, 2w, 4w, 8w channels).
    norm: "batch", "group" or "none" (after every conv).
    num_modules: if > 0, overrides `granularity` with this many modules.
    bn_momentum: BatchNormalization momentum (Keras convention). Sideways
      updates the moving statistics once per tick, i.e. T times per clip.
    norm_groups: at most this many groups for norm="group".
    in_channels: frame channels; used only to balance an int granularity.
    temporal: "" (a frame model), "conv:K" or "shift[:fraction]": a causal
      temporal layer at the start of every block's residual branch.
  """
  units = resnet18_units(num_classes, width, norm, bn_momentum, norm_groups,
                         in_channels, temporal)
  return zoo.to_stages(zoo.group_units(units, granularity, num_modules))
