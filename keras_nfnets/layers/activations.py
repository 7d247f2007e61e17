"""DeepMind's gamma-scaled nonlinearities (Brock et al. 2021, "gamma" constants)
and their closed-form gradients; the `ScaledActivation` layer.

`scaled_activation(name)` is `f(x) * gamma`, where `gamma = 1 / std(f(x))` for
`x ~ N(0, 1)`, so that the output has unit variance. With `lean_gradient`,
gelu and silu use a closed-form derivative (a custom gradient) that keeps only
the input for the backward pass.
"""

import functools
import math

import keras
from keras import ops

from keras_nfnets import runtime

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


@functools.lru_cache(maxsize=None)
def _lean_backward(derivative, gamma):
    """`upstream * derivative(x) * gamma`, one fused kernel where the
    backend allows (`runtime.fused`); one function per (derivative,
    gamma), so activations of the same shape share its compilation."""

    def backward(x, upstream):
        # Computed from `x` only once `upstream` exists: otherwise a graph
        # executor runs derivative(x) right after the forward pass and
        # holds it (an activation-sized tensor per activation) until the
        # backward pass reaches it.
        x_late = x + ops.cast(_data_dependent_zero(upstream), x.dtype)
        return upstream * (derivative(x_late) * ops.cast(gamma, x.dtype))

    return runtime.fused(backward)


def _lean_scaled(fn, gamma, derivative):
    """`fn(x) * gamma` with a gradient that saves only `x` (computed by
    `_lean_backward`); the plain product in a traced export."""
    backward = _lean_backward(derivative, float(gamma))

    def forward(x):
        return fn(x) * ops.cast(gamma, x.dtype)

    @ops.custom_gradient
    def scaled(x):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return backward(x, upstream)

        return forward(x), grad

    def call(x):
        if runtime.exporting():  # the same values, no gradient to carry
            return forward(x)
        return scaled(x)

    return call


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
        lean_gradient: the closed-form gradient of `scaled_activation`
            (False: autodiff's, a plain graph for export).

    Example:
    >>> layer = ScaledActivation("gelu")
    >>> y = layer(keras.random.normal((4, 8)))
    """

    def __init__(self, activation="gelu", gamma=None, gelu="tanh",
                 lean_gradient=True, **kwargs):
        super().__init__(**kwargs)
        self.activation = check_activation(activation)
        self.gamma = None if gamma is None else float(gamma)
        self.gelu, self.lean_gradient = gelu, bool(lean_gradient)
        self._fn = scaled_activation(activation, gamma=gamma, gelu=gelu,
                                     lean_gradient=self.lean_gradient)

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
        if not self.lean_gradient:
            config["lean_gradient"] = False
        return config
