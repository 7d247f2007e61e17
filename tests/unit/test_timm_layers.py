"""The layer switches timm's models need: the "add" weight standardization
with gamma in the kernel, PyTorch's symmetric padding, ECA, the symmetric
max pool, and a timm-numerics block that saves and loads."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_nfnets
from keras_nfnets import layers, variants


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


def test_symmetric_max_pool_pads_minus_infinity():
    x = -np.abs(np.random.default_rng(2).normal(size=(1, 8, 8, 2))) - 1.0
    y = np.asarray(layers.SymmetricMaxPooling2D(3, 2, 1)(x))
    ref = np.full((1, 4, 4, 2), -np.inf)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
                    constant_values=-np.inf)
    for i in range(4):
        for j in range(4):
            ref[0, i, j] = padded[0, 2 * i:2 * i + 3,
                                  2 * j:2 * j + 3].max(axis=(0, 1))
    np.testing.assert_allclose(y, ref, atol=1e-6)
    assert y.max() < -1.0  # never the zero padding


def test_eca_kernel_size_and_gate():
    assert layers.EfficientChannelAttention(256).kernel_size == 5
    assert layers.EfficientChannelAttention(32).kernel_size == 3
    eca = layers.EfficientChannelAttention(8, kernel_size=3)
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 8)).astype("float32")
    gate = np.asarray(eca(x))
    k = np.asarray(eca.kernel)[:, 0, 0]
    m = np.pad(x.mean(axis=(1, 2)), ((0, 0), (1, 1)))
    ref = 1 / (1 + np.exp(-(k[0] * m[:, :-2] + k[1] * m[:, 1:-1]
                            + k[2] * m[:, 2:])))
    np.testing.assert_allclose(gate[:, 0, 0], ref, rtol=1e-5)


def test_timm_numerics_model_saves_and_loads(tmp_path):
    cfg = variants.NFNetConfig(
        width=(16, 32, 32, 64), depth=(1, 1, 1, 1), group_width=(8,) * 4,
        expansion=(0.5,) * 4, activation="silu", attention="eca",
        ch_div=8, se_divisor=8, skip_gain=False, stem_width=16,
        numerics="timm", final_conv_mult=1.5)
    model = keras_nfnets.NFNet(config=cfg, classes=3,
                               input_shape=(32, 32, 3))
    x = np.random.default_rng(4).uniform(0, 255, (1, 32, 32, 3))
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)),
                               atol=1e-6)
    assert again.get_layer("nf_block").conv_options["eps_mode"] == "add"
