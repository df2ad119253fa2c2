"""Training: pure step functions (`trainer.py`), the loop from a config to a
trained, checkpointed, logged model (`train_lib.py`), its periodic jobs
(`hooks.py`), what is built from a config (`builder.py`) and the workdir
(`workdir.py`)."""
