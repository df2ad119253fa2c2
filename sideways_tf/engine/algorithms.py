"""The table of algorithms: the one list `Pipeline`, the trainer, the configs,
the command-line errors and the docs read.

Adding an algorithm: write its module under `engine/` with a subclass of
:class:`~sideways_tf.engine.algorithm.Algorithm` (docs/engine.md, "Adding an
algorithm"), and add its instance to `REGISTRY` below. Nothing in
`training/`, `apps/` or the Keras model names an algorithm.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from sideways_tf.engine.algorithm import Algorithm
from sideways_tf.engine.bp import BP
from sideways_tf.engine.gpipe import GPIPE
from sideways_tf.engine.pipelined_bp import PIPELINED_BP
from sideways_tf.engine.sideways import SIDEWAYS

REGISTRY: Dict[str, Algorithm] = {
    a.name: a for a in (SIDEWAYS, BP, GPIPE, PIPELINED_BP)}

# The names, in the table's order (public: ``sideways_tf.ALGORITHMS``).
ALGORITHMS: Tuple[str, ...] = tuple(REGISTRY)


def names_for_humans() -> str:
  """'sideways', 'bp', ... or 'pipelined_bp': the names as an error message
  lists them."""
  quoted = [repr(n) for n in ALGORITHMS]
  return (", ".join(quoted[:-1]) + " or " + quoted[-1]) if len(quoted) > 1 \
      else quoted[0]


def get(name: str) -> Algorithm:
  """The algorithm called `name` (ValueError listing the known ones)."""
  if name not in REGISTRY:
    raise ValueError(f"unknown algorithm {name!r}; expected one of "
                     f"{ALGORITHMS}")
  return REGISTRY[name]


def make_options(given: Dict[str, Any]) -> Dict[str, Any]:
  """Each algorithm's validated options, from Pipeline keyword arguments.

  `given` holds the algorithm options a Pipeline was built with (any subset
  of every algorithm's `options`); a name no algorithm knows is a TypeError,
  as an unexpected keyword argument would be.
  """
  known = {key for a in REGISTRY.values() for key in a.options}
  unknown = sorted(set(given) - known)
  if unknown:
    raise TypeError(f"Pipeline got unexpected keyword argument(s) "
                    f"{', '.join(unknown)}; algorithm options are "
                    f"{sorted(known)}")
  return {a.name: a.make_options(**{k: given[k] for k in a.options
                                    if k in given})
          for a in REGISTRY.values()}


def options_from_config(config) -> Dict[str, Any]:
  """Pipeline keyword arguments from a config, by each option's config key."""
  options = {}
  for algorithm in REGISTRY.values():
    for option, path in algorithm.config_keys.items():
      value = config
      for part in path.split("."):
        value = value[part]
      options[option] = value
  return options


def table_markdown() -> str:
  """The table as markdown rows (docs/engine.md shows it)."""
  rows = ["| algorithm | exact | tick engine (streams, replay) | what |",
          "|---|---|---|---|"]
  for a in REGISTRY.values():
    rows.append(f"| `{a.name}` | {'yes' if a.exact else 'no'} | "
                f"{'yes' if a.streams else 'no'} | {a.summary} |")
  return "\n".join(rows)


TABLE_MARKERS = ("<!-- algorithm-table: begin -->",
                 "<!-- algorithm-table: end -->")


def write_docs_table(path) -> None:
  """Writes :func:`table_markdown` into docs/engine.md between its markers
  (``python -m sideways_tf.engine.algorithms docs/engine.md``)."""
  from sideways_tf.run import files  # only the docs writer needs it
  files.write_marked_section(path, *TABLE_MARKERS,
                             table_markdown().split("\n"))


if __name__ == "__main__":
  import sys
  write_docs_table(sys.argv[1] if len(sys.argv) > 1 else "docs/engine.md")
