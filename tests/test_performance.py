"""Memory-lean gradients (weight standardization, gelu/silu) equal autodiff,
and the remat / grouped-convolution switches change no numbers.

No timings here: speed is measured by benchmarks/benchmark.py."""

import numpy as np
import pytest
import tensorflow as tf

from keras_nfnets import layers as nfl


def _ws_grads(w, gain, g, lean):
    with tf.GradientTape() as tape:
        tape.watch([w, gain])
        y = nfl.standardize_weight(w, gain, 1e-4, lean_gradient=lean)
        loss = tf.reduce_sum(y * g)
    dw, dgain = tape.gradient(loss, [w, gain])
    return y.numpy(), dw.numpy(), dgain.numpy()


@pytest.mark.parametrize("shape", [(3, 3, 4, 8), (1, 1, 16, 5), (3, 3, 1, 3)])
def test_lean_weight_standardization_gradient_equals_autodiff(shape):
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape).astype("float32") * 2 + 0.3
    w[..., -1] = 0.5  # a constant channel: var * fan_in < eps, clamped
    w = tf.constant(w)
    gain = tf.constant(rng.uniform(0.5, 2, size=shape[-1:]).astype("float32"))
    g = tf.constant(rng.normal(size=shape).astype("float32"))
    lean = _ws_grads(w, gain, g, True)
    plain = _ws_grads(w, gain, g, False)
    np.testing.assert_array_equal(lean[0], plain[0])  # same forward values
    for a, b in zip(lean[1:], plain[1:]):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=1e-6)


def test_wsconv_layer_gradient_equals_autodiff():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 7, 7, 6)).astype("float32"))
    conv = nfl.WSConv2D(6, 3, groups=2)
    conv.build(x.shape)
    with tf.GradientTape() as tape:
        y = conv(x)
        loss = tf.reduce_sum(y * y)
    lean = tape.gradient(loss, [conv.kernel, conv.gain])
    with tf.GradientTape() as tape:
        w_hat = nfl.standardize_weight(tf.convert_to_tensor(conv.kernel),
                                       tf.convert_to_tensor(conv.gain),
                                       conv.eps, lean_gradient=False)
        xs = tf.split(x, 2, axis=-1)
        ws = tf.split(w_hat, 2, axis=-1)
        y2 = tf.concat([tf.nn.conv2d(a, b, 1, "SAME") for a, b in
                        zip(xs, ws)], -1) + conv.bias
        loss2 = tf.reduce_sum(y2 * y2)
    plain = tape.gradient(loss2, [conv.kernel, conv.gain])
    np.testing.assert_allclose(y.numpy(), y2.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(lean, plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_lean_activation_gradient_equals_autodiff(name):
    x = tf.constant(np.linspace(-8, 8, 2001).astype("float32"))
    out = {}
    for lean in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = nfl.scaled_activation(name, lean_gradient=lean)(x)
        out[lean] = (y.numpy(), tape.gradient(y, x).numpy())
    np.testing.assert_array_equal(out[True][0], out[False][0])
    np.testing.assert_allclose(out[True][1], out[False][1], rtol=0, atol=1e-5)


def test_remat_auto_is_on_without_accelerator_and_validated():
    from keras_nfnets import builder
    assert builder.resolve_remat("auto") is (not builder._has_accelerator())
    assert builder.resolve_remat(False) is False
    with pytest.raises(ValueError, match="remat"):
        builder.resolve_remat("yes")
