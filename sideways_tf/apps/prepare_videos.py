r"""Turns class-named folders of videos into TFRecords for config.data.path.

  bin/prepare_videos --input_dir=hmdb51 --output_dir=data_cache/hmdb51_split1 \
      --split_file=testTrainMulti_7030_splits/brush_hair_test_split1.txt
  bin/prepare_videos --input_dir=UCF-101 --output_dir=data_cache/ucf101_split1 \
      --split_file=ucfTrainTestlist/trainlist01.txt
  bin/prepare_videos --input_dir=my_videos --output_dir=data_cache/my_videos

Rerunning the same command resumes: finished shards are kept. See
docs/data.md for the layouts, split files and output format.
"""

import os
import pathlib
import sys

from sideways_tf.run import quiet

quiet.quiet_start(sys.argv)  # TensorFlow imported without its C++ start-up lines

from absl import flags

from sideways_tf.run import cli

_INPUT_DIR = flags.DEFINE_string(
    "input_dir", None, "Folder of <class>/<videos> (or <split>/<class>/"
    "<videos>, split in train/val/validation/valid/test). Not needed with "
    "--verify.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where the TFRecords and metadata.json go; "
    "config.data.path for training.", required=True)
_VERIFY = flags.DEFINE_bool(
    "verify", False, "Only check the prepared shards in --output_dir against "
    "the sizes and checksums in their JSON records; exit 2 if one is bad.")
_SPLIT_FILE = flags.DEFINE_string(
    "split_file", "", "Official split list: UCF101 trainlist01.txt/"
    "testlist01.txt or an HMDB51 <class>_test_split1.txt (its siblings are "
    "read too), or their folder with --split_number. Empty: split folders if "
    "present, else a hash split with --test_fraction.")
_SPLIT_NUMBER = flags.DEFINE_integer(
    "split_number", 1, "Which official split when --split_file is a folder.")
_SHORT_SIDE = flags.DEFINE_integer(
    "short_side", 128, "Resize frames to this short side (0 = keep).")
_NUM_FRAMES_MAX = flags.DEFINE_integer(
    "num_frames_max", 0, "Keep at most the first N frames (0 = all).")
_TEST_FRACTION = flags.DEFINE_float(
    "test_fraction", 0.2, "Hash split only: fraction of videos in 'test'.")
_VIDEOS_PER_SHARD = flags.DEFINE_integer(
    "videos_per_shard", 64, "Videos per TFRecord shard.")
_JPEG_QUALITY = flags.DEFINE_integer(
    "jpeg_quality", 90, "JPEG quality of the stored frames.")
_STORAGE = flags.DEFINE_enum(
    "storage", "jpeg", ["jpeg", "raw"], "How frames are stored: jpeg "
    "(small, decoded when training) or raw uint8 RGB bytes (H x W x 3 per "
    "frame: no decoding, several times larger; for small --short_side such "
    "as 64). The loader reads either (metadata.json records it).")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", os.cpu_count() or 1, "Decoding processes.")


def main(argv):
  cli.start(argv)
  if _VERIFY.value:
    from sideways_tf.data import shard_check  # noqa: PLC0415
    checked, bad = shard_check.verify_folder(_OUTPUT_DIR.value)
    for path, problem in bad:
      print(f"BAD {path}: {problem}", flush=True)
    if bad:
      raise shard_check.DataError(
          f"{len(bad)} of {checked} shards are bad; "
          f"{shard_check.repair_hint(_OUTPUT_DIR.value)}")
    print(f"{checked} shards OK in {_OUTPUT_DIR.value}", flush=True)
    return
  if not _INPUT_DIR.value:
    raise ValueError("--input_dir is required (unless --verify)")
  from sideways_tf.data import video_folder  # imports TF
  options = video_folder.PrepareOptions(
      short_side=_SHORT_SIDE.value, num_frames_max=_NUM_FRAMES_MAX.value,
      jpeg_quality=_JPEG_QUALITY.value, storage=_STORAGE.value,
      test_fraction=_TEST_FRACTION.value,
      videos_per_shard=_VIDEOS_PER_SHARD.value,
      split_file=_SPLIT_FILE.value, split_number=_SPLIT_NUMBER.value)
  summary = video_folder.prepare(_INPUT_DIR.value, _OUTPUT_DIR.value,
                                 options, num_workers=_NUM_WORKERS.value)
  metadata = summary["metadata"]
  splits = ", ".join(f"{name}: {info['num_videos']} videos"
                     for name, info in sorted(metadata["splits"].items()))
  rate = (f"; {summary['videos_per_second']:.1f} videos/s"
          if summary["shards_written"] else " (nothing left to do)")
  print(f"{metadata['num_classes']} classes; {splits}; "
        f"{len(metadata['skipped'])} skipped. Shards: "
        f"{summary['shards_written']} written, {summary['shards_reused']} "
        f"kept{rate}. "
        f"Use --config.data.path={pathlib.Path(_OUTPUT_DIR.value).resolve()}",
        flush=True)


def run():
  """Console-script entry point: parses the flags and runs main."""
  cli.run_app(main, __name__, __doc__)


if __name__ == "__main__":
  run()
