"""Channel attention: squeeze-excite (DeepMind's `SqueezeExcite`) and
efficient channel attention (ECA-Net, timm's `EcaModule`). Each returns a gate
of shape `(batch, 1, 1, channels)`; the block applies `2 * gate * x`."""

import math

import keras
from keras import ops

_PACKAGE = "keras_nfnets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-excite gate, as DeepMind's `base.SqueezeExcite`.

    Mean over H and W, then `Dense(hidden) -> relu -> Dense(channels) ->
    sigmoid`, with `hidden = max(1, int(in_channels * se_ratio))`. Returns the
    gate of shape `(batch, 1, 1, channels)`; blocks use `2 * gate * x`.

    Example:
    >>> se = SqueezeExcite(64, 64, se_ratio=0.5)
    >>> gate = se(keras.random.normal((2, 8, 8, 64)))  # (2, 1, 1, 64)
    """

    def __init__(self, in_channels, out_channels, se_ratio=0.5,
                 hidden_channels=None, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.se_ratio = se_ratio
        if hidden_channels is None:
            if se_ratio is None:
                raise ValueError("Give one of se_ratio or hidden_channels.")
            hidden_channels = max(1, int(in_channels * se_ratio))
        self.hidden_channels = hidden_channels
        # Named like haiku's hk.Linear modules inside squeeze_excite.
        self.fc0 = keras.layers.Dense(hidden_channels, name="linear",
                                      dtype=self.dtype_policy)
        self.fc1 = keras.layers.Dense(out_channels, name="linear_1",
                                      dtype=self.dtype_policy)

    def named_sublayers(self):
        return {"linear": self.fc0, "linear_1": self.fc1}

    def build(self, input_shape):
        self.fc0.build((input_shape[0], input_shape[-1]))
        self.fc1.build((input_shape[0], self.hidden_channels))

    def call(self, x):
        h = ops.mean(x, axis=(1, 2))
        h = self.fc1(ops.relu(self.fc0(h)))
        return ops.sigmoid(h)[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, self.out_channels)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "se_ratio": self.se_ratio,
                "hidden_channels": self.hidden_channels}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EfficientChannelAttention(keras.layers.Layer):
    """Efficient channel attention (ECA-Net, Wang et al. 2020), as timm's
    `EcaModule`: the spatial mean of each channel, a 1D convolution across
    channels (no bias, zero padding), then a sigmoid. Returns the gate of
    shape `(batch, 1, 1, channels)`; blocks use `2 * gate * x` (timm's
    `attn_gain`).

    The kernel size follows the paper from the channel count:
    `t = int(|log2(channels) + 1| / 2)`, the next odd number, at least 3
    (5 for 256 to 2048 channels).

    Example:
    >>> eca = EfficientChannelAttention(256)
    >>> gate = eca(keras.random.normal((2, 8, 8, 256)))  # (2, 1, 1, 256)
    """

    def __init__(self, channels, kernel_size=None, **kwargs):
        super().__init__(**kwargs)
        if kernel_size is None:
            t = int(abs(math.log(channels, 2) + 1) / 2)
            kernel_size = max(t if t % 2 else t + 1, 3)
        if kernel_size % 2 != 1:
            raise ValueError(f"ECA kernel_size must be odd, got {kernel_size}")
        self.channels, self.kernel_size = channels, kernel_size
        self.in_channels = self.out_channels = channels

    def build(self, input_shape):
        # (width, in, out) as a Conv1D kernel; PyTorch's default Conv1d
        # initialisation (uniform, bound 1/sqrt(fan_in)).
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, 1, 1),
            initializer=keras.initializers.VarianceScaling(
                1.0 / 3.0, "fan_in", "uniform"), trainable=True)

    def call(self, x):
        y = ops.mean(x, axis=(1, 2))[:, :, None]  # (batch, channels, 1)
        y = ops.conv(y, ops.cast(self.kernel, y.dtype), padding="same",
                     data_format="channels_last")
        return ops.sigmoid(y[:, :, 0])[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "kernel_size": self.kernel_size}
