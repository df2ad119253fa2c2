"""Two workers on 127.0.0.1 (MultiWorkerMirroredStrategy from TF_CONFIG).

Each worker is its own process (TF sets up the collective cluster once per
process); see tests/distributed_check.py and docs/scaling.md.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from tests import util
from tests.test_train_lib import tiny_config, tiny_flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
ENV.pop("TF_CONFIG", None)




def start(args, env=ENV):
  return subprocess.Popen([sys.executable] + args, cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(process, timeout=900):  # bounds a hang, not a duration
  try:
    out, err = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    out, err = process.communicate()
    raise AssertionError(f"timed out:\n{out}\n{err[-3000:]}")
  return process.returncode, out, err


def check_worker(index, ports, out, *extra):
  return ["-m", "tests.distributed_check", "worker", str(index),
          ",".join(map(str, ports)), str(out), *map(str, extra)]


def test_two_workers_equal_one_process_on_the_concatenated_batch(tmp_path):
  ports = util.free_ports(2)
  processes = [start(check_worker(i, ports, tmp_path / f"w{i}.npz"))
               for i in range(2)]
  processes.append(start(["-m", "tests.distributed_check", "single",
                          str(tmp_path / "single.npz")]))
  results = [finish(p) for p in processes]
  for code, out, err in results:
    assert code == 0, out + err[-4000:]
  # Worker 1 started from other weights and got the chief's.
  assert "initial weights differed from the chief's by 0\n" in results[0][1]
  assert "initial weights differed from the chief's by 0\n" not in results[1][1]
  chief, other, single = (np.load(tmp_path / f"{n}.npz")
                          for n in ("w0", "w1", "single"))
  assert sorted(chief.files) == sorted(single.files)
  assert len(chief.files) == 16  # 8 variables x 2 algorithms
  for name in chief.files:
    np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    # The mean of two 2-clip gradients == the gradient of the 4 clips, up to
    # float32 summation order (and Adam's normalisation of it), 3 steps.
    np.testing.assert_allclose(chief[name], single[name], rtol=1e-5,
                               atol=1e-6, err_msg=name)


def test_a_dead_worker_fails_the_other_with_a_clear_error(tmp_path):
  """The survivor stops with WorkerLostError once its peer has died (within
  the workers' 60 s collective timeout of the death; the wait below only
  bounds a hang, start-up on a loaded machine included)."""
  ports = util.free_ports(2)
  survivor = start(check_worker(0, ports, tmp_path / "w0.npz"))
  dying = start(check_worker(1, ports, tmp_path / "w1.npz", 1))  # dies
  assert finish(dying)[0] == 9
  code, out, err = finish(survivor)
  assert code != 0, out
  assert "WorkerLostError" in err and "Another worker died" in err, err[-3000:]


def test_bin_train_on_two_workers_chief_checkpoints_and_resume(tmp_path):
  # Generate the tiny synthetic data once, before the workers read it.
  from sideways_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "data"
  config = tiny_config(data_dir)
  data_lib.get_datasets(config.data, batch_size=4, eval_batch_size=8, seed=0)
  workdir = tmp_path / "run"

  def run_workers(steps):
    ports = util.free_ports(2)
    processes = []
    for index in range(2):
      env = dict(ENV, TF_CONFIG=json.dumps({
          "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
          "task": {"type": "worker", "index": index}}))
      processes.append(start(
          tiny_flags(data_dir, workdir, steps) +
          ["--config.distributed=True", "--config.eval.num_batches=1"], env))
    results = [finish(p) for p in processes]
    for code, out, err in results:
      assert code == 0, out + err[-4000:]
    return [out for _, out, _ in results]

  chief, other = run_workers(2)
  assert "Cluster(worker 0 of 2" in chief and "Cluster(worker 1 of 2" in other
  assert "Done: sideways, 2 steps" in chief
  assert "Done: worker 1 of 2 at step 2" in other
  assert sorted(p.name for p in (workdir / "checkpoints").glob("*.index")) == [
      "ckpt-1.index", "ckpt-2.index"]
  assert (workdir / "eval.json").exists()

  chief, other = run_workers(3)
  for out in (chief, other):
    assert "ckpt-2 at step 2." in out, out
  assert "Done: worker 1 of 2 at step 3" in other
  assert (workdir / "checkpoints" / "ckpt-3.index").exists()
