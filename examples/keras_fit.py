"""Sideways with Keras' compile/fit on the synthetic moving-shapes videos.

  python examples/keras_fit.py [--algorithm=bp] [--workdir=/tmp/keras_fit]

Builds a 4-module frame CNN, trains it with `SidewaysModel.fit` and standard
Keras callbacks (TensorBoard, BackupAndRestore, CSVLogger) plus
`sideways_tf.callbacks.GradientFidelity`, evaluates (clip and per-frame
accuracy), predicts and exports a SavedModel with its class names and a
TFLite streaming model. Under a minute on a 2-core CPU; the videos are drawn
once into data_cache/ (nothing is downloaded). Rerun after a kill: training
resumes from the backup.
"""

import argparse
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from sideways_tf.run import quiet  # noqa: E402

quiet.import_tensorflow()  # without its C++ start-up lines (as bin/* do)

import keras  # noqa: E402

import sideways_tf  # noqa: E402
from configs import default  # noqa: E402
from sideways_tf import data  # noqa: E402
from sideways_tf.models import frame_cnn_stages  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--algorithm", default="sideways",
                      choices=sideways_tf.ALGORITHMS)
  parser.add_argument("--workdir", default="/tmp/keras_fit")
  parser.add_argument("--epochs", type=int, default=8)
  parser.add_argument("--steps_per_epoch", type=int, default=50)
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  keras.utils.set_random_seed(0)

  config = default.get_config().data  # synthetic moving shapes, 32x32
  config.num_frames = 8  # T >= 2L - 1 = 7: every module gets a gradient
  datasets = data.get_datasets(config, batch_size=8, eval_batch_size=32,
                               seed=0)
  # Batches: {"video": float32 [8, 8, 32, 32, 3], "label": int32 [8]}.

  model = sideways_tf.SidewaysModel(
      frame_cnn_stages(datasets.num_classes, num_modules=4),
      algorithm=args.algorithm, class_names=datasets.class_names)
  model.compile(optimizer=keras.optimizers.Adam(3e-3))
  started, cpu = time.perf_counter(), time.process_time()
  model.fit(datasets.train, validation_data=datasets.eval, epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch, verbose=2, callbacks=[
                keras.callbacks.TensorBoard(workdir / "logs"),
                keras.callbacks.BackupAndRestore(workdir / "backup"),
                keras.callbacks.CSVLogger(workdir / "log.csv"),
                sideways_tf.callbacks.GradientFidelity(workdir / "logs",
                                                       every_n_steps=50)])
  print(f"fit: {time.perf_counter() - started:.0f} s wall, "
        f"{time.process_time() - cpu:.0f} s CPU")

  print("evaluate:", model.evaluate(datasets.eval, return_dict=True,
                                     verbose=0))
  batch = next(iter(datasets.eval))
  logits = model.predict(batch["video"][:4], verbose=0)  # clip logits [4, C]
  print("predict:", [datasets.class_names[i] for i in logits.argmax(-1)],
        "true:", [datasets.class_names[i] for i in batch["label"][:4]])
  shutil.rmtree(workdir / "exported", ignore_errors=True)
  path = model.export(workdir / "exported", tflite=True)
  print(f"exported: {path} (TFLite: {path / 'tflite' / 'step.tflite'}); "
        f"TensorBoard: tensorboard --logdir {workdir / 'logs'}")


if __name__ == "__main__":
  main()
