"""Layer tests: WSConv2D standardization, gamma constants, SE, stochastic
depth, the NF block and the two grouped-convolution paths."""

import numpy as np
import pytest

import keras
from keras import ops

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


@pytest.mark.parametrize("groups,strides", [(2, 1), (4, 2), (3, 2)])
def test_grouped_conv_split_equals_native(groups, strides):
    """The per-group split path (CPU) and the backend's native grouped
    convolution (GPU/TPU) give the same outputs and gradients."""
    import tensorflow as tf
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 11, 11, 6 * groups)).astype("float32"))
    conv = nfl.WSConv2D(4 * groups, 3, strides=strides, groups=groups)
    conv.build(x.shape)
    conv.bias.assign(rng.normal(size=conv.bias.shape).astype("float32"))
    results = {}
    try:
        for mode in ("split", "native"):
            nfl.set_grouped_conv_mode(mode)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = conv(x)
                loss = tf.reduce_sum(y * y)
            grads = tape.gradient(loss, [x, conv.kernel, conv.gain])
            results[mode] = [y.numpy()] + [g.numpy() for g in grads]
    finally:
        nfl.set_grouped_conv_mode("auto")
    for a, b in zip(results["split"], results["native"]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)


def test_grouped_conv_mode_validation():
    with pytest.raises(ValueError, match="grouped conv mode"):
        nfl.set_grouped_conv_mode("fast")
    assert nfl.grouped_conv_mode() in ("split", "native")


@pytest.mark.parametrize("name", sorted(nfl.GAMMAS))
def test_gamma_gives_unit_variance(name):
    """gamma = 1/std(f(x)) on N(0, 1): the scaled activation has unit
    variance (e.g. gelu 1.000 +- 0.002)."""
    x = np.random.default_rng(0).standard_normal((4_000, 256)).astype("float32")
    y = ops.convert_to_numpy(nfl.scaled_activation(name)(ops.convert_to_tensor(x)))
    assert abs(y.std() - 1.0) < 0.002, (name, y.std())


def test_gelu_is_tanh_approximation_times_gamma():
    x = np.linspace(-4, 4, 101).astype("float32")
    tanh_gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    y = ops.convert_to_numpy(nfl.ScaledActivation("gelu")(x))
    np.testing.assert_allclose(y, tanh_gelu * 1.7015043497085571, rtol=1e-5, atol=1e-6)


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="'swish2'"):
        nfl.ScaledActivation("swish2")


def test_squeeze_excite():
    se = nfl.SqueezeExcite(10, 10, se_ratio=0.25)
    x = np.random.default_rng(2).normal(size=(3, 4, 4, 10)).astype("float32")
    gate = ops.convert_to_numpy(se(x))
    assert gate.shape == (3, 1, 1, 10)
    assert se.hidden_channels == 2  # max(1, int(10 * 0.25))
    w0, b0 = [ops.convert_to_numpy(v) for v in se.fc0.weights]
    w1, b1 = [ops.convert_to_numpy(v) for v in se.fc1.weights]
    h = np.maximum(x.mean(axis=(1, 2)) @ w0 + b0, 0) @ w1 + b1
    np.testing.assert_allclose(gate[:, 0, 0], 1 / (1 + np.exp(-h)), rtol=1e-5)
    assert nfl.SqueezeExcite(3, 3, se_ratio=0.1).hidden_channels == 1


def test_stochastic_depth_per_example_no_rescale_identity_at_inference():
    sd = nfl.StochasticDepth(0.5, seed=3)
    x = np.ones((256, 2, 2, 3), "float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(sd(x)), x)
    np.testing.assert_array_equal(ops.convert_to_numpy(sd(x, training=False)), x)
    y = ops.convert_to_numpy(sd(x, training=True))
    per_example = y.reshape(256, -1)
    # one draw per example: each example entirely kept (1, not 1/keep) or 0
    assert set(np.unique(per_example)) <= {0.0, 1.0}
    assert np.all(per_example.min(1) == per_example.max(1))
    assert 0.3 < per_example[:, 0].mean() < 0.7
    cfg = sd.get_config()
    assert nfl.StochasticDepth.from_config(cfg).rate == 0.5


def _block(**kw):
    args = dict(in_channels=8, out_channels=16, expansion=0.5, group_width=4,
                strides=2, beta=0.9, alpha=0.2, stochdepth_rate=0.25)
    args.update(kw)
    return nfl.NFBlock(**args, name="nf_block_1")


def test_nfblock_structure_and_shapes():
    block = _block()
    y = block(np.zeros((2, 9, 9, 8), "float32"))
    assert tuple(y.shape) == (2, 5, 5, 16)
    assert block.width == 8 and block.groups == 2
    assert sorted(block.named_sublayers()) == [
        "conv0", "conv1", "conv1b", "conv2", "conv_shortcut", "squeeze_excite"]
    assert float(ops.convert_to_numpy(block.skip_gain)) == 0.0
    # No projection when shape is kept.
    same = nfl.NFBlock(16, 16, group_width=4, name="b")
    assert same.conv_shortcut is None
    # Bottleneck width rounds down to a multiple of the group width.
    assert nfl.NFBlock(16, 24, expansion=0.5, group_width=8).width == 8


def test_nfblock_skip_gain_zero_is_shortcut_and_config_roundtrip():
    block = nfl.NFBlock(8, 8, group_width=4, beta=0.5, name="b")
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 8)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(block(x)), x, rtol=1e-6)
    clone = nfl.NFBlock.from_config(block.get_config())
    assert clone.beta == 0.5 and clone.group_width == 4


def test_nfblock_stochastic_depth_training_only():
    block = _block(in_channels=16, strides=1, stochdepth_rate=0.5)
    x = np.random.default_rng(1).normal(size=(64, 4, 4, 16)).astype("float32")
    block(x)
    block.skip_gain.assign(1.0)
    a = ops.convert_to_numpy(block(x, training=False))
    b = ops.convert_to_numpy(block(x, training=False))
    np.testing.assert_array_equal(a, b)
    t = ops.convert_to_numpy(block(x, training=True))
    # Dropped examples equal the shortcut (x here), kept ones equal inference.
    dropped = np.all(np.isclose(t, x, atol=1e-6), axis=(1, 2, 3))
    kept = np.all(np.isclose(t, a, atol=1e-5), axis=(1, 2, 3))
    assert np.all(dropped | kept) and dropped.any() and kept.any()


def test_nfblock_remat_gives_identical_outputs_and_gradients():
    """Recomputing the residual branch in the backward pass (remat) changes
    memory, not numbers; stochastic depth draws stay outside it."""
    import tensorflow as tf
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(4, 8, 8, 16)).astype("float32"))
    results = []
    for remat in (False, True):
        block = nfl.NFBlock(16, 32, group_width=8, strides=2, beta=0.8,
                            remat=remat, name="nf_block_2")
        block.build(x.shape)
        for v in block.weights:  # same weights for both
            v.assign(np.random.default_rng(len(v.path)).normal(
                size=v.shape).astype("float32") * 0.3)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = block(x, training=True)
            loss = tf.reduce_sum(y * y)
        grads = tape.gradient(loss, [x] + block.trainable_weights)
        results.append([y.numpy()] + [g.numpy() for g in grads])
        assert nfl.NFBlock.from_config(block.get_config()).remat == remat
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
