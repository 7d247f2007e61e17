"""Scaled weight standardization (Brock et al. 2021, section 3 / NF-ResNets,
Brock et al. 2021a): `standardize_weight` and the `WSConv2D` layer."""

import functools
import math

import keras
from keras import ops

from keras_nfnets import runtime
from keras_nfnets.layers.activations import _data_dependent_zero

_PACKAGE = "keras_nfnets"


def _standardize(w, gain, eps, eps_mode="floor", gamma=1.0, parts=True):
    """`w_hat`, and with `parts` what the closed-form gradient reuses:
    `(w_hat, mean, n^2, inv, scale)` (none of them computed otherwise, so
    a plain forward graph has no unused op: OpenVINO's converter makes
    one a model output)."""
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
    w_hat = w * scale - mean * scale
    if not parts:
        return w_hat
    return w_hat, mean, var * fan_in, inv, scale


@functools.lru_cache(maxsize=None)
def _standardize_backward(eps_mode, eps):
    """The closed-form backward pass of `standardize_weight` (see there):
    `(dw, sum(g * u))`, one fused kernel where the backend allows
    (`runtime.fused`); one function per (eps_mode, eps), so layers with
    the same kernel shape share its compilation."""

    def backward(g, w, mean, n2, inv, scale):
        axes = tuple(range(len(w.shape) - 1))
        # `w - mean` only once the gradient arrives (see `_lean_scaled`):
        # computed early, it is a kernel-sized tensor per layer held from
        # the start of the step.
        u = w - (mean + ops.cast(_data_dependent_zero(g), w.dtype))
        gu = ops.sum(g * u, axis=axes, keepdims=True)
        proj = (gu * inv * inv if eps_mode == "add" else
                ops.where(n2 >= eps, gu * inv * inv, ops.zeros_like(gu)))
        dw = scale * (g - ops.mean(g, axis=axes, keepdims=True) - u * proj)
        return dw, gu

    return runtime.fused(backward)


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
    if not lean_gradient or runtime.exporting():
        return _standardize(w, gain, eps, eps_mode, gamma, parts=False)

    @ops.custom_gradient
    def standardize(w, gain):
        w_hat, mean, n2, inv, scale = _standardize(w, gain, eps, eps_mode,
                                                   gamma)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            dw, gu = _standardize_backward(eps_mode, eps)(
                ops.cast(upstream, w.dtype), w, mean, n2, inv, scale)
            dgain = ops.reshape(gu * inv * gamma, ops.shape(gain))
            return dw, dgain

        return w_hat, grad

    return standardize(w, gain)


@ops.custom_gradient
def same_conv_with_conv_gradients(x, w):
    """A stride-1 "same" convolution (NHWC, kernel HWIO with odd sizes)
    whose two gradients are forward convolutions too
    (`runtime.own_conv_gradients(pointwise=False)`), with `p = (k - 1) / 2` zeros padded:

        dx = conv_same(dy, w[::-1, ::-1] with in/out swapped)
        dw[i, j, c, o] = sum_{n,h,w} x_pad[n, h+i, w+j, c] dy[n, h, w, o]
           = conv_valid(x_pad as (c, h, w, n), dy as (h, w, n, o))

    The same sums as the convolution's own gradient kernels, in another
    order (float rounding apart).

    Example:
    >>> y = same_conv_with_conv_gradients(x, w)  # = ops.conv(x, w, 1, "same")
    """
    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        dy = upstream
        kh, kw = w.shape[0], w.shape[1]
        flipped = ops.transpose(ops.flip(ops.flip(w, 0), 1), (0, 1, 3, 2))
        dx = ops.conv(dy, flipped, strides=1, padding="same")
        ph, pw = (kh - 1) // 2, (kw - 1) // 2
        x_pad = ops.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        dw = ops.conv(ops.transpose(x_pad, (3, 1, 2, 0)),
                      ops.transpose(dy, (1, 2, 0, 3)), strides=1,
                      padding="valid")
        return dx, ops.transpose(dw, (1, 2, 0, 3))

    return ops.conv(x, w, strides=1, padding="same"), grad


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
        folded: the kernel already holds the standardized kernel (set by
            `keras_nfnets.fold_weight_standardization`): the call uses it
            as is, and the layer refuses to run in training.

    Example:
    >>> conv = WSConv2D(64, 3, strides=2, groups=2)
    >>> y = conv(keras.random.normal((1, 32, 32, 16)))  # (1, 16, 16, 64)
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same",
                 groups=1, eps=1e-4,
                 kernel_initializer=None, eps_mode="floor", gamma=1.0,
                 folded=False, **kwargs):
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
        self.folded = bool(folded)
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

    def call(self, inputs, training=None):
        if self.folded and training:
            raise RuntimeError(
                f"WSConv2D {self.name!r} is folded for inference "
                "(keras_nfnets.fold_weight_standardization): its kernel is "
                "the standardized kernel and its gain no longer trains. "
                "Train the original model, then fold it again.")
        if inputs.shape[0] == 0:
            # An empty batch (known when traced): TensorFlow's oneDNN
            # convolution returns its input unchanged for one, shape and
            # all, so the empty output is made here.
            return ops.zeros(self.compute_output_shape(inputs.shape),
                             self.compute_dtype)
        w = ops.cast(self.kernel if self.folded
                     else self.standardized_kernel(inputs), self.compute_dtype)
        x = ops.cast(inputs, self.compute_dtype)
        if any(self._pads):
            ph, pw = self._pads
            x = ops.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        mode = runtime.grouped_conv_mode() if self.groups > 1 else None
        own = bool(training) and runtime.own_conv_gradients()
        if own and self._pointwise and None not in x.shape[1:-1]:
            out = self._matmul(x, w)  # (height and width known at trace)
        elif mode == "graph":  # exported to ONNX / LiteRT (export_scope)
            out = runtime.graph_grouped_conv(x, w, self.strides,
                                             self.padding, self.dilation_rate)
        elif mode == "split":
            xs = ops.split(x, self.groups, axis=-1)
            ws = ops.split(w, self.groups, axis=-1)
            out = ops.concatenate(
                [self._conv(xi, wi, own) for xi, wi in zip(xs, ws)], axis=-1)
        else:
            out = self._conv(x, w, own and self.groups == 1)
        return out + ops.cast(self.bias, self.compute_dtype)

    @property
    def _unstrided(self):
        """Stride 1, no dilation, NHWC: what the training step's own
        convolution formulations need (`runtime.own_conv_gradients`)."""
        return (tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1)
                and self.data_format == "channels_last")

    @property
    def _pointwise(self):
        return (tuple(self.kernel_size) == (1, 1) and self.groups == 1
                and self._unstrided)

    def _matmul(self, x, w):
        """The 1x1 convolution as one matrix product over the channels
        (`runtime.own_conv_gradients`): its gradients are matrix
        products too."""
        rows = ops.reshape(x, (-1, x.shape[-1]))
        out = ops.matmul(rows, ops.reshape(w, (w.shape[-2], w.shape[-1])))
        return ops.reshape(out, (-1, *x.shape[1:-1], w.shape[-1]))

    def _conv(self, x, w, own_gradients=False):
        if (own_gradients and self.padding == "same" and self._unstrided
                and all(k % 2 for k in self.kernel_size)
                and runtime.own_conv_gradients(pointwise=False)):
            return same_conv_with_conv_gradients(x, w)
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
        if self.folded:
            config["folded"] = True
        return config
