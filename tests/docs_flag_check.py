"""Parses command lines with their program's own absl flags and config, and
trains nothing (for tests/test_docs_check.py).

stdin: JSON [[module, [arg, ...], partial], ...], e.g.
["sideways_tf.apps.train", ["--config=configs/moving_digits.py",
"--config.algorithm=bp"], false]; a partial command (named in prose) may
leave out required flags. stdout: one
JSON list, per command null (it parses: every flag exists, every value has
its type, every --config.<key> is a key of the config file it names) or the
error. Run from the checkout (config paths are relative to it). Also prints,
per program, the defaults of its flags (JSON "defaults").
"""

import importlib
import json
import sys

from sideways_tf.run import quiet

quiet.import_tensorflow()

from absl import flags  # noqa: E402

from sideways_tf.run import cli  # noqa: E402,F401  (--verbose, as every program)

FLAGS = flags.FLAGS


def _config_default(name="config"):
  """The file a config flag loads when --config is not given."""
  return FLAGS[name].default_as_str.strip("'\"")


def check(module_name, args, partial=False):
  """None if `args` parse as `module_name`'s command line, else why not."""
  argv = [module_name.rsplit(".", 1)[-1]] + list(args)
  if "config" in FLAGS and not any(
      a == "--config" or a.startswith("--config=") for a in args):
    # ml_collections registers --config.<key> overrides when it loads the
    # file; name the default file so that happens here.
    argv.insert(1, f"--config={_config_default()}")
  sys.argv = argv  # ml_collections reads its overrides from sys.argv
  FLAGS.unparse_flags()
  try:
    rest = FLAGS(argv)
    if len(rest) > 1:
      return f"unexpected arguments {rest[1:]}"
    if "config" in FLAGS:
      config = FLAGS["config"].value
      if config is None:
        return "the config did not load"
    return None
  except BaseException as error:  # noqa: BLE001
    if partial and isinstance(error, flags.IllegalFlagValueError) and (
        "must have a value other than None" in str(error)):
      return None  # absl checks required flags after every other one
    return f"{type(error).__name__}: {' '.join(str(error).split())[:400]}"


def main():
  commands = json.load(sys.stdin)
  results = [None] * len(commands)
  defaults = {}
  by_module = {}
  for index, (module_name, args, partial) in enumerate(commands):
    by_module.setdefault(module_name, []).append((index, args, partial))
  common = set(FLAGS)
  for module_name, items in by_module.items():
    module = importlib.import_module(module_name)
    if hasattr(module, "define_flags"):  # `python -m` programs
      module.define_flags()
    own = set(FLAGS)
    defaults[module_name] = {
        name: FLAGS[name].default_as_str for name in sorted(own - common)}
    for index, args, partial in items:
      results[index] = check(module_name, args, partial)
      for name in set(FLAGS) - own:  # --config.<key> flags of this command
        delattr(FLAGS, name)
    for name in set(FLAGS) - common:  # the next program defines its own
      delattr(FLAGS, name)
  print(json.dumps({"results": results, "defaults": defaults}))


if __name__ == "__main__":
  main()
