"""`weights.load_weights` with Keras weight files, and fine-tuning loads."""

import keras
import numpy as np
import pytest

import keras_nfnets
from conftest import fixture_path
from keras_nfnets import weights as nf_weights


def _tiny(classes, seed, include_top=True):
    keras.utils.set_random_seed(seed)
    return keras_nfnets.NFNet(
        str(fixture_path("nfnet_tiny_config.json")), classes=classes,
        include_top=include_top, input_shape=(32, 32, 3), weights=None,
        classifier_activation=None)


def _values(model):
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


def test_skip_layers_applies_to_keras_weights_files(tmp_path):
    # Regression: skip_layers was ignored for .weights.h5 files, so a
    # classifier with another number of classes failed to load.
    source = _tiny(10, seed=1)
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    target = _tiny(5, seed=2)
    own_linear = _values(target)
    nf_weights.load_weights(target, path, skip_layers=("linear",))
    src, got = _values(source), _values(target)
    for name, value in got.items():
        if name.startswith("linear/"):
            np.testing.assert_array_equal(value, own_linear[name])
        else:
            np.testing.assert_array_equal(value, src[name])
    # The hook is restored: a plain load of a matching file still works.
    assert "load_own_variables" not in vars(target.get_layer("linear"))
    other = _tiny(10, seed=3)
    nf_weights.load_weights(other, path)
    np.testing.assert_array_equal(_values(other)["linear/kernel"],
                                  src["linear/kernel"])


def test_skip_layers_does_not_hide_other_mismatches(tmp_path):
    source = _tiny(10, seed=1)
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    with pytest.raises(ValueError):
        nf_weights.load_weights(_tiny(5, seed=2), path,
                                skip_layers=("nf_block",))


def test_constructor_loads_keras_weights_without_top(tmp_path):
    source = _tiny(10, seed=1)
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    keras.utils.set_random_seed(4)
    headless = keras_nfnets.NFNet(
        str(fixture_path("nfnet_tiny_config.json")), include_top=False,
        input_shape=(32, 32, 3), weights=str(path))
    src = _values(source)
    for name, value in _values(headless).items():
        np.testing.assert_array_equal(value, src[name])
