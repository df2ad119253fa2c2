"""Which config keys a resumed run may change (no TensorFlow import: the
entry points use it to name default workdirs)."""

# Keys that may change between a run and its resumption (how long, how often,
# how loud); anything else changing means a different experiment.
# train.learning_rate is one so that a run stopped on a NaN can resume with a
# smaller one.
RESUMABLE_KEYS = ("train.num_steps", "train.learning_rate", "train.log_every",
                  "train.eval_every", "train.checkpoint_every", "train.fidelity_every",
                  "train.stage_time_every", "train.keep_checkpoints",
                  "eval.batch_size", "eval.num_batches", "data.data_dir",
                  "data.path", "devices", "distributed",
                  "collective_timeout_seconds", "start_timeout_seconds")


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
