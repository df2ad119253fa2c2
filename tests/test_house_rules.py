"""The package's structure rules (README "Layout", docs/engine.md), checked.

Read from the source with `ast`, so a file a newcomer opens obeys them:

* no class over MAX_CLASS_LINES lines, no function over MAX_FUNCTION_LINES
  unless its docstring says why it is "one piece" (a length is
  end_lineno - lineno + 1, docstring and comments included);
* the engine's modules import downward only: no circle, and no algorithm
  reaches back up to the Pipeline or the table;
* the package root holds only `__init__.py` and packages;
* the training loop reads its own settings, never the config (as the hooks
  do: `make_hooks`, `EvalSettings`, `LoopSettings`).
"""

import ast
import pathlib

import pytest

import sideways_tf
from sideways_tf.engine import algorithms

PACKAGE = pathlib.Path(sideways_tf.__file__).parent
ENGINE = PACKAGE / "engine"
MAX_CLASS_LINES = 200
MAX_FUNCTION_LINES = 60
WHY_WORDS = "one piece"


def _sources():
  """(path relative to the package, its parsed module), for every file."""
  return [(path.relative_to(PACKAGE), ast.parse(path.read_text()))
          for path in sorted(PACKAGE.rglob("*.py"))]


def _length(node) -> int:
  return node.end_lineno - node.lineno + 1


def _too_long(sources):
  """`path: name (N lines)` of each class and each unexplained function
  over its limit."""
  found = []
  for path, tree in sources:
    for node in ast.walk(tree):
      if isinstance(node, ast.ClassDef) and _length(node) > MAX_CLASS_LINES:
        found.append(f"{path}: class {node.name} ({_length(node)} lines)")
      elif (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and _length(node) > MAX_FUNCTION_LINES
            and WHY_WORDS not in (ast.get_docstring(node) or "").lower()):
        found.append(f"{path}: def {node.name} ({_length(node)} lines)")
  return found


def test_no_long_class_and_no_unexplained_long_function():
  too_long = _too_long(_sources())
  assert not too_long, (
      f"over {MAX_CLASS_LINES} lines (a class) or {MAX_FUNCTION_LINES} "
      f"(a function whose docstring does not say why it is "
      f"'{WHY_WORDS}'): split along the seams, or say why:\n"
      + "\n".join(too_long))


def test_the_length_check_sees_what_it_must():
  """The check itself: a long class, a long function and a long function
  that says why it is one piece."""
  body = "\n".join(["  x = 1"] * MAX_FUNCTION_LINES)
  source = (f"class Big:\n{chr(10).join(['  a = 1'] * MAX_CLASS_LINES)}\n"
            f"def long():\n{body}\n"
            f"def explained():\n  '''One piece: a reason.'''\n{body}\n"
            f"def short():\n  return 1\n")
  assert _too_long([("example.py", ast.parse(source))]) == [
      f"example.py: class Big ({MAX_CLASS_LINES + 1} lines)",
      f"example.py: def long ({MAX_FUNCTION_LINES + 1} lines)"]


def _engine_imports():
  """{engine module: the engine modules it imports} from the source."""
  graph = {}
  for path in ENGINE.glob("*.py"):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        if node.module.startswith("sideways_tf.engine."):
          imported.add(node.module.split(".")[2])
        elif node.module == "sideways_tf.engine":
          imported.update(a.name for a in node.names)
    graph[path.stem] = imported - {path.stem}
  return graph


def test_the_engine_imports_have_no_circle():
  graph = _engine_imports()
  done, on_path = set(), []

  def visit(name):
    if name in on_path:
      pytest.fail(f"import circle: {' -> '.join(on_path + [name])}")
    if name in done:
      return
    on_path.append(name)
    for child in graph.get(name, ()):
      visit(child)
    on_path.pop()
    done.add(name)

  for name in graph:
    visit(name)
  # Downward only: no algorithm reaches back up to the Pipeline or the table.
  for name, algorithm in algorithms.REGISTRY.items():
    module = type(algorithm).__module__.split(".")[-1]
    assert not graph[module] & {"pipeline", "algorithms"}, module


def test_the_package_root_holds_only_init_and_packages():
  strays = sorted(
      path.name for path in PACKAGE.iterdir()
      if path.name not in ("__init__.py", "__pycache__")
      and not (path.is_dir() and (path / "__init__.py").exists()))
  assert not strays, (
      f"sideways_tf/ holds {strays}: modules belong in a package (README "
      f"'Layout'), the root only __init__.py")


def _attributes_named(function, name):
  return [node.lineno for node in ast.walk(function)
          if isinstance(node, ast.Attribute) and node.attr == name]


def test_the_training_loop_reads_its_settings_not_the_config():
  tree = ast.parse((PACKAGE / "training" / "train_lib.py").read_text())
  loop, = [node for node in tree.body
           if isinstance(node, ast.FunctionDef) and node.name == "_loop"]
  assert not _attributes_named(loop, "config"), (
      "train_lib._loop reads the config (lines "
      f"{_attributes_named(loop, 'config')}); give it a LoopSettings field")
