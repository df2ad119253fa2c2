"""Clip sampling shared by every source: starts, short videos, scaling."""

import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.data import clips


def options(**kwargs):
  values = dict(num_frames=4, temporal_stride=2, image_size=2)
  values.update(kwargs)
  return clips.ClipOptions(**values)


def video(num_frames, size=2):
  """Frame i has every pixel equal to 10 * i (uint8)."""
  values = (10 * np.arange(num_frames)).astype(np.uint8)
  return {"frames": tf.constant(np.broadcast_to(
      values[:, None, None, None], (num_frames, size, size, 3)).copy()),
          "label": tf.constant(3)}


def frame_ids(clip):
  return [int(round(v * 255 / 10)) for v in clip[:, 0, 0, 0].numpy()]


def test_span_counts_the_video_frames_a_clip_covers():
  assert options().span == 7
  assert options(temporal_stride=1).span == 4


def test_eval_starts_are_centred_or_spread_evenly():
  assert clips.clip_starts(17, options(), False).numpy().tolist() == [5]
  spread = clips.clip_starts(17, options(eval_clips=3), False)
  assert spread.numpy().tolist() == [0, 5, 10]


def test_training_start_is_in_range_and_set_by_the_seed():
  starts = {int(clips.clip_starts(17, options(), True, seed=[0, s])[0])
            for s in range(30)}
  assert starts <= set(range(11)) and len(starts) > 1
  again = clips.clip_starts(17, options(), True, seed=[0, 7])
  assert int(again[0]) == int(clips.clip_starts(17, options(), True,
                                                seed=[0, 7])[0])


def test_eval_clip_takes_every_stride_th_frame_scaled_to_unit_range():
  out = clips.make_clips(video(17), options(), training=False)
  assert out["video"].shape == (1, 4, 2, 2, 3)
  assert out["label"].numpy().tolist() == [3]
  assert frame_ids(out["video"][0]) == [5, 7, 9, 11]
  assert float(tf.reduce_max(out["video"])) <= 1.0


def test_short_videos_loop_or_pad():
  looped = clips.make_clips(video(5), options(), training=False)
  assert frame_ids(looped["video"][0]) == [0, 2, 4, 1]
  padded = clips.make_clips(video(5), options(short_video="pad"),
                            training=False)
  assert frame_ids(padded["video"][0]) == [0, 2, 4, 0]
  assert float(tf.reduce_sum(padded["video"][0, 3])) == 0.0


def test_train_batches_repeat_for_a_seed():
  source = tf.data.Dataset.from_tensors(video(9)).repeat(4)
  first = next(iter(clips.train_dataset(source, options(), 2, 5, 4)))
  second = next(iter(clips.train_dataset(source, options(), 2, 5, 4)))
  np.testing.assert_array_equal(first["video"], second["video"])
  assert first["video"].shape == (2, 4, 2, 2, 3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_frames=0), "num_frames and temporal_stride must be >= 1"),
    (dict(image_size=0), "image_size must be >= 1, got 0"),
    (dict(crop_fraction=1.5), r"crop_fraction must be in \(0, 1\], got 1.5"),
    (dict(short_video="clip"), "short_video must be one of"),
    (dict(eval_clips=0), "eval_clips must be >= 1, got 0"),
])
def test_bad_options_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    options(**kwargs)
