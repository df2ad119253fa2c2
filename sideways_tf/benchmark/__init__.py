"""Sideways vs BP benchmark: the figures of docs/benchmarks.md from one run.

Everything timed here goes through the engine the trainer uses:
:meth:`sideways_tf.Trainer.train_step` (Sideways and BP, on the same
:class:`sideways_tf.Pipeline`), :meth:`Pipeline.stage_tick_seconds` and
:attr:`Pipeline.trace_count`. Nothing re-implements the tick.

Figures (each a ratio from the same run):

1. throughput: Sideways train-step frames/s / BP train-step frames/s, the two
   alternating in one process, median over repetitions;
2. memory: peak resident memory of a train step per (algorithm, T), each in
   its own child process;
3. stages: per-module tick time, balance and ideal depth-parallel speedup,
   next to the GPipe bubble for the same K stages and M = T micro-batches;
   and stage balancing (by parameters vs by measured time) on the model zoo;
4. placement: Sideways step time with one logical CPU device per stage /
   on one device (child process: TF fixes its devices at start-up);
5. input pipeline frames/s / training frames/s (child processes): the
   synthetic source, and (5b, ``input_folder.py``) prepared video folders of
   JPEG and of raw frames, generated in the bench dir;
6. tracing: traces of the train step over N clips of one shape.

`common.py`: the config, goals and timing helpers; `figures.py`: one function
per figure; `children.py`: the figures that need a fresh process (run as
``python -m sideways_tf.benchmark.children <kind> <json>``, one JSON line
out); `report.py`: docs/benchmarks.md; `runner.py`: :func:`run`, the entry
point (``bin/benchmark`` is its command line). ``--simulate_devices``:
`devices.py` and `devices_report.py`, with `exactness.py` (gradients against
BP in float64).
"""
