"""The engine: one module's tick (`module.py`) and the pipeline that runs every
module's tick at once (`pipeline.py`: the Sideways tick loop, then the BP
baseline), with stage timing and balancing. The spec is docs/algorithm.md."""
