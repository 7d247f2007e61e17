"""`NFNetModel`: the functional `keras.Model` that the constructors return."""

import keras


@keras.saving.register_keras_serializable(package="keras_nfnets")
class NFNetModel(keras.Model):
    """A functional Keras model built by keras_nfnets.

    It behaves exactly like `keras.Model`; it is its own class so that
    training features (adaptive gradient clipping) can hook into it.
    """
