"""Starting a TF_CONFIG cluster with a bound: name the workers that never came.

tf.distribute.MultiWorkerMirroredStrategy waits for every peer without a
limit (10+ minutes of silence were seen). Here a small watchdog process waits
`timeout_seconds` for the strategy to come up; if it does not, the watchdog
names the peers whose address accepts no connection and ends the worker
(SIGKILL: exit 137), instead of a silent hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from typing import List


def peers() -> List[tuple]:
  """[(task name, "host:port")] of every other task in TF_CONFIG."""
  config = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
  me = config.get("task", {})
  found = []
  for job, addresses in config.get("cluster", {}).items():
    for index, address in enumerate(addresses):
      if job == me.get("type") and index == int(me.get("index", 0)):
        continue
      found.append((f"{job}:{index}", address))
  return found


def unreachable(tasks) -> List[tuple]:
  """The tasks whose address accepts no TCP connection (not started)."""
  missing = []
  for name, address in tasks:
    host, _, port = address.rpartition(":")
    try:
      with socket.create_connection((host, int(port)), timeout=2.0):
        pass
    except OSError:
      missing.append((name, address))
  return missing


_WATCHDOG = r"""
import os, runpy, signal, sys, select
# This file by path: importing the package would import TensorFlow.
module = runpy.run_path(os.path.join(sys.argv[3], "sideways_tf", "run",
                                     "distributed_start.py"))
peers, unreachable = module["peers"], module["unreachable"]
ready, _, _ = select.select([sys.stdin], [], [], float(sys.argv[2]))
if ready and sys.stdin.read(2) == "ok":
  sys.exit(0)
if ready:  # EOF: the worker ended on its own
  sys.exit(0)
missing = unreachable(peers())
named = ", ".join(f"{n} ({a})" for n, a in missing) or (
    "none unreachable: a peer may be stuck or use another TF_CONFIG")
print(f"{sys.argv[4]}: error: the cluster did not start within "
      f"{float(sys.argv[2]):.0f} s (config.start_timeout_seconds); workers "
      f"not started: {named}. Start them with the same TF_CONFIG cluster, "
      f"or check their addresses.", file=sys.stderr, flush=True)
os.kill(int(sys.argv[1]), signal.SIGKILL)
"""


def start_cluster(make_cluster, timeout_seconds: float):
  """make_cluster() (distributed.Cluster); if the cluster is not up within
  `timeout_seconds` (0 = wait forever), a watchdog process names the
  workers that never started and ends this one (the strategy's C++ start-up
  holds the interpreter, so no thread or signal handler here could)."""
  if not timeout_seconds:
    return make_cluster()
  import pathlib  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  root = str(pathlib.Path(__file__).resolve().parents[2])
  watchdog = subprocess.Popen(
      [sys.executable, "-c", _WATCHDOG, str(os.getpid()),
       str(float(timeout_seconds)), root, os.path.basename(sys.argv[0])],
      stdin=subprocess.PIPE, text=True)
  try:
    cluster = make_cluster()
    watchdog.stdin.write("ok")
  finally:
    with contextlib.suppress(OSError):
      watchdog.stdin.close()
    watchdog.wait()
  return cluster
