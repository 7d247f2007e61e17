"""WSConv2D (keras_nfnets/layers/ws_conv.py): DeepMind's standardization
(`rsqrt(max(N var, 1e-4)) gain`), timm's "add" mode with gamma in the
kernel, the lean gradient, PyTorch's symmetric padding, the config."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras import ops

from keras_nfnets import layers
from keras_nfnets import layers as nfl


def test_wsconv_standardization_matches_formula():
    conv = nfl.WSConv2D(8, 3, groups=1)
    conv.build((None, 6, 6, 4))
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 4, 8)).astype("float32") * 3 + 0.5
    gain = rng.uniform(0.5, 2, size=(8,)).astype("float32")
    conv.kernel.assign(w)
    conv.gain.assign(gain)
    # DeepMind: biased var over H,W,I; rsqrt(max(var*fan_in, 1e-4)) * gain.
    mean = w.mean(axis=(0, 1, 2), keepdims=True)
    var = w.var(axis=(0, 1, 2), keepdims=True)
    scale = 1 / np.sqrt(np.maximum(var * 36, 1e-4)) * gain
    expected = w * scale - mean * scale
    np.testing.assert_allclose(ops.convert_to_numpy(conv.standardized_kernel()),
                               expected, rtol=1e-5, atol=1e-6)



def test_wsconv_eps_floor_on_constant_kernel():
    conv = nfl.WSConv2D(2, 1)
    conv.build((None, 4, 4, 3))
    conv.kernel.assign(np.ones((1, 1, 3, 2), "float32"))
    w_hat = ops.convert_to_numpy(conv.standardized_kernel())
    assert np.all(np.isfinite(w_hat)) and np.allclose(w_hat, 0.0)



def test_wsconv_defaults_and_config_roundtrip():
    conv = nfl.WSConv2D(16, 3, strides=2, groups=2, name="c")
    y = conv(np.zeros((1, 9, 9, 8), "float32"))
    assert tuple(y.shape) == (1, 5, 5, 16)  # SAME: ceil(9 / 2)
    names = sorted(w.name for w in conv.weights)
    assert names == ["bias", "gain", "kernel"]
    cfg = conv.get_config()
    assert cfg["groups"] == 2 and cfg["eps"] == 1e-4 and cfg["padding"] == "same"
    clone = nfl.WSConv2D.from_config(cfg)
    assert clone.groups == 2 and clone.strides == (2, 2)
    init = conv.kernel_initializer
    assert isinstance(init, keras.initializers.VarianceScaling)
    assert init.mode == "fan_in" and init.scale == 1.0



def test_add_mode_standardization_formula_and_lean_gradient():
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(3, 3, 4, 5)), tf.float32)
    gain = tf.constant(rng.uniform(0.5, 1.5, size=(5,)), tf.float32)
    g = tf.constant(rng.normal(size=(3, 3, 4, 5)), tf.float32)
    mean = np.mean(w.numpy(), axis=(0, 1, 2))
    var = np.var(w.numpy(), axis=(0, 1, 2))
    expected = ((w.numpy() - mean) / np.sqrt(36 * (var + 1e-5))
                * gain.numpy() * 1.7)
    grads = []
    for lean in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([w, gain])
            out = layers.standardize_weight(w, gain, 1e-5, lean_gradient=lean,
                                            eps_mode="add", gamma=1.7)
            loss = tf.reduce_sum(out * g)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5,
                                   atol=1e-6)
        grads.append([t.numpy() for t in tape.gradient(loss, [w, gain])])
    for lean, auto in zip(*grads):
        np.testing.assert_allclose(lean, auto, rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("size", [15, 16])
def test_symmetric_padding_is_pytorchs(size):
    """Same numbers as an explicit (1, 1) zero pad and a valid conv."""
    x = np.random.default_rng(1).normal(size=(1, size, size, 3))
    conv = layers.WSConv2D(4, 3, strides=2, padding="symmetric")
    y = np.asarray(conv(x))
    w = np.asarray(conv.standardized_kernel())
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = tf.nn.conv2d(padded.astype("float32"), w, 2, "VALID").numpy()
    np.testing.assert_allclose(y, ref + np.asarray(conv.bias), atol=1e-5)
    assert conv.compute_output_shape((1, size, size, 3)) == y.shape
    if size % 2 == 0:  # TF's SAME pads only the bottom/right here
        same = layers.WSConv2D(4, 3, strides=2)
        same.build(x.shape)
        same.set_weights(conv.get_weights())
        assert not np.allclose(np.asarray(same(x)), y, atol=1e-3)


@pytest.mark.parametrize("kwargs", [
    dict(filters=16, kernel_size=3), dict(filters=16, kernel_size=3, strides=2),
    dict(filters=8, kernel_size=3, groups=2),
    dict(filters=16, kernel_size=3, strides=2, padding="symmetric"),
    dict(filters=16, kernel_size=1)])
def test_an_empty_batch_gives_an_empty_output_of_the_right_shape(kwargs):
    """A batch of zero images gives zero outputs of the convolution's
    shape, eagerly and traced with the empty batch known (TensorFlow's
    oneDNN convolution returns its input unchanged for one)."""
    conv = nfl.WSConv2D(**kwargs)
    x = np.zeros((0, 12, 12, 4), "float32")
    expected = (0, *conv.compute_output_shape((1, 12, 12, 4))[1:])
    for training in (False, True):
        assert tuple(conv(x, training=training).shape) == expected
        traced = tf.function(lambda t: conv(t, training=training))
        assert tuple(traced(x).shape) == expected
