"""One worker of a 2-worker cluster on 127.0.0.1, or the single-process reference.

  python -m tests.distributed_check worker INDEX PORT0,PORT1 OUT.npz [DIE_AFTER]
  python -m tests.distributed_check single OUT.npz

Trains a tiny 3-module conv pipeline (no batch norm) for a few steps with each
algorithm on fixed synthetic clips. Step s uses a global batch of 4 clips:
worker i trains on clips [2i, 2i+2) with its gradients all-reduced
(sideways_tf.run.distributed.Cluster); the single process trains on all 4. Worker
1 initialises from another seed, so equal weights at the end also show that
the chief's initial weights were broadcast. With DIE_AFTER, worker 1 exits
abruptly after that many steps (a crashed machine).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODE = sys.argv[1]
if MODE == "worker":
  INDEX, PORTS, OUT = int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
  DIE_AFTER = int(sys.argv[5]) if len(sys.argv) > 5 else 0
  os.environ["TF_CONFIG"] = json.dumps({
      "cluster": {"worker": [f"127.0.0.1:{p}" for p in PORTS]},
      "task": {"type": "worker", "index": INDEX}})
else:
  INDEX, OUT, DIE_AFTER = 0, sys.argv[2], 0

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sideways_tf.engine.pipeline import Pipeline  # noqa: E402
from sideways_tf.run import distributed  # noqa: E402
from sideways_tf.training.trainer import Trainer  # noqa: E402
from tests import util  # noqa: E402

NUM_STEPS, PER_WORKER, NUM_WORKERS = 3, 2, 2


def main():
  cluster = distributed.Cluster(timeout_seconds=60) if MODE == "worker" else None
  results = {}
  for algorithm in ("sideways", "bp"):
    keras.utils.set_random_seed(INDEX)  # worker 1 differs until the broadcast
    pipeline = Pipeline(util.conv_stages(3))
    trainer = Trainer(pipeline, keras.optimizers.Adam(1e-2), algorithm,
                      gradient_transform=cluster and cluster.all_reduce_mean)
    pipeline.allocate_state(PER_WORKER if cluster else
                            PER_WORKER * NUM_WORKERS, (6, 6, 2))
    if cluster:
      before = cluster.broadcast_from_chief(pipeline.trainable_variables)
      print(f"worker {INDEX} {algorithm}: initial weights differed from the "
            f"chief's by {before:.3g}", flush=True)
    for step in range(NUM_STEPS):
      frames = util.moving_clip(batch=PER_WORKER * NUM_WORKERS, frames=5,
                                shape=(6, 6, 2), seed=step)
      labels = util.labels_for(PER_WORKER * NUM_WORKERS)
      if cluster:
        rows = slice(PER_WORKER * INDEX, PER_WORKER * (INDEX + 1))
        frames, labels = frames[rows], labels[rows]
      try:
        metrics = trainer.train_step(frames, labels)
      except distributed.COLLECTIVE_ERRORS as error:
        raise distributed.WorkerLostError(distributed.lost_worker_message(
            cluster, step + 1, "", error)) from error
      print(f"worker {INDEX} {algorithm} step {step + 1}: loss "
            f"{metrics['loss']:.6f}", flush=True)
      if DIE_AFTER and INDEX == 1 and step + 1 == DIE_AFTER:
        print(f"worker {INDEX}: dying", flush=True)
        if os.environ.get("HANG_INSTEAD"):  # alive but silent: SIGSTOP
          os.kill(os.getpid(), 19)
        os._exit(9)
    for k, variable in enumerate(pipeline.trainable_variables):
      results[f"{algorithm}/{k}"] = np.asarray(variable)
  np.savez(OUT, **results)
  print(f"worker {INDEX} done", flush=True)


if __name__ == "__main__":
  main()
