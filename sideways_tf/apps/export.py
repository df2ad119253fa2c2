"""Exports the latest checkpoint of a workdir as a TF-only SavedModel.

  bin/export --workdir=DIR --output=DIR [--overwrite] [--tflite]

Signatures: serving_default (clip), init_state and step (streaming); see
docs/export.md or `saved_model_cli show --all --dir OUTPUT`. The class names
go to OUTPUT/assets.extra/class_names.txt and the `labels` output. --tflite
also writes the streaming `step` as OUTPUT/tflite/step.tflite.
"""

import sys

from sideways_tf.run import quiet

quiet.quiet_start(sys.argv)  # TensorFlow imported without its C++ start-up lines

from absl import flags

from sideways_tf.run import cli

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Training workdir to export from.", required=True)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Directory to write the SavedModel to.", required=True)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace --output if it exists.")
_TFLITE = flags.DEFINE_bool(
    "tflite", False, "Also convert the streaming `step` signature to "
    "TFLite: OUTPUT/tflite/step.tflite (+ class_names.txt).")


def main(argv):
  cli.start(argv)
  from sideways_tf.training import train_lib  # noqa: PLC0415
  from sideways_tf.training import workdir  # noqa: PLC0415
  from sideways_tf.serving import export
  exp = train_lib.restore_for_inference(_WORKDIR.value)
  info = workdir.load_model_info(_WORKDIR.value)
  path = export.export_saved_model(exp.pipeline, info["frame_shape"],
                                   _OUTPUT.value, overwrite=_OVERWRITE.value,
                                   class_names=info.get("class_names"))
  print(f"SavedModel written to {path} (step {int(exp.step)}). Inspect it "
        f"with: {cli.venv_tool('saved_model_cli')} show --all --dir {path}")
  if _TFLITE.value:
    print(f"TFLite streaming model written to {export.export_tflite(path)}")


def run():
  """Console-script entry point: parses the flags and runs main."""
  cli.run_app(main, __name__, __doc__)


if __name__ == "__main__":
  run()
