"""The skip-variant experiment's plumbing: commands, pairing, the report."""

import json

import numpy as np

from sideways_tf.configs import motion_skip
from sideways_tf.paper_experiments import gap_map
from sideways_tf.paper_experiments import skip_variants
from sideways_tf.training import builder


def test_every_cell_is_bin_train_on_motion_skip_with_valid_overrides(
    tmp_path):
  for cell in skip_variants.CELLS:
    command = gap_map.train_command(cell, "sideways", 1, tmp_path, 100)
    assert command[1].endswith("bin/train")
    assert command[2].endswith("configs/motion_skip.py")
    assert "--config.seed=1" in command
    config = motion_skip.get_config()
    for key in cell.overrides:  # every key exists
      *parents, name = key.split(".")
      target = config
      for part in parents:
        target = target[part]
      assert name in target, key
  align = skip_variants.cell_by_name("aligned skip 2:0 (skip_align=True)")
  assert "--config.skip_align=True" in gap_map.train_command(
      align, "bp", 0, tmp_path, 100)
  assert builder.parse_skips(motion_skip.get_config().skips) == {2: [0]}


def test_plan_and_run_dirs_keep_steps_apart(tmp_path):
  runs = skip_variants.plan(tmp_path, steps=1000, seeds=3,
                            only_groups=["default", "replay"])
  assert [(c.group, a, s) for c, a, s, _ in runs][:2] == [
      ("default", "sideways", 0), ("default", "bp", 0)]
  assert len(runs) == 3 * 2 + 3 * 3  # the 3 replay cells share its BP
  assert len({str(d) for *_, d in runs}) == len(runs)
  everything = skip_variants.plan(tmp_path, steps=1000, seeds=1)
  assert "longer" not in {c.group for c, *_ in everything}  # only if asked
  cell = skip_variants.CELLS[0]
  assert (skip_variants.run_dir(tmp_path, cell, "bp", 0, 1000)
          != skip_variants.run_dir(tmp_path, cell, "bp", 0, 3000))


def _write(outdir, cell_name, algorithm, seed, accuracy, steps=1000):
  cell = skip_variants.cell_by_name(cell_name)
  workdir = skip_variants.run_dir(outdir, cell, algorithm, seed, steps)
  workdir.mkdir(parents=True)
  (workdir / "result.json").write_text(json.dumps(dict(
      cell=cell_name, algorithm=algorithm, seed=seed, steps=steps,
      test_accuracy=accuracy, early={"cosine/module_1": 0.5})))


def test_rows_pair_by_seed_and_the_report_keeps_the_rest(tmp_path):
  default = skip_variants.DEFAULT
  replay = "offset skip + replay_modules=2"
  for s in range(3):
    _write(tmp_path / "out", default, "bp", s, 1.0)
    _write(tmp_path / "out", default, "sideways", s, 0.7 + 0.1 * s)
    _write(tmp_path / "out", replay, "sideways", s, 0.9)
  rows = {r["cell"]: r for r in skip_variants.rows(
      skip_variants.load(tmp_path / "out"))}
  np.testing.assert_allclose(rows[default]["gap"][0], -0.2)
  assert rows[default]["seeds"] == [0, 1, 2]
  np.testing.assert_allclose(rows[replay]["gap"], (-0.1, 0.0), atol=1e-12)
  assert not rows[replay]["own_bp"]
  assert rows[default]["cosine"][1] == 0.5
  (tmp_path / "results.md").write_text("# Results\n\nEarlier sections.\n")
  for _ in range(2):
    path = skip_variants.update(tmp_path / "out", tmp_path,
                                "bin/experiments --only=skip_variants")
  text = path.read_text()
  assert text.startswith("# Results\n\nEarlier sections.")
  assert text.count(skip_variants.BEGIN) == 1
  assert (f"| 1000 | {replay} | 3/3 | 0.900 ± 0.000 | 1.000 ± 0.000 "
          "(shared) |") in text
