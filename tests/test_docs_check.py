"""The commands and code of README.md and docs/*.md hold as written.

Every `bin/<tool> --flag ...` (in a code block or inline) names a tool that
exists, and its command line parses with that tool's own absl flags and the
config file it names: every flag and every --config.<key> exists and every
value has its type (tests/docs_flag_check.py; nothing trains). Other
programs a block runs (.venv/bin/..., python files and modules, make
targets) exist, and every python block compiles. Also: bin/benchmark and
bin/experiments write under their own directory unless --doc/--report_dir
is given, and the default run evaluates more than twice.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

from sideways_tf.configs import default as default_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
VENV_BIN = pathlib.Path(sys.executable).parent
# Placeholders the docs use for "a file of yours": any config file will do.
PLACEHOLDER_CONFIGS = ("configs/NAME.py",
                       "<site-packages>/sideways_tf/configs/NAME.py")

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks():
  """(doc, language, text) of every fenced block."""
  for doc in DOCS:
    for match in FENCE.finditer(doc.read_text()):
      yield doc.relative_to(ROOT), match.group(1), match.group(2)


def inline_spans():
  """(doc, text) of every inline code span outside fenced blocks."""
  for doc in DOCS:
    text = FENCE.sub("", doc.read_text())
    for span in re.findall(r"`([^`\n]+)`", text):
      yield doc.relative_to(ROOT), span


HEREDOC = re.compile(r"^(.*<<\s*'?(\w+)'?)\n(.*?)^\2\n?", re.S | re.M)


def heredocs(text):
  """(the shell text without them, [python of each `python3 - <<'EOF'`])."""
  found = [match.group(3) for match in HEREDOC.finditer(text)]
  return HEREDOC.sub(lambda match: match.group(1) + "\n", text), found


def shell_commands(text):
  """The simple commands of a shell text: continuations joined, comments,
  env assignments, `&&`, `;`, `|` and `&` split off."""
  text = text.replace("\\\n", " ")
  commands = []
  for line in text.splitlines():
    try:
      words = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote spanning lines (TF_CONFIG=')
      words = shlex.split(line + "'", comments=True)
    command = []
    for word in words + [";"]:
      if word in ("&&", ";", "|", "&", "||"):
        if command:
          commands.append(command)
        command = []
      elif word.endswith(("&", ";")) and len(word) > 1:
        command.append(word[:-1])
        commands.append(command)
        command = []
      elif not command and re.match(r"^[A-Z_]+=", word):
        continue  # an environment assignment
      else:
        command.append(word)
  return commands


def program(words):
  """('tool', name, args) for bin/<name>, ('module', name, args) for
  python -m, ('file'|'venv'|'make', path, args) for the rest, or None."""
  if not words:
    return None
  if words[0] in (".venv/bin/python", "python", "python3") and len(words) > 1:
    if words[1] == "-m":
      return ("module", words[2], words[3:])
    if words[1] == "-":
      return None  # a heredoc's python (compiled separately)
    words = words[1:]
  head = words[0]
  if head.startswith("bin/"):
    return ("tool", head[len("bin/"):], words[1:])
  if head.endswith(".py"):
    return ("file", head, words[1:])
  if head.startswith(".venv/bin/"):
    return ("venv", head[len(".venv/bin/"):], words[1:])
  if head == "make":
    return ("make", words[1] if len(words) > 1 else "", [])
  return None


def inline_command(span):
  """An inline span that is a command: optional parts `[--x=...]` kept
  without their brackets, `...` dropped."""
  span = re.sub(r"\[([^\]]*)\]", r"\1", span)
  if not re.match(r"^(\.venv/bin/python |PYTHONPATH=\S+ )*(bin/\w+|"
                  r"\.venv/bin/python -m )", span):
    return []
  return [[w for w in words if w not in ("...", "<command>")]
          for words in shell_commands(span)]


def all_commands():
  """(where, (kind, name, args)) of every command in the docs."""
  found = []
  for doc, language, text in blocks():
    if language == "python":
      continue
    text, _ = heredocs(text)
    for words in shell_commands(text):
      prog = program(words)
      if prog and (language in ("bash", "sh", "shell") or
                   prog[0] in ("tool", "module")):
        found.append((f"{doc}: {' '.join(words)[:120]}", prog + (False,)))
  for doc, span in inline_spans():
    for words in inline_command(span):
      prog = program(words)
      if prog and prog[1] != "<command>":
        # `bin/export` named in prose, or `bin/export ... --tflite`: the
        # flags it shows must exist; required ones may be left out.
        partial = not prog[2] or "..." in span
        found.append((f"{doc} (inline): {span[:120]}",
                      prog + (partial,)))
  return found


def _args(args):
  """Placeholder config files -> the default one."""
  default = str(ROOT / "sideways_tf" / "configs" / "default.py")
  return [f"--config={default}" if a.split("=", 1)[-1] in
          PLACEHOLDER_CONFIGS and a.startswith("--config=") else a
          for a in args]


@pytest.fixture(scope="module")
def parsed():
  """Every tool and `-m` command of the docs, parsed in one process."""
  commands = [(where, prog) for where, prog in all_commands()
              if prog[0] in ("tool", "module")]
  requests = []
  for _, (kind, name, args, partial) in commands:
    module = f"sideways_tf.apps.{name}" if kind == "tool" else name
    requests.append([module, _args(args), partial])
  result = subprocess.run(
      [sys.executable, "-m", "tests.docs_flag_check"], cwd=ROOT,
      input=json.dumps(requests), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  output = json.loads(result.stdout.strip().splitlines()[-1])
  return commands, output


def test_the_docs_name_the_commands_this_check_covers():
  kinds = {}
  for _, (kind, name, *_) in all_commands():
    kinds.setdefault(kind, set()).add(name)
  # Every bin/ tool appears, so every one is checked.
  assert kinds["tool"] == {p.name for p in (ROOT / "bin").iterdir()}
  assert "sideways_tf.data.throughput" in kinds["module"]
  assert {"tensorboard", "saved_model_cli"} <= kinds["venv"]


def test_every_bin_command_in_the_docs_parses(parsed):
  commands, output = parsed
  bad = [f"{where}\n    -> {error}" for (where, _), error
         in zip(commands, output["results"]) if error]
  assert not bad, "\n".join(bad)
  assert len(commands) > 40


def test_the_check_catches_a_bad_flag_and_a_bad_config_key():
  requests = [
      ["sideways_tf.apps.train", ["--config.train.num_step=3"], False],
      ["sideways_tf.apps.train", ["--num_steps=3"], False],
      ["sideways_tf.apps.train", ["--config=configs/moving_digits.py",
                                  "--config.data.speed_range=(1, 2)"], False],
      ["sideways_tf.apps.export", ["--output=/tmp/x"], False],
      ["sideways_tf.apps.export", ["--tflite"], True],
      ["sideways_tf.apps.export", ["--tflite=maybe"], True],
      ["sideways_tf.apps.prepare_videos",
       ["--input_dir=a", "--output_dir=b", "--num_workers=many"], False]]
  result = subprocess.run(
      [sys.executable, "-m", "tests.docs_flag_check"], cwd=ROOT,
      input=json.dumps(requests), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  errors = json.loads(result.stdout.strip().splitlines()[-1])["results"]
  assert "num_step" in errors[0]
  assert "num_steps" in errors[1]
  assert errors[2] is None
  assert "workdir" in errors[3]  # a required flag
  assert errors[4] is None  # named in prose: required flags may be missing
  assert "tflite" in errors[5]
  assert "num_workers" in errors[6]


def test_other_programs_the_docs_run_exist():
  makefile = (ROOT / "Makefile").read_text()
  for where, (kind, name, *_) in all_commands():
    if kind == "file":
      assert (ROOT / name).is_file(), where
    elif kind == "venv":
      assert (VENV_BIN / name).is_file(), where
    elif kind == "make":
      assert re.search(rf"^{re.escape(name)}:", makefile, re.M), where


def test_every_python_block_compiles():
  count = 0
  for doc, language, text in blocks():
    sources = [text] if language == "python" else heredocs(text)[1]
    for source in sources:
      compile(textwrap.dedent(source), f"{doc} block", "exec")
      count += 1
  assert count >= 10


def test_config_keys_named_anywhere_in_the_docs_exist():
  """Every --config.<section>.<key> mentioned in prose too."""
  from sideways_tf import configs  # noqa: PLC0415
  keys = set()

  def walk(tree, prefix=""):
    for key, value in tree.items():
      keys.add(prefix + key)
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}.")
  for path in sorted((ROOT / "sideways_tf" / "configs").glob("*.py")):
    if path.name == "__init__.py":
      continue
    module = __import__(f"sideways_tf.configs.{path.stem}",
                        fromlist=["get_config"])
    if hasattr(module, "get_config"):  # not the shared helpers
      walk(configs.with_defaults(module.get_config()))
  missing = []
  for doc in DOCS:
    for key in re.findall(r"--config\.([\w.]*\w)", doc.read_text()):
      if key not in keys and not key.endswith("<field>"):
        missing.append(f"{doc.name}: --config.{key}")
  assert not missing, missing


# ------------------------------------- where bin/benchmark, experiments write


def test_default_outputs_are_under_the_workdir_not_docs(parsed):
  defaults = parsed[1]["defaults"]
  benchmark = defaults["sideways_tf.apps.benchmark"]
  experiments = defaults["sideways_tf.apps.experiments"]
  assert benchmark["bench_dir"].strip("'") == str(
      ROOT / "workdir" / "benchmark")
  assert benchmark["doc"] is None  # -> BENCH_DIR/benchmarks.md
  assert experiments["outdir"].strip("'") == str(
      ROOT / "workdir" / "experiments")
  assert experiments["report_dir"] is None  # -> OUTDIR/report


def _installed_copy(tmp_path):
  """The package alone (no pyproject.toml beside it), as pip installs it:
  its default directories are then under the working directory."""
  site = tmp_path / "site"
  shutil.copytree(ROOT / "sideways_tf", site / "sideways_tf",
                  ignore=shutil.ignore_patterns("__pycache__"))
  home = tmp_path / "home"
  home.mkdir()
  return site, home


def _run_app(site, home, app, *args):
  code = (f"import sys; sys.argv[0] = 'bin/{app}'; "
          f"from sideways_tf.apps.{app} import run; run()")
  return subprocess.run([sys.executable, "-c", code, *args], cwd=home,
                        env=dict(os.environ, PYTHONPATH=str(site)),
                        capture_output=True, text=True, timeout=600)


def test_benchmark_and_experiments_write_under_their_dirs_by_default(
    tmp_path):
  site, home = _installed_copy(tmp_path)
  docs_before = {p.name: p.stat().st_mtime for p in (ROOT / "docs").iterdir()}
  bench = _run_app(site, home, "benchmark", "--figures=stages",
                   "--image_size=8", "--batch_size=1", "--num_frames=4",
                   "--num_modules=2", "--repeats=1", "--warmup=1")
  assert bench.returncode == 0, bench.stderr[-3000:]
  report = home / "workdir" / "benchmark" / "benchmarks.md"
  assert "## 3. Per-stage" in report.read_text()
  experiments = _run_app(site, home, "experiments", "--report_only",
                         "--only=convergence")
  assert experiments.returncode == 0, experiments.stderr[-3000:]
  assert (home / "workdir" / "experiments" / "report" /
          "results.md").is_file()
  assert not (home / "docs").exists()
  assert {p.name: p.stat().st_mtime for p in (ROOT / "docs").iterdir()} \
      == docs_before


def test_the_default_run_evaluates_more_than_twice():
  train = default_config.get_config().train
  evaluations = {s for s in range(1, train.num_steps + 1)
                 if s % train.eval_every == 0} | {train.num_steps}
  assert len(evaluations) >= 5, (train.num_steps, train.eval_every)


# ------------------------------------------------------- numbers and how-tos


def test_the_risk_warning_threshold_the_docs_state_is_the_code_s():
  """Every "above X ... warn" (or "exceeds X") sentence of the docs states
  the threshold of the one warning it can mean, FidelityHook's."""
  from sideways_tf.training import hooks  # noqa: PLC0415
  stated = []
  for doc in [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")):
    for sentence in re.split(r"\. |\||\n\n", doc.read_text()):
      if re.search(r"warn", sentence):
        stated += [(doc.name, float(x)) for x in
                   re.findall(r"(?:[Aa]bove|exceeds) (\d\.\d+)", sentence)]
  assert len(stated) >= 3, stated
  assert all(x == hooks.FidelityHook.RISK_THRESHOLD for _, x in stated), \
      stated


def test_the_tensorboard_reading_snippet_reads_what_a_run_writes(tmp_path):
  import tensorflow as tf  # noqa: PLC0415
  from sideways_tf.run import summaries  # noqa: PLC0415
  writer = tf.summary.create_file_writer(str(tmp_path / "train"))
  for step, value in ((1, 2.5), (2, 1.5)):
    summaries.write_scalars(writer, step, {"train/loss": value,
                                           "train/accuracy": 0.5})
  writer.flush()
  code = (ROOT / "docs" / "tensorboard.md").read_text().split(
      "## Reading the values in Python", 1)[1].split("```python", 1)[1].split(
          "```", 1)[0]
  namespace = {}
  exec(code.replace("WORKDIR", str(tmp_path)), namespace)  # noqa: S102
  assert namespace["loss"] == [(1, 2.5), (2, 1.5)]
  assert namespace["events"].Tags()["scalars"] == []  # as the doc says


def test_the_readme_states_the_load_of_every_time_it_gives():
  """Times of `make train` / `make test` vary fourfold with the load: each
  one the README's "Two commands" section gives sits in a row that says
  at which load it was measured."""
  section = (ROOT / "README.md").read_text().split("## Two commands", 1)[
      1].split("\n## ", 1)[0]
  section = re.sub(r"```.*?```", "", section, flags=re.S)  # sample output
  timed = [line for line in section.splitlines()
           if re.search(r"\b\d+(\.\d+)? ?(s|min)\b", line)]
  assert timed
  for line in timed:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    assert line.startswith("|") and len(cells) == 3 and cells[2], line
