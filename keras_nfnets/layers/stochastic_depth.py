"""Stochastic depth (Huang et al. 2016) as DeepMind's `StochDepth`."""

import keras
from keras import ops

_PACKAGE = "keras_nfnets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StochasticDepth(keras.layers.Layer):
    """Drops whole residual branches per example, as DeepMind's `StochDepth`.

    In training each example's branch is kept with probability `1 - rate`
    (one draw per example, `floor(keep + U[0, 1))`) and is **not** rescaled by
    the keep probability. At inference it is the identity.

    Example:
    >>> sd = StochasticDepth(0.1, seed=0)
    >>> y = sd(keras.ops.ones((8, 4, 4, 16)), training=True)
    """

    def __init__(self, rate, scale_by_keep=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"StochasticDepth rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.scale_by_keep = scale_by_keep
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        mask = self.draw_mask(x, training)
        return x if mask is None else self.apply_mask(x, mask)

    def draw_mask(self, x, training=False):
        """The per-example keep mask (shape `(batch, 1, ..., 1)`) for `x`,
        or None when nothing is dropped (inference, or rate 0)."""
        if not training or self.rate == 0.0:
            return None
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        r = keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype)
        return ops.floor((1.0 - self.rate) + r)

    def apply_mask(self, x, mask):
        """`x` with the dropped examples zeroed (as `call`)."""
        if self.scale_by_keep:
            x = x / (1.0 - self.rate)
        return x * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate,
                "scale_by_keep": self.scale_by_keep, "seed": self.seed}
