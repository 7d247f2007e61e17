"""The builder and the Keras Applications constructors: DeepMind parity,
published parameter counts, and the behaviours Keras tests for its own
applications."""

import gc
import json

import numpy as np
import pytest

import keras

import keras_nfnets
from keras_nfnets import variants

from conftest import deepmind_fixture, fixture_path, relative_error


def tiny_model(**kwargs):
    args = dict(config=str(fixture_path("nfnet_tiny_config.json")),
                classes=10, input_shape=(40, 40, 3),
                classifier_activation=None, include_preprocessing=False)
    args.update(kwargs)
    return keras_nfnets.NFNet(**args)


def test_tiny_nfnet_reproduces_deepmind_logits_and_pool():
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    model = tiny_model(weights=str(fixture_path("nfnet_tiny_haiku.npz")))
    logits = model.predict(ref["inputs"], verbose=0)
    assert relative_error(logits, ref["logits"]) < 1e-4
    pool = keras.Model(model.input, model.get_layer("avg_pool").output)
    assert relative_error(pool.predict(ref["inputs"], verbose=0),
                          ref["pool"]) < 1e-4


def test_config_dict_and_config_class_are_equivalent():
    with open(fixture_path("nfnet_tiny_config.json")) as f:
        cfg = json.load(f)
    a = tiny_model(config=cfg)
    b = tiny_model(config=variants.NFNetConfig.from_dict(cfg))
    assert a.count_params() == b.count_params()


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="unknown key"):
        keras_nfnets.NFNet(config={"width": [8], "depth": [1], "widht": 3})
    with pytest.raises(ValueError, match="'depth' has 3 entries"):
        keras_nfnets.NFNet(config={"width": [64, 128], "depth": [1, 1, 1]})
    with pytest.raises(ValueError, match="Unknown NFNet variant 'F9'"):
        keras_nfnets.NFNet(config="F9")


# DeepMind's published table, in millions (paper, Table 2 / README).
PUBLISHED_PARAMS = {"F0": 71.5, "F1": 132.6, "F2": 193.8, "F3": 254.9,
                    "F4": 316.1, "F5": 377.2, "F6": 438.4}


@pytest.mark.parametrize("variant", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_deepmind(variant):
    """Built (weights created) but never run; deep variants also check that
    the functional graph builds without RecursionError."""
    model = keras_nfnets.NFNet(variant)
    count = model.count_params() / 1e6
    assert abs(count - PUBLISHED_PARAMS[variant]) <= 0.05, count
    del model
    gc.collect()


def test_f7_and_plus_variants_build():
    cfg = variants.get_config("F7+")
    assert cfg.width == (384, 768, 2048, 2048) and cfg.test_imsize == 608
    model = keras_nfnets.NFNetF7(input_shape=(64, 64, 3))
    assert len([l for l in model.layers if "nf_block" in l.name]) == 96
    del model
    gc.collect()



def test_constructors_have_docstrings_and_defaults():
    for v in [v for v in variants.NFNET_VARIANTS if v.startswith("F")]:
        fn = getattr(keras_nfnets, "NFNet" + v.replace("+", "Plus"))
        assert fn.__name__ == "NFNet" + v.replace("+", "Plus")
        assert "include_top" in fn.__doc__ and "Example" in fn.__doc__


def test_default_input_size_is_test_resolution():
    model = keras_nfnets.NFNetF0()
    assert model.input_shape == (None, 256, 256, 3)
    assert model.output_shape == (None, 1000)
    assert model.name == "nfnet_f0"
    del model
    gc.collect()


@pytest.mark.parametrize("pooling,rank", [(None, 4), ("avg", 2), ("max", 2)])
def test_include_top_false_pooling(pooling, rank):
    model = tiny_model(include_top=False, pooling=pooling, input_shape=None)
    assert model.input_shape == (None, None, None, 3)
    y = model(np.zeros((1, 64, 48, 3), "float32"))
    assert len(y.shape) == rank and y.shape[-1] == 256
    assert "linear" not in [l.name for l in model.layers]


@pytest.mark.parametrize("channels", [1, 4])
def test_other_channel_counts_without_weights(channels):
    model = tiny_model(input_shape=(32, 32, channels),
                       include_preprocessing=True)
    assert model(np.full((2, 32, 32, channels), 128.0, "float32")).shape == (2, 10)


def test_input_tensor():
    inp = keras.Input(shape=(48, 48, 3))
    model = tiny_model(input_tensor=inp, input_shape=None)
    assert model.input_shape == (None, 48, 48, 3)
    assert model.inputs[0] is inp


def test_classifier_activation():
    soft = tiny_model(classifier_activation="softmax")
    y = soft.predict(np.random.rand(2, 40, 40, 3).astype("float32"), verbose=0)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
    assert np.all(y >= 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`weights` argument"):
        tiny_model(weights="/no/such/file.h5")
    with pytest.raises(ValueError, match="`pooling`"):
        tiny_model(include_top=False, pooling="mean")
    with pytest.raises(ValueError, match="input_shape"):
        tiny_model(input_shape=(40, 40))
    with pytest.raises(ValueError, match="classes"):
        keras_nfnets.NFNetF0(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match="classifier_activation"):
        keras_nfnets.NFNetF0(weights="imagenet", classifier_activation="relu")
    with pytest.raises(ValueError, match="No ImageNet weights"):
        keras_nfnets.NFNetF7(weights="imagenet")
    with pytest.raises(ValueError, match="No ImageNet weights"):
        keras_nfnets.NFNetF0Plus(weights="imagenet")


def test_preprocessing_normalises_0_255_input():
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    weights = str(fixture_path("nfnet_tiny_haiku.npz"))
    raw = tiny_model(weights=weights)
    pre = tiny_model(weights=weights, include_preprocessing=True)
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    images = (ref["inputs"] * std + mean).astype("float32")
    np.testing.assert_allclose(pre.predict(images, verbose=0),
                               raw.predict(ref["inputs"], verbose=0),
                               rtol=1e-4, atol=1e-5)


def test_keras_save_load_roundtrip(tmp_path):
    model = tiny_model(weights=str(fixture_path("nfnet_tiny_haiku.npz")),
                       stochdepth_rate=0.2)
    x = np.random.default_rng(0).normal(size=(2, 40, 40, 3)).astype("float32")
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is keras_nfnets.NFNetModel
    np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                  model.predict(x, verbose=0))
    # Keras weights file as `weights=`
    wpath = tmp_path / "tiny.weights.h5"
    model.save_weights(wpath)
    again = tiny_model(weights=str(wpath), stochdepth_rate=0.2)
    np.testing.assert_array_equal(again.predict(x, verbose=0),
                                  model.predict(x, verbose=0))


def test_dropout_and_stochastic_depth_only_in_training():
    model = tiny_model(weights=str(fixture_path("nfnet_tiny_haiku.npz")),
                       drop_rate=0.5, stochdepth_rate=0.5, seed=1)
    x = np.random.default_rng(0).normal(size=(16, 40, 40, 3)).astype("float32")
    a = keras.ops.convert_to_numpy(model(x, training=False))
    b = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_array_equal(a, b)
    t1 = keras.ops.convert_to_numpy(model(x, training=True))
    t2 = keras.ops.convert_to_numpy(model(x, training=True))
    assert not np.allclose(t1, a) and not np.allclose(t1, t2)
    # Per example: with only stochastic depth on, some examples differ from
    # inference and others don't depend on it being one draw per batch.
    sd_only = tiny_model(weights=str(fixture_path("nfnet_tiny_haiku.npz")),
                         drop_rate=0.0, stochdepth_rate=0.9, seed=2)
    inf = keras.ops.convert_to_numpy(sd_only(x, training=False))
    tr = keras.ops.convert_to_numpy(sd_only(x, training=True))
    same = np.isclose(inf, tr, atol=1e-5).all(axis=1)
    assert not same.all()
