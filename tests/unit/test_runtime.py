"""`remat="auto"` and the grouped-convolution mode: saved as "auto",
resolved each time a model is traced, with no process-wide cache (a model
built or saved on CPU runs the accelerator's way on a GPU/TPU).

The accelerator is simulated by making `keras.distribution.list_devices`
report a GPU: this machine has none."""

import inspect

import keras
import numpy as np
import pytest

import keras_nfnets
from conftest import fixture_path
from keras_nfnets import builder
from keras_nfnets import layers as nfl


@pytest.fixture
def fake_gpu(monkeypatch):
    def use(on):
        devices = ["gpu:0", "cpu:0"] if on else ["cpu:0"]
        monkeypatch.setattr(keras.distribution, "list_devices",
                            lambda device_type=None: list(devices))
    return use


@pytest.fixture
def remat_calls(monkeypatch):
    calls = []
    original = keras.remat

    def counting(fn):
        calls.append(fn)
        return original(fn)
    monkeypatch.setattr(keras, "remat", counting)
    return calls


def _tiny(**kwargs):
    return keras_nfnets.NFNet(
        str(fixture_path("nfnet_tiny_config.json")), classes=10,
        input_shape=(32, 32, 3), weights=None, **kwargs)


def _blocks(model):
    return [l for l in model.layers if isinstance(l, nfl.NFBlock)]


def test_remat_auto_is_saved_as_auto_and_resolved_when_traced(
        tmp_path, fake_gpu, remat_calls):
    fake_gpu(False)
    model = _tiny()
    assert {b.remat for b in _blocks(model)} == {"auto"}
    assert {b.get_config()["remat"] for b in _blocks(model)} == {"auto"}
    path = tmp_path / "tiny.keras"
    model.save(path)

    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(
        "float32")
    fake_gpu(True)  # the same file, opened on a "GPU" machine
    loaded = keras.models.load_model(path, compile=False)
    assert {b.remat for b in _blocks(loaded)} == {"auto"}
    del remat_calls[:]
    out_gpu = keras.ops.convert_to_numpy(loaded(x, training=False))
    assert remat_calls == []  # no recomputation on an accelerator

    fake_gpu(False)  # on CPU, the same model recomputes its blocks
    out_cpu = keras.ops.convert_to_numpy(loaded(x, training=False))
    assert len(remat_calls) == len(_blocks(loaded))
    np.testing.assert_allclose(out_gpu, out_cpu, rtol=1e-5, atol=1e-5)


def test_forced_remat_is_kept_and_validated(fake_gpu):
    fake_gpu(True)
    assert {b.remat for b in _blocks(_tiny(remat=True))} == {True}
    assert nfl.resolve_remat(True) is True
    assert nfl.resolve_remat("auto") is False
    fake_gpu(False)
    assert nfl.resolve_remat("auto") is True
    assert nfl.resolve_remat(False) is False
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="remat"):
            _tiny(remat=bad)


def test_grouped_conv_mode_follows_the_devices_seen_now(fake_gpu):
    # Regression: the first answer was cached for the process, so a model
    # traced before the TPU was initialised kept the CPU choice.
    keras_nfnets.set_grouped_conv_mode("auto")
    fake_gpu(False)
    assert nfl.grouped_conv_mode() == "split"
    fake_gpu(True)
    assert nfl.grouped_conv_mode() == "native"
    fake_gpu(False)
    assert nfl.grouped_conv_mode() == "split"
    try:
        keras_nfnets.set_grouped_conv_mode("native")
        assert nfl.grouped_conv_mode() == "native"
    finally:
        keras_nfnets.set_grouped_conv_mode("auto")


def test_remat_and_grouped_conv_share_one_device_rule(fake_gpu):
    for on in (False, True):
        fake_gpu(on)
        assert nfl.on_accelerator() is on
        assert nfl.resolve_remat("auto") is (not on)
        assert (nfl.grouped_conv_mode() == "native") is on
    assert inspect.signature(builder.build_nfnet).parameters[
        "remat"].default == "auto"


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
