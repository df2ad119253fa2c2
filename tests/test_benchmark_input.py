"""bin/benchmark's prepared-folder input figure (5b) at a tiny size: both
storages prepared in the bench dir, read back, divided by a training rate and
reported. No timing assertions."""

import json

from sideways_tf.benchmark import input_folder
from sideways_tf.benchmark import report
from sideways_tf.benchmark.common import BenchmarkConfig
from sideways_tf.data import video_folder


def test_folder_figure_prepares_both_storages_and_reports_ratios(tmp_path):
  config = BenchmarkConfig(image_size=16, num_frames=4, batch_size=2,
                           data_batches=2)
  fig = input_folder.measure(config, tmp_path, rounds=2)
  folder = tmp_path / input_folder.folder_name(config)
  for storage in input_folder.STORAGES:
    metadata = video_folder.read_metadata(folder / storage)
    assert video_folder.storage_of(metadata) == storage
    assert metadata["splits"]["train"]["num_videos"] == input_folder.NUM_VIDEOS
    row = fig[storage]
    assert row["video_shape"] == [2, 4, 16, 16, 3]
    assert len(row["seconds"]) == 2 and row["frames_per_s"] > 0
    assert row["written"]
  # Raw frames are the pixels: 16 x 16 x 3 bytes plus the record's framing.
  assert 768 <= fig["raw"]["bytes_per_frame"] < 768 + 64
  assert fig["frames_per_round"] == 2 * 2 * 4  # 2 batches of B x T per round
  assert fig["data"]["crop_fraction"] == 0.875 and fig["data"]["random_flip"]

  input_folder.with_training_rate(fig, 100.0, goal=3.0)
  for storage in input_folder.STORAGES:
    assert fig[storage]["ratio"] == fig[storage]["frames_per_s"] / 100.0
    assert fig[storage]["met"] == (fig[storage]["ratio"] >= 3.0)
  fig["available"] = True
  text = "\n".join(report._input_folder(json.loads(json.dumps(fig))))
  assert "### 5b. Prepared video folder" in text
  assert f"| raw | {fig['raw']['bytes_per_frame']:.0f} |" in text

  # A rerun with the same sizes reuses the prepared folders.
  again = input_folder.measure(config, tmp_path, rounds=1)
  assert not again["jpeg"]["written"] and not again["raw"]["written"]
