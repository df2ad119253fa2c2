"""The engine: one module's tick (`module.py`), the algorithms that compute a
clip gradient, one module each (`sideways.py` the tick loop, `bp.py`,
`gpipe.py`; their interface in `algorithm.py`, their table in
`algorithms.py`), and `pipeline.py`, the `Pipeline` that runs them; with
stage timing and balancing. The spec is docs/algorithm.md."""
