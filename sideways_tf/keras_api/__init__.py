"""The Keras face: `SidewaysModel` (compile / fit / evaluate / predict /
export over the Trainer and the Pipeline, `model.py`) and its callbacks
(`callbacks.py`, public as `sideways_tf.callbacks`). See docs/keras.md.

Named `keras_api`, not `keras`, so that no import inside the package can
pick it up in place of the real `keras`.
"""
