"""PyTorch's symmetric max pooling (timm's NF-ResNet stem)."""

import keras
from keras import ops

_PACKAGE = "keras_nfnets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SymmetricMaxPooling2D(keras.layers.Layer):
    """PyTorch's `MaxPool2d(pool_size, strides, padding)`: `padding` rows
    and columns of -inf on every side, then a "valid" max pool (timm's
    NF-ResNet stem). Keras' "same" pads only the bottom/right for an even
    input, which selects different windows.

    Example:
    >>> pool = SymmetricMaxPooling2D(3, 2, 1)
    >>> y = pool(keras.random.normal((1, 32, 32, 8)))  # (1, 16, 16, 8)
    """

    def __init__(self, pool_size=3, strides=2, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.pool_size, self.strides, self.padding = pool_size, strides, padding

    def call(self, x):
        p = self.padding
        x = ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)),
                    constant_values=float("-inf"))
        return ops.max_pool(x, self.pool_size, strides=self.strides,
                            padding="valid", data_format="channels_last")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape

        def size(d):
            return (None if d is None else
                    (d + 2 * self.padding - self.pool_size) // self.strides
                    + 1)
        return (n, size(h), size(w), c)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size,
                "strides": self.strides, "padding": self.padding}
