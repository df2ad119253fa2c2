"""Exports the latest checkpoint of a workdir as a TF-only SavedModel.

  bin/export --workdir=DIR --output=DIR [--overwrite]

Signatures: serving_default (clip), init_state and step (streaming); see
docs/export.md or `saved_model_cli show --all --dir OUTPUT`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TF loads

from absl import flags

from sideways_tf import cli

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training workdir to export from.", required=True)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Directory to write the SavedModel to.", required=True)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace --output if it exists.")


def main(argv):
  cli.start(argv)
  from sideways_tf.training import train_lib  # noqa: PLC0415
  from sideways_tf.training import workdir  # noqa: PLC0415
  from sideways_tf import export
  exp = train_lib.restore_for_inference(_WORKDIR.value)
  frame_shape = workdir.load_model_info(_WORKDIR.value)["frame_shape"]
  path = export.export_saved_model(exp.pipeline, frame_shape, _OUTPUT.value,
                                   overwrite=_OVERWRITE.value)
  print(f"SavedModel written to {path} (step {int(exp.step)}). Inspect it "
        f"with: saved_model_cli show --all --dir {path}")


def run():
  """Console-script entry point: parses the flags and runs main."""
  cli.run_app(main, __name__, __doc__)


if __name__ == "__main__":
  run()
