"""The temporal-memory benchmark figure: what each variant keeps, its table.
No memory or timing assertions on measured numbers (those belong to
docs/benchmarks.md); the pipeline state is exact, so it is checked."""

import pytest

from sideways_tf.benchmark import temporal_memory
from sideways_tf.benchmark.common import BenchmarkConfig

TINY = BenchmarkConfig(image_size=8, batch_size=2, num_modules=2,
                       memory_steps=1, truncation=2)


@pytest.mark.parametrize("variant", sorted(temporal_memory.VARIANTS))
def test_every_variant_trains_the_temporal_model(variant):
  rows = [temporal_memory.measure(TINY, variant, t) for t in (2, 6)]
  assert [r["num_frames"] for r in rows] == [2, 6]
  assert all(r["peak_mib"] > 0 and r["clip_mib"] > 0 for r in rows)
  if variant in ("sideways", "bp_truncated"):
    # The state a stream keeps between calls does not grow with T.
    assert rows[0]["state_mib"] == rows[1]["state_mib"] > 0


def test_markdown_states_the_budget_and_the_growth():
  rows = [dict(variant=v, num_frames=t, step_mib=mib * t / 16 if v == "bp"
               else mib, state_mib=0.5, peak_mib=1.0, clip_mib=1.0)
          for v, mib in (("sideways", 10.0), ("bp", 40.0),
                         ("bp_truncated", 40.0), ("gpipe_remat", 20.0))
          for t in (16, 256)]
  fig = dict(rows=rows, t_min=16, t_max=256, truncation=16,
             temporal="conv:3", budget_mib=40.0,
             growth={"sideways": 1.0, "bp": 16.0},
             goal={"sideways_flat_ratio": 1.1, "met": True})
  text = "\n".join(temporal_memory.markdown(fig))
  assert "| BP through time (whole clip) | 40.0 | 640.0 | 16.00 |" in text
  assert "| Sideways (whole stream) | 10.0 (0.50) | 10.0 (0.50) | 1.00 |" in (
      text)
  assert ("Within it at every T: Sideways (whole stream), BP truncated at "
          "chunk edges, GPipe, re-materialised.") in text
  assert ": met." in text
