"""Normalizer-free layers, numerically identical to DeepMind's reference.

Everything here uses `keras.ops` only, so the layers run on the TensorFlow,
JAX and PyTorch backends alike.

* `WSConv2D`: a `Conv2D` with scaled weight standardization and a learnable
  gain, exactly as DeepMind's `base.WSConv2D`.
* `ScaledActivation`: a nonlinearity times its "gamma" constant, which makes
  its output have unit variance on N(0, 1) inputs.
* `SqueezeExcite`, `StochasticDepth`.
* `NFBlock`: one whole residual block as a single Keras layer, so that even
  NFNet-F7 (96 blocks) is a small functional graph.
"""

import math

import keras
from keras import ops

from keras_nfnets.variants import make_divisible

_PACKAGE = "keras_nfnets"

# DeepMind's nonlinearities with their gamma constants ("magic constants"):
# gamma = 1 / std(f(x)) for x ~ N(0, 1).
GAMMAS = {
    "identity": 1.0,
    "celu": 1.270926833152771,
    "elu": 1.2716004848480225,
    "gelu": 1.7015043497085571,
    "glu": 1.8484294414520264,
    "leaky_relu": 1.70590341091156,
    "log_sigmoid": 1.9193484783172607,
    "log_softmax": 1.0002083778381348,
    "relu": 1.7139588594436646,
    "relu6": 1.7131484746932983,
    "selu": 1.0008515119552612,
    "sigmoid": 4.803835391998291,
    "silu": 1.7881293296813965,
    "soft_sign": 2.338853120803833,
    "softplus": 1.9203323125839233,
    "tanh": 1.5939117670059204,
}


def _glu(x):
    a, b = ops.split(x, 2, axis=-1)
    return a * ops.sigmoid(b)


_FUNCTIONS = {
    "identity": lambda x: x,
    "celu": lambda x: ops.celu(x),
    "elu": lambda x: ops.elu(x),
    # DeepMind uses jax.nn.gelu's default: the tanh approximation.
    "gelu": lambda x: ops.gelu(x, approximate=True),
    "glu": _glu,
    "leaky_relu": lambda x: ops.leaky_relu(x, negative_slope=0.01),
    "log_sigmoid": lambda x: ops.log_sigmoid(x),
    "log_softmax": lambda x: ops.log_softmax(x, axis=-1),
    "relu": lambda x: ops.relu(x),
    "relu6": lambda x: ops.relu6(x),
    "selu": lambda x: ops.selu(x),
    "sigmoid": lambda x: ops.sigmoid(x),
    "silu": lambda x: ops.silu(x),
    "soft_sign": lambda x: ops.softsign(x),
    "softplus": lambda x: ops.softplus(x),
    "tanh": lambda x: ops.tanh(x),
}


# Derivatives of the nonlinearities whose automatic differentiation keeps
# several activation-sized intermediates alive until the backward pass (the
# tanh-approximate gelu is ~8 elementwise ops, each saving its inputs). With
# these, the scaled activation saves only its input (docs/performance.md
# has the measured saving). The forward values are unchanged.
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_derivative(x):
    c = ops.cast(_SQRT_2_OVER_PI, x.dtype)
    k = ops.cast(0.044715, x.dtype)
    x2 = x * x
    t = ops.tanh(c * (x + k * x2 * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * k * x2)


def _silu_derivative(x):
    s = ops.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


_DERIVATIVES = {"gelu": _gelu_derivative, "silu": _silu_derivative}


def _data_dependent_zero(x):
    """An exact 0.0 that a graph compiler cannot prove is 0 before `x`
    exists: `min(|x[0, ..., 0]|, 0)` (NaN only if that element is NaN, and
    then the layer's output is NaN anyway). No gradient flows through it.
    The sum of an empty slice would be folded to a constant by grappler."""
    first = x[(slice(0, 1),) * len(x.shape)]
    # (`initial`: an empty batch gives 0, not an error.)
    return ops.stop_gradient(ops.min(ops.abs(first), initial=0.0))


def _lean_scaled(fn, gamma, derivative):
    """`fn(x) * gamma` with a gradient that saves only `x`."""

    @ops.custom_gradient
    def scaled(x):
        g = ops.cast(gamma, x.dtype)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # Computed from `x` only once `upstream` exists: otherwise a
            # graph executor runs derivative(x) right after the forward pass
            # and holds it (an activation-sized tensor per activation)
            # until the backward pass reaches it.
            x_late = x + ops.cast(_data_dependent_zero(upstream), x.dtype)
            return upstream * (derivative(x_late) * g)

        return fn(x) * g, grad

    return scaled


def scaled_activation(name, lean_gradient=True, gamma=None, gelu="tanh"):
    """Returns DeepMind's nonlinearity `name` multiplied by its gamma.

    With `lean_gradient` (default), gelu and silu use a closed-form
    derivative that saves only the input for the backward pass (same
    forward values; gradients equal autodiff's to float rounding).
    `gamma` replaces the constant (timm's numerics use 1.0: the gamma is
    in the convolutions); `gelu="erf"` is the exact GELU (timm's) instead
    of DeepMind's tanh approximation.

    Example:
    >>> act = scaled_activation("gelu")
    >>> y = act(keras.random.normal((1000,)))  # std(y) is about 1
    """
    if name not in GAMMAS:
        raise ValueError(
            f"Unknown activation {name!r}. Expected one of {sorted(GAMMAS)}.")
    if gelu not in ("tanh", "erf"):
        raise ValueError(f"gelu must be 'tanh' or 'erf', got {gelu!r}.")
    fn = _FUNCTIONS[name]
    gamma = GAMMAS[name] if gamma is None else float(gamma)
    derivative = _DERIVATIVES.get(name)
    if name == "gelu" and gelu == "erf":
        fn, derivative = (lambda x: ops.gelu(x, approximate=False)), None
    if name == "identity" and gamma == 1.0:
        return fn
    if lean_gradient and derivative is not None:
        return _lean_scaled(fn, gamma, derivative)
    if gamma == 1.0:
        return fn
    return lambda x: fn(x) * ops.cast(gamma, x.dtype)


def check_activation(name):
    scaled_activation(name)
    return name


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ScaledActivation(keras.layers.Layer):
    """A nonlinearity scaled by its gamma constant (e.g. `gelu * 1.7015`).

    Args:
        activation: one of DeepMind's nonlinearity names: `"gelu"` (tanh
            approximation), `"relu"`, `"silu"`, `"elu"`, ..., `"identity"`.
        gamma: the constant (default: DeepMind's for `activation`; 1.0 is
            the plain nonlinearity, as in timm's numerics).
        gelu: `"tanh"` (DeepMind) or `"erf"` (exact, timm).

    Example:
    >>> layer = ScaledActivation("gelu")
    >>> y = layer(keras.random.normal((4, 8)))
    """

    def __init__(self, activation="gelu", gamma=None, gelu="tanh", **kwargs):
        super().__init__(**kwargs)
        self.activation = check_activation(activation)
        self.gamma = None if gamma is None else float(gamma)
        self.gelu = gelu
        self._fn = scaled_activation(activation, gamma=gamma, gelu=gelu)

    def call(self, inputs):
        return self._fn(inputs)

    def compute_output_shape(self, input_shape):
        if self.activation == "glu":
            return (*input_shape[:-1], None if input_shape[-1] is None
                    else input_shape[-1] // 2)
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "activation": self.activation}
        if self.gamma is not None:
            config["gamma"] = self.gamma
        if self.gelu != "tanh":
            config["gelu"] = self.gelu
        return config


# Device-dependent choices ("auto" settings) are resolved when a layer is
# traced, never when it is built or loaded, and never cached: a model built
# (or a `.keras` file saved) on CPU takes the accelerator's choice when it
# runs on a GPU/TPU, and a TPU initialised after the model was built is seen.
# Both "auto" settings below go through `on_accelerator`.

def on_accelerator():
    """True when Keras sees a GPU/TPU now (queried each time: the device
    list can grow, e.g. after a TPU system is initialised)."""
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # pylint: disable=broad-except
        # keras.distribution has no device query on the torch backend.
        if keras.backend.backend() != "torch":
            return False
        import torch  # pylint: disable=import-outside-toplevel
        return bool(torch.cuda.is_available())
    return any(not str(d).lower().startswith("cpu") for d in devices)


def check_remat(remat):
    """Validates a `remat` setting: True, False or "auto"."""
    if remat == "auto" or isinstance(remat, bool):
        return remat
    raise ValueError(f"remat must be True, False or 'auto', got {remat!r}")


def resolve_remat(remat):
    """`remat="auto"` (the default): recompute each block in the backward
    pass when Keras sees no accelerator (CPU training is memory-bound; see
    docs/performance.md), not on GPU/TPU. `True`/`False` force it. Resolved
    at trace time; the saved config keeps `"auto"`."""
    remat = check_remat(remat)
    return (not on_accelerator()) if remat == "auto" else remat


# How grouped convolutions are computed. "split" runs one convolution per
# group and concatenates (fast on CPU, where TF/XLA grouped convolutions are
# much slower); "native" hands the grouped convolution to the backend (the
# right thing on GPU and TPU). "auto" picks "split" when Keras sees no
# accelerator, at trace time, like `remat="auto"`. Both give the same numbers.
_GROUPED_CONV_MODE = {"mode": "auto"}


def set_grouped_conv_mode(mode):
    """Chooses how grouped convolutions run: "auto", "split" or "native".

    Takes effect for models traced after the call.

    Example:
    >>> keras_nfnets.layers.set_grouped_conv_mode("native")
    """
    if mode not in ("auto", "split", "native"):
        raise ValueError(
            f"grouped conv mode must be 'auto', 'split' or 'native', got {mode!r}")
    _GROUPED_CONV_MODE.update(mode=mode)


def grouped_conv_mode():
    """Returns the effective grouped-convolution mode ("split" or "native"),
    resolving "auto" now (see `on_accelerator`)."""
    if _GROUPED_CONV_MODE["mode"] != "auto":
        return _GROUPED_CONV_MODE["mode"]
    return "native" if on_accelerator() else "split"


def _standardize(w, gain, eps, eps_mode="floor", gamma=1.0):
    axes = tuple(range(len(w.shape) - 1))
    mean = ops.mean(w, axis=axes, keepdims=True)
    var = ops.var(w, axis=axes, keepdims=True)
    fan_in = math.prod(w.shape[:-1])
    if eps_mode == "floor":
        inv = ops.rsqrt(ops.maximum(var * fan_in, eps))
    else:  # "add" (timm): rsqrt(var + eps) / sqrt(fan_in)
        inv = ops.rsqrt(var + eps) * (1.0 / math.sqrt(fan_in))
    scale = inv * gain
    if gamma != 1.0:
        scale = scale * gamma
    return w * scale - mean * scale, mean, var * fan_in, inv, scale


def standardize_weight(w, gain, eps=1e-4, lean_gradient=True,
                       eps_mode="floor", gamma=1.0):
    """DeepMind's scaled weight standardization of a kernel `w` (HWIO):

        w_hat = (w - mean) * rsqrt(max(var * fan_in, eps)) * gain

    `eps_mode="add"` is timm's form, `(w - mean) * rsqrt(fan_in * (var +
    eps)) * gain`, and `gamma` a constant factor on the result (timm
    folds the activation's gamma in here).

    with the mean and biased variance over (H, W, I). With `lean_gradient`
    (default) the backward pass is the closed form of the normalization's
    gradient and keeps nothing kernel-sized but `w` itself (autodiff keeps
    `w - mean` and its square, kernel-sized per layer). With `u = w - mean`,
    `n = ||u||` per output channel, `s = rsqrt(max(n^2, eps))`:

        dgain = sum(g * u) * s
        dw = gain * s * (g - mean(g) - u * s^2 * sum(g * u))   (n^2 >= eps)
        dw = gain * s * (g - mean(g))                          (clamped)

    The forward values are exactly those of the plain formula. In "add"
    mode `s = rsqrt(n^2 + fan_in * eps)` is never clamped, and `gamma`
    multiplies `dw` and `dgain` (the same algebra).
    """
    if eps_mode not in ("floor", "add"):
        raise ValueError(
            f"eps_mode must be 'floor' or 'add', got {eps_mode!r}.")
    if not lean_gradient:
        return _standardize(w, gain, eps, eps_mode, gamma)[0]

    @ops.custom_gradient
    def standardize(w, gain):
        w_hat, mean, n2, inv, scale = _standardize(w, gain, eps, eps_mode,
                                                   gamma)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            g = ops.cast(upstream, w.dtype)
            axes = tuple(range(len(w.shape) - 1))
            # `w - mean` only once the gradient arrives (see `_lean_scaled`):
            # computed early, it is a kernel-sized tensor per layer held
            # from the start of the step.
            u = w - (mean + ops.cast(_data_dependent_zero(g), w.dtype))
            gu = ops.sum(g * u, axis=axes, keepdims=True)
            dgain = ops.reshape(gu * inv * gamma, ops.shape(gain))
            proj = (gu * inv * inv if eps_mode == "add" else
                    ops.where(n2 >= eps, gu * inv * inv, ops.zeros_like(gu)))
            dw = scale * (g - ops.mean(g, axis=axes, keepdims=True)
                          - u * proj)
            return dw, dgain

        return w_hat, grad

    return standardize(w, gain)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WSConv2D(keras.layers.Conv2D):
    """2D convolution with Scaled Weight Standardization and a learnable gain.

    The kernel is standardized on every call, exactly as in DeepMind's
    reference: with the biased mean and variance over (H, W, in-channels) and
    `fan_in = H * W * in_channels`,

        scale = rsqrt(max(var * fan_in, eps)) * gain
        w_hat = w * scale - mean * scale

    `gain` (one per output channel, initialised to 1) and `bias` (always on,
    initialised to 0) are trainable. The kernel is initialised with
    VarianceScaling(1.0, "fan_in", "normal"). The standardization is computed
    in the variable dtype (float32 under mixed precision).

    Args:
        filters, kernel_size, strides, padding, groups, ...: as
            `keras.layers.Conv2D` (`padding` defaults to `"same"`, which is
            TensorFlow's/JAX's SAME). `padding="symmetric"` is PyTorch's:
            `((stride - 1) + dilation * (kernel - 1)) // 2` zeros on every
            side (timm's `get_padding`).
        eps: floor of `var * fan_in`, 1e-4 as in DeepMind's code.
        eps_mode: `"floor"` (DeepMind: `rsqrt(max(fan_in * var, eps))`) or
            `"add"` (timm's `ScaledStdConv2d`: `rsqrt(fan_in * (var +
            eps))`).
        gamma: a constant factor on the standardized kernel (timm folds
            the activation's gamma in here; 1.0 for DeepMind).

    Example:
    >>> conv = WSConv2D(64, 3, strides=2, groups=2)
    >>> y = conv(keras.random.normal((1, 32, 32, 16)))  # (1, 16, 16, 64)
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same",
                 groups=1, eps=1e-4,
                 kernel_initializer=None, eps_mode="floor", gamma=1.0,
                 **kwargs):
        kwargs.pop("use_bias", None)
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.VarianceScaling(
                1.0, "fan_in", "normal")
        self.symmetric_padding = padding == "symmetric"
        super().__init__(filters, kernel_size, strides=strides,
                         padding="valid" if self.symmetric_padding
                         else padding, groups=groups, use_bias=True,
                         kernel_initializer=kernel_initializer, **kwargs)
        self.eps = float(eps)
        if eps_mode not in ("floor", "add"):
            raise ValueError(
                f"eps_mode must be 'floor' or 'add', got {eps_mode!r}.")
        self.eps_mode, self.gamma = eps_mode, float(gamma)
        self._pads = tuple(
            ((s - 1) + d * (k - 1)) // 2 if self.symmetric_padding else 0
            for k, s, d in zip(self.kernel_size, self.strides,
                               self.dilation_rate))
        # Standardize in the variable dtype, cast afterwards.
        self.autocast = False

    def standardized_kernel(self, inputs=None):
        """Returns the standardized kernel `w_hat` (variable dtype).

        With `inputs` (what `call` passes), the result is also made to
        depend on the layer's input through an exact zero added to `gain`
        (`_data_dependent_zero`), so a graph executor
        (TensorFlow's) computes `w_hat` when the convolution is about to run
        rather than at the start of the step. Without it, every layer's
        standardized kernel (and, under remat, its recomputed copy) is ready
        at once and held until its convolution runs (docs/performance.md
        has the measured effect on NFNet-F0's forward-pass peak).
        The values are unchanged.
        """
        # ops.copy reads the variables into tensors (tf.identity: no copy),
        # so the custom gradient sees tensor inputs, not variables.
        gain = ops.copy(self.gain)
        if inputs is not None:
            gain = gain + ops.cast(_data_dependent_zero(inputs), gain.dtype)
        return standardize_weight(ops.copy(self.kernel), gain, self.eps,
                                  eps_mode=self.eps_mode, gamma=self.gamma)

    def _padded_shape(self, input_shape):
        n, h, w, c = input_shape
        ph, pw = self._pads
        return (n, None if h is None else h + 2 * ph,
                None if w is None else w + 2 * pw, c)

    def build(self, input_shape):
        super().build(self._padded_shape(input_shape))
        self.gain = self.add_weight(
            name="gain", shape=(self.filters,), initializer="ones",
            trainable=True, dtype=self.variable_dtype)

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._padded_shape(input_shape))

    # Set by `keras_nfnets.fold_weight_standardization` on its inference
    # copy, whose `kernel` already holds the standardized kernel.
    folded = False

    def call(self, inputs):
        w = ops.cast(self.kernel if self.folded
                     else self.standardized_kernel(inputs), self.compute_dtype)
        x = ops.cast(inputs, self.compute_dtype)
        if any(self._pads):
            ph, pw = self._pads
            x = ops.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        if self.groups > 1 and grouped_conv_mode() == "split":
            xs = ops.split(x, self.groups, axis=-1)
            ws = ops.split(w, self.groups, axis=-1)
            out = ops.concatenate(
                [self._conv(xi, wi) for xi, wi in zip(xs, ws)], axis=-1)
        else:
            out = self._conv(x, w)
        return out + ops.cast(self.bias, self.compute_dtype)

    def _conv(self, x, w):
        return ops.conv(x, w, strides=self.strides, padding=self.padding,
                        dilation_rate=self.dilation_rate,
                        data_format=self.data_format)

    # Conv2D saves only kernel and bias; save the gain too.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self):
        config = super().get_config()
        config.pop("use_bias", None)
        config["eps"] = self.eps
        if self.symmetric_padding:
            config["padding"] = "symmetric"
        if self.eps_mode != "floor":
            config["eps_mode"] = self.eps_mode
        if self.gamma != 1.0:
            config["gamma"] = self.gamma
        return config


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
        y = ops.conv(y, ops.cast(self.kernel, y.dtype), padding="same")
        return ops.sigmoid(y[:, :, 0])[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "kernel_size": self.kernel_size}


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
                            padding="valid")

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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NFBlock(keras.layers.Layer):
    """One normalizer-free residual block (DeepMind's `nfnet.NFBlock`).

        out = act(x) * beta
        shortcut = [avgpool 2x2 if strided] -> [1x1 WSConv if projecting] or x
        out = conv0 1x1 -> act -> conv1 grouped kxk (stride) -> act
              -> [conv1b grouped kxk -> act] -> conv2 1x1
        out = 2 * se(out) * out -> stochastic depth -> * skip_gain
        return out * alpha + shortcut

    The bottleneck width is `int((out if big_width else in) * expansion)`
    rounded down to a multiple of `group_width`. The block's sub-layers are
    named as DeepMind's haiku modules (`conv0`, `conv1`, `conv1b`, `conv2`,
    `conv_shortcut`, `squeeze_excite`), and `skip_gain` (a scalar, initialised
    to 0) is the block's own weight, so weight paths read
    `nf_block_3/conv1b/kernel` for haiku's `nf_block_3/~/conv1b` `w`.

    `call` returns the block output; `call_with_metrics` also returns the
    residual branch's average channel variance (for signal propagation).

    Three switches make it the block of every normalizer-free family:

    * `se_position`: `"output"` (NFNet: SE on the block output, after
      `conv2`), `"bottleneck"` (NF-RegNet: SE on the bottleneck width,
      between `conv1` and `act -> conv2`) or `None` (no SE: NF-ResNet).
    * `strided_shortcut`: `False` (NFNet, NF-RegNet: 2x2 average pool, then
      the 1x1 projection) or `True` (NF-ResNet: a strided 1x1 projection).
    * `group_width=None`: dense convolutions (NF-ResNet), no rounding of the
      bottleneck width.

    NFNet: `NFBlock(...)` with the defaults. NF-ResNet: `expansion=0.25,
    group_width=None, use_two_convs=False, se_position=None,
    strided_shortcut=True, activation="relu"`. NF-RegNet: `expansion=2.25,
    big_width=False, group_width=8, use_two_convs=False,
    se_position="bottleneck", activation="silu"`.

    timm's blocks add: `attention="eca"` (`EfficientChannelAttention`, a
    sub-layer named `eca`, instead of squeeze-excite), `se_divisor` (the
    SE hidden width rounded as timm's `make_divisible(., se_divisor,
    round_limit=0)`), `width_divisor` (the bottleneck width rounded as
    timm's `make_divisible`, then to the group width),
    `skip_gain=False` (no skip-gain weight: the branch is not scaled),
    and `conv_options` / `activation_options`: keyword arguments of every
    `WSConv2D` and of `scaled_activation` (the numerics: see
    `keras_nfnets.variants.Numerics`).
    """

    def __init__(self, in_channels, out_channels, expansion=0.5, se_ratio=0.5,
                 kernel_size=3, group_width=128, strides=1, beta=1.0,
                 alpha=0.2, activation="gelu", big_width=True,
                 use_two_convs=True, stochdepth_rate=None, seed=None,
                 se_position="output", strided_shortcut=False,
                 remat=False, attention="se", se_divisor=None,
                 width_divisor=None, skip_gain=True, conv_options=None,
                 activation_options=None, **kwargs):
        super().__init__(**kwargs)
        if attention not in ("se", "eca"):
            raise ValueError(
                f"attention must be 'se' or 'eca', got {attention!r}")
        self.attention, self.se_divisor = attention, se_divisor
        self.width_divisor, self.use_skip_gain = width_divisor, bool(skip_gain)
        self.conv_options = dict(conv_options or {})
        self.activation_options = dict(activation_options or {})
        self.remat = check_remat(remat)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.expansion, self.se_ratio = expansion, se_ratio
        self.kernel_size, self.group_width = kernel_size, group_width
        self.strides, self.beta, self.alpha = strides, beta, alpha
        self.activation = check_activation(activation)
        self.big_width, self.use_two_convs = big_width, use_two_convs
        self.stochdepth_rate, self.seed = stochdepth_rate, seed
        if se_position not in ("output", "bottleneck", None):
            raise ValueError(
                f"se_position must be 'output', 'bottleneck' or None, got "
                f"{se_position!r}")
        self.se_position = se_position
        self.strided_shortcut = bool(strided_shortcut)
        self._act = scaled_activation(activation, **self.activation_options)

        width = int((out_channels if big_width else in_channels) * expansion)
        if width_divisor:  # timm: rounded, then a multiple of the groups
            width = make_divisible(
                (out_channels if big_width else in_channels) * expansion,
                width_divisor)
            self.groups = 1 if group_width is None else width // group_width
            if group_width and group_width % width_divisor == 0:
                width = group_width * self.groups
            self.width = width
            if self.groups < 1:
                raise ValueError(
                    f"Block {self.name}: bottleneck width {width} is smaller "
                    f"than group_width {group_width}.")
        elif group_width is None:  # dense convolutions, width as computed
            self.groups, self.width = 1, width
        else:
            self.groups = width // group_width
            if self.groups < 1:
                raise ValueError(
                    f"Block {self.name}: bottleneck width {width} is smaller "
                    f"than group_width {group_width}.")
            self.width = group_width * self.groups
        policy = self.dtype_policy

        def conv(filters, k, name, strides=1, groups=1):
            return WSConv2D(filters, k, strides=strides, groups=groups,
                            data_format="channels_last", name=name,
                            dtype=policy, **self.conv_options)

        self.conv0 = conv(self.width, 1, "conv0")
        self.conv1 = conv(self.width, kernel_size, "conv1", strides=strides,
                          groups=self.groups)
        self.conv1b = (conv(self.width, kernel_size, "conv1b",
                            groups=self.groups) if use_two_convs else None)
        self.conv2 = conv(out_channels, 1, "conv2")
        self.use_projection = strides > 1 or in_channels != out_channels
        self.conv_shortcut = (
            conv(out_channels, 1, "conv_shortcut",
                 strides=strides if self.strided_shortcut else 1)
            if self.use_projection else None)
        se_channels = (self.width if se_position == "bottleneck"
                       else out_channels)
        hidden = (make_divisible(se_channels * se_ratio, se_divisor,
                                 round_limit=0.0) if se_divisor else None)
        if se_position is None:
            self.se = None
        elif attention == "eca":
            self.se = EfficientChannelAttention(se_channels, name="eca",
                                                dtype=policy)
        else:
            self.se = SqueezeExcite(se_channels, se_channels, se_ratio,
                                    hidden_channels=hidden,
                                    name="squeeze_excite", dtype=policy)
        self.has_stochdepth = (stochdepth_rate is not None
                               and 0.0 < stochdepth_rate < 1.0)
        self.stoch_depth = (StochasticDepth(stochdepth_rate, seed=seed,
                                            name="stoch_depth", dtype=policy)
                            if self.has_stochdepth else None)

    def named_sublayers(self):
        """The sub-layers that own weights, by haiku module name."""
        subs = {"conv0": self.conv0, "conv1": self.conv1,
                "conv1b": self.conv1b, "conv2": self.conv2,
                "conv_shortcut": self.conv_shortcut,
                ("eca" if self.attention == "eca" else "squeeze_excite"):
                self.se}
        return {k: v for k, v in subs.items() if v is not None}

    def build(self, input_shape):
        n, h, w, _ = input_shape
        self.conv0.build(input_shape)
        self.conv1.build((n, h, w, self.width))
        oh = None if h is None else -(-h // self.strides)
        ow = None if w is None else -(-w // self.strides)
        if self.conv1b is not None:
            self.conv1b.build((n, oh, ow, self.width))
        self.conv2.build((n, oh, ow, self.width))
        if self.conv_shortcut is not None:
            self.conv_shortcut.build(
                input_shape if self.strided_shortcut
                else (n, oh, ow, self.in_channels))
        if self.se is not None:
            self.se.build((n, oh, ow, self.se.in_channels))
        if self.stoch_depth is not None:
            self.stoch_depth.build((n, oh, ow, self.out_channels))
        if self.use_skip_gain:
            self.skip_gain = self.add_weight(
                name="skip_gain", shape=(), initializer="zeros",
                trainable=True)

    def _residual_branch(self, out):
        """conv0 -> act -> conv1 -> [SE] -> act -> conv1b -> act -> conv2
        -> [SE]: deterministic, so it can be recomputed (remat)."""
        out = self.conv0(out)
        out = self.conv1(self._act(out))
        if self.se_position == "bottleneck":
            out = (self.se(out) * 2.0) * out
        if self.conv1b is not None:
            out = self.conv1b(self._act(out))
        out = self.conv2(self._act(out))
        if self.se_position == "output":
            out = (self.se(out) * 2.0) * out
        return out

    def call_with_metrics(self, x, training=False, return_metrics=True):
        """Returns `(output, res_avg_var)`: the block output, and the
        residual branch's average channel variance before stochastic depth
        and skip gain (None when `return_metrics=False`)."""
        mask = None
        if self.stoch_depth is not None:
            # Drawn outside the recomputed function, so recomputation in the
            # backward pass cannot change it.
            mask = self.stoch_depth.draw_mask(x, training)
        if not return_metrics and resolve_remat(self.remat):
            # The whole block is recomputed in the backward pass: only its
            # input (and the stochastic-depth mask) is kept, not act(x), the
            # branch's activations, its output or its standardized kernels.
            masks = () if mask is None else (mask,)
            return keras.remat(self._block)(x, *masks), None
        metrics = [] if return_metrics else None
        out = self._block(x, mask, metrics)
        return out, (metrics[0] if metrics else None)

    def _block(self, x, mask=None, metrics=None):
        out = self._act(x) * ops.cast(self.beta, x.dtype)
        shortcut = out
        if self.strides > 1 and not self.strided_shortcut:
            shortcut = ops.average_pool(shortcut, pool_size=2, strides=2,
                                        padding="same",
                                        data_format="channels_last")
        if self.use_projection:
            shortcut = self.conv_shortcut(shortcut)
        else:
            shortcut = x
        out = self._residual_branch(out)
        if metrics is not None:
            metrics.append(ops.mean(ops.var(ops.cast(out, "float32"),
                                            axis=(0, 1, 2))))
        if mask is not None:
            out = self.stoch_depth.apply_mask(out, mask)
        if self.use_skip_gain:
            out = out * ops.cast(self.skip_gain, out.dtype)
        return out * ops.cast(self.alpha, out.dtype) + shortcut

    def call(self, x, training=False):
        return self.call_with_metrics(x, training=training,
                                      return_metrics=False)[0]

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        oh = None if h is None else -(-h // self.strides)
        ow = None if w is None else -(-w // self.strides)
        return (n, oh, ow, self.out_channels)

    def get_config(self):
        return {**super().get_config(),
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "expansion": self.expansion, "se_ratio": self.se_ratio,
                "kernel_size": self.kernel_size,
                "group_width": self.group_width, "strides": self.strides,
                "beta": self.beta, "alpha": self.alpha,
                "activation": self.activation, "big_width": self.big_width,
                "use_two_convs": self.use_two_convs,
                "stochdepth_rate": self.stochdepth_rate, "seed": self.seed,
                "se_position": self.se_position,
                "strided_shortcut": self.strided_shortcut,
                "remat": self.remat, "attention": self.attention,
                "se_divisor": self.se_divisor,
                "width_divisor": self.width_divisor,
                "skip_gain": self.use_skip_gain,
                "conv_options": self.conv_options,
                "activation_options": self.activation_options}
