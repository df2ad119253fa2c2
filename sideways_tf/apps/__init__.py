"""The absl programs behind bin/* and the `sideways-*` console scripts.

Each module defines its flags and `main`, and `run()` (the entry point of
pyproject.toml) parses the flags and calls it. bin/<name> is a shim that puts
the checkout first on sys.path and calls the same `run()`.
"""
