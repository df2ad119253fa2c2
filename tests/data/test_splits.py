"""Official split lists and the hash split."""

import pytest

from sideways_tf.data import splits


def test_ucf101_lists_from_either_file_or_folder(tmp_path):
  (tmp_path / "trainlist01.txt").write_text(
      "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
      "HandstandPushups/v_HandStandPushups_g08_c01.avi 37\n")
  (tmp_path / "testlist01.txt").write_text(
      "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
  for given in (tmp_path / "testlist01.txt", tmp_path):
    assignment, files = splits.read_split_file(given)
    assert len(files) == 2
    assert assignment == {
        "applyeyemakeup/v_applyeyemakeup_g08_c01.avi": "train",
        "handstandpushups/v_handstandpushups_g08_c01.avi": "train",
        "applyeyemakeup/v_applyeyemakeup_g01_c01.avi": "test"}


def test_hmdb51_lists(tmp_path):
  (tmp_path / "brush_hair_test_split1.txt").write_text(
      "a.avi 1 \nb.avi 2 \nc.avi 0 \n")
  (tmp_path / "cartwheel_test_split1.txt").write_text("d.avi 2\n")
  (tmp_path / "cartwheel_test_split2.txt").write_text("d.avi 1\n")
  assignment, files = splits.read_split_file(
      tmp_path / "brush_hair_test_split1.txt")
  assert len(files) == 2
  assert assignment == {"brush_hair/a.avi": "train", "brush_hair/b.avi":
                        "test", "brush_hair/c.avi": splits.UNUSED,
                        "cartwheel/d.avi": "test"}
  assert splits.read_split_file(tmp_path, split_number=2)[0] == {
      "cartwheel/d.avi": "train"}
  videos = [(None, "brush_hair", "brush_hair/sub/a.avi"),
            (None, "cartwheel", "cartwheel/e.avi")]
  by_split, unlisted, _ = splits.assign(videos, assignment, False, 0.2)
  assert by_split == {"train": [("brush_hair", "brush_hair/sub/a.avi")]}
  assert unlisted == [(None, "cartwheel", "cartwheel/e.avi")]


def test_bad_split_files(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    splits.read_split_file(tmp_path / "nope.txt")
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="notes.txt"):
    splits.read_split_file(tmp_path / "notes.txt")
  (tmp_path / "trainlist01.txt").write_text("a/b.avi 1\n")
  with pytest.raises(ValueError, match="testlist01.txt"):
    splits.read_split_file(tmp_path / "trainlist01.txt")
  (tmp_path / "x_test_split1.txt").write_text("a.avi 7\n")
  with pytest.raises(ValueError, match=r"x_test_split1.txt:1"):
    splits.read_split_file(tmp_path / "x_test_split1.txt")


def test_hash_split_is_stable_and_near_the_fraction():
  paths = [f"class_{i % 7}/video_{i}.avi" for i in range(2000)]
  first = [splits.hash_split(p, 0.2) for p in paths]
  assert first == [splits.hash_split(p, 0.2) for p in paths]
  assert 0.17 < first.count("test") / len(paths) < 0.23
  assert all(splits.hash_split(p, 0.0) == "train" for p in paths)
