"""The plumbing of a program run, shared by the bin/ programs and training.

Start-up: `quiet.py` (TensorFlow's C++ start-up lines hidden; imported first,
so nothing here may import TensorFlow at package level), `cli.py` (what the
absl programs share), `user_errors.py` (one-line user errors and the exit
codes), `run_keys.py` (default workdir names from --config overrides).
During the run: `workdir_lock.py` (one run per workdir), `checkpoints.py`
(the newest readable checkpoint, corrupt ones set aside), `summaries.py`
(what TensorBoard shows), `files.py` (project root, atomic writes).
Reports: `intervals.py` (mean ± 95% t-interval of repeated measurements).
Across machines: `distributed.py` (the cluster: data parallel x depth
parallel) and `distributed_start.py` (a bounded cluster start-up).
"""
