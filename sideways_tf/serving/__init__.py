"""Serving a trained pipeline: the TF-only SavedModel (clip and streaming
signatures) and the streaming step as TFLite (`export.py`; docs/export.md).
"""
