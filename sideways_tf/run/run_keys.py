"""Default workdir names from --config overrides: the keys a resumed run may
change (training/workdir.py RESUMABLE_KEYS) do not name a new run."""

from sideways_tf.training.workdir import RESUMABLE_KEYS

__all__ = ["RESUMABLE_KEYS", "override_suffix"]


def override_suffix(argv) -> str:
  """The non-resumable --config.<key>=<value> overrides of `argv` as a
  workdir-name suffix ("" if none), so that runs with overrides get their own
  default workdir instead of being refused by the default run's."""
  parts = []
  for arg in argv[1:]:
    if not arg.startswith("--config.") or "=" not in arg:
      continue
    key, value = arg[len("--config."):].split("=", 1)
    # How long / often / where: the same run. A new learning rate from the
    # command line without --workdir is a new run.
    if (key in RESUMABLE_KEYS and key != "train.learning_rate") or \
        key == "algorithm":
      continue
    parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
  text = ",".join(parts)
  return "".join(c if c.isalnum() or c in "._=,+-" else "_" for c in text)
