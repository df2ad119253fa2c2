"""The input pipeline every source shares: videos -> batched float clips.

A source is a tf.data.Dataset of {"frames", "label"} where `frames` is either
uint8 [N, H, W, C] (decoded) or string [N] (one encoded JPEG/PNG per frame;
only the frames of the sampled clip are decoded).

Clip sampling: a clip is `num_frames` frames `temporal_stride` apart, i.e.
it spans (num_frames - 1) * stride + 1 video frames. Training draws the start
uniformly; evaluation takes the centred clip, or `eval_clips` clips with
starts spread uniformly over the video (each one a separate element).
A video shorter than the span is handled by `short_video`:
  "loop"  indices wrap around (frame N follows frame N-1 with frame 0),
  "pad"   frames past the end are black (zeros),
  "drop"  the video is left out (of training and of evaluation).

Spatial: a square crop of side `crop_fraction` x the short side (random
position in training, centred in evaluation), an optional random horizontal
flip in training, resized to image_size x image_size, scaled to [0, 1].

All randomness is stateless and keyed by (seed, element index), so a seed
gives the same batches whatever the parallelism.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

SHORT_VIDEO_MODES = ("loop", "pad", "drop")


@dataclasses.dataclass(frozen=True)
class ClipOptions:
  num_frames: int
  temporal_stride: int
  image_size: int
  crop_fraction: float = 1.0
  random_flip: bool = False
  short_video: str = "loop"
  eval_clips: int = 1

  def __post_init__(self):
    if self.num_frames < 1 or self.temporal_stride < 1:
      raise ValueError(
          f"num_frames and temporal_stride must be >= 1, got "
          f"{self.num_frames} and {self.temporal_stride}")
    if self.image_size < 1:
      raise ValueError(f"image_size must be >= 1, got {self.image_size}")
    if not 0.0 < self.crop_fraction <= 1.0:
      raise ValueError(
          f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
    if self.short_video not in SHORT_VIDEO_MODES:
      raise ValueError(f"short_video must be one of {SHORT_VIDEO_MODES}, got "
                       f"{self.short_video!r}")
    if self.eval_clips < 1:
      raise ValueError(f"eval_clips must be >= 1, got {self.eval_clips}")

  @property
  def span(self) -> int:
    """Video frames one clip covers."""
    return (self.num_frames - 1) * self.temporal_stride + 1


def clip_indices(start, options: ClipOptions):
  """Frame indices of the clip starting at `start` (before short handling)."""
  return start + tf.range(options.num_frames) * options.temporal_stride


def clip_starts(num_video_frames, options: ClipOptions, training: bool,
                seed=None):
  """[K] start frames: one random (training) or eval_clips spread evenly."""
  room = tf.maximum(num_video_frames - options.span, 0)
  if training:
    start = tf.random.stateless_uniform(
        [], seed=seed, minval=0, maxval=room + 1, dtype=tf.int32)
    return start[None]
  if options.eval_clips == 1:
    return (room // 2)[None]
  steps = tf.range(options.eval_clips) * room
  return steps // (options.eval_clips - 1)


def _gather_frames(frames, indices, num_video_frames, options: ClipOptions):
  """Frames at `indices` (decoded to uint8), handling short videos."""
  if options.short_video == "pad":
    valid = indices < num_video_frames
    indices = tf.minimum(indices, num_video_frames - 1)
  else:  # loop (and drop, where indices are always in range)
    valid = None
    indices = indices % num_video_frames
  clip = tf.gather(frames, indices)
  if clip.dtype == tf.string:
    # One decode op per frame (T is static), not a tf.map_fn loop: the T
    # decodes are independent graph nodes that tf.data runs in parallel,
    # without the loop's per-iteration overhead.
    clip = tf.stack([
        tf.io.decode_image(encoded, channels=3, expand_animations=False)
        for encoded in tf.unstack(clip, num=options.num_frames)])
  if valid is not None:
    clip = clip * tf.cast(valid, clip.dtype)[:, None, None, None]
  return clip


def _crop_resize_flip(clip, options: ClipOptions, training: bool, seed):
  """[T, H, W, C] uint8 -> [T, S, S, C] float32 in [0, 1].

  Crop and flip work on the uint8 frames, before the one conversion to
  float (a flip commutes with the resize), so the float clip is written
  only by the resize (or cast) and the scaling.
  """
  size = options.image_size
  if training and options.random_flip:
    flip_seed = tf.random.experimental.stateless_split(seed, 4)[3]
  already_sized = (options.crop_fraction == 1.0
                   and tuple(clip.shape[1:3]) == (size, size))
  if not already_sized:  # e.g. the synthetic videos skip all of this
    clip = _crop(clip, options, training, seed)
  if training and options.random_flip:
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    clip = tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)
  clip = tf.cast(clip, tf.float32) if already_sized else _resize(clip, size)
  clip = clip / 255.0
  return tf.ensure_shape(clip, [options.num_frames, size, size, 3])


def _crop(clip, options: ClipOptions, training: bool, seed):
  """Square crop (random or centred) of crop_fraction x the short side."""
  shape = tf.shape(clip)
  height, width = shape[1], shape[2]
  side = tf.cast(tf.cast(tf.minimum(height, width), tf.float32)
                 * options.crop_fraction, tf.int32)
  side = tf.maximum(side, 1)
  if training:
    top_seed, left_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)[:2])
    top = tf.random.stateless_uniform([], top_seed, 0, height - side + 1,
                                      dtype=tf.int32)
    left = tf.random.stateless_uniform([], left_seed, 0, width - side + 1,
                                       dtype=tf.int32)
  else:
    top, left = (height - side) // 2, (width - side) // 2
  return clip[:, top:top + side, left:left + side, :]


def _resize(clip, size: int):
  """Square uint8 frames -> float32 [T, size, size, C] in [0, 255].

  Antialiasing only matters when shrinking; when enlarging (e.g. a 56 px
  crop of 64 px frames to 64) its kernel is plain bilinear's, and the plain
  op is several times cheaper (the same values up to float rounding).
  """
  def shrink():
    resized = tf.image.resize(clip, [size, size], antialias=True)
    # The antialiasing kernel can overshoot [0, 255] a little.
    return tf.clip_by_value(resized, 0.0, 255.0)

  return tf.cond(tf.shape(clip)[1] > size, shrink,
                 lambda: tf.image.resize(clip, [size, size], antialias=False))


def make_clips(example, options: ClipOptions, training: bool, seed=None):
  """{"frames", "label"} -> {"video": [K, T, S, S, 3], "label": [K]}."""
  frames = example["frames"]
  num_video_frames = tf.shape(frames)[0]
  start_seed = seed
  if training:
    start_seed, seed = tf.unstack(tf.random.experimental.stateless_split(
        seed, 2))
  starts = clip_starts(num_video_frames, options, training, start_seed)
  clips = []
  for k in range(1 if training else options.eval_clips):
    indices = clip_indices(starts[k], options)
    clip = _gather_frames(frames, indices, num_video_frames, options)
    clips.append(_crop_resize_flip(clip, options, training, seed))
  label = tf.cast(example["label"], tf.int32)
  return {"video": tf.stack(clips),
          "label": tf.fill([len(clips)], label)}


def _keep_long_enough(options: ClipOptions):
  def keep(example):
    return tf.shape(example["frames"])[0] >= options.span
  return keep


def _deterministic(dataset):
  opts = tf.data.Options()
  opts.deterministic = True
  return dataset.with_options(opts)


def train_dataset(source: tf.data.Dataset, options: ClipOptions,
                  batch_size: int, seed: int, shuffle_buffer: int
                  ) -> tf.data.Dataset:
  """Infinite, shuffled, randomly sampled and augmented batches."""
  if options.short_video == "drop":
    source = source.filter(_keep_long_enough(options))
  dataset = source.shuffle(shuffle_buffer, seed=seed,
                           reshuffle_each_iteration=True).repeat()

  def process(index, example):
    element_seed = tf.stack([tf.cast(seed, tf.int64), index])
    clips = make_clips(example, options, training=True, seed=element_seed)
    return {"video": clips["video"][0], "label": clips["label"][0]}

  dataset = dataset.enumerate().map(
      process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  return _deterministic(dataset.prefetch(tf.data.AUTOTUNE))


def eval_dataset(source: tf.data.Dataset, options: ClipOptions,
                 batch_size: int) -> tf.data.Dataset:
  """One pass, in source order: centred (or evenly spread) clips."""
  if options.short_video == "drop":
    source = source.filter(_keep_long_enough(options))
  dataset = source.map(
      lambda example: make_clips(example, options, training=False),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
  dataset = dataset.batch(batch_size, drop_remainder=False)
  return _deterministic(dataset.prefetch(tf.data.AUTOTUNE))


@dataclasses.dataclass
class Source:
  """What a data source hands to the shared pipeline."""
  train: tf.data.Dataset  # finite, {"frames", "label"}
  eval: tf.data.Dataset  # finite, deterministic order
  class_names: list
  # Defaults for options the config leaves out (they differ per source: e.g.
  # flipping synthetic videos would swap the left/right motion labels).
  shuffle_buffer: int = 256
  random_flip: bool = False
  crop_fraction: float = 1.0
  # Labels made of parts (moving digits' digit x direction): {part:
  # (divisor, count)}, part = label // divisor % count; evaluation reports
  # each part's clip accuracy too.
  label_parts: dict = dataclasses.field(default_factory=dict)
