"""Tests of the model zoo (sideways_tf/models)."""
