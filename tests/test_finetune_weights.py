"""train.py --weights: remote (tf.io.gfile) files and .keras fine-tuning.

`ram://` is TensorFlow's in-memory file system: the same tf.io.gfile code
path as gs://, which cannot be reached from here."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver

import keras_nfnets
from conftest import fixture_path
from training import train


def _tiny(classes, seed):
    keras.utils.set_random_seed(seed)
    return keras_nfnets.NFNet(
        str(fixture_path("nfnet_tiny_config.json")), classes=classes,
        input_shape=(None, None, 3), weights=None,
        classifier_activation=None, name="nfnet")


def _check(tmp_path, **flags):
    if not train.FLAGS.is_parsed():
        train.FLAGS.mark_as_parsed()
    flags.setdefault("model_dir", str(tmp_path / "run"))
    with flagsaver.flagsaver(**flags):
        return train.check_flags()


def _to_ram(local, name):
    url = f"ram://keras_nfnets_test/{name}"
    tf.io.gfile.makedirs("ram://keras_nfnets_test")
    tf.io.gfile.copy(str(local), url, overwrite=True)
    return url


def test_remote_weights_are_checked_up_front(tmp_path):
    # Regression: --weights=gs://... passed the check and failed in open().
    with pytest.raises(train.UsageError, match="no such file"):
        _check(tmp_path, weights="ram://keras_nfnets_test/missing.keras")
    url = _to_ram(fixture_path("nfnet_tiny_haiku.npz"), "tiny_haiku.npz")
    _check(tmp_path, weights=url)  # exists: accepted


def test_remote_weights_file_is_loaded(tmp_path):
    source = _tiny(10, seed=1)
    local = tmp_path / "src.weights.h5"
    source.save_weights(local)
    url = _to_ram(local, "src.weights.h5")
    target = _tiny(5, seed=2)
    train.load_finetune_weights(target, url, "custom", num_classes=5)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(target.get_layer("stem_conv0").kernel),
        keras.ops.convert_to_numpy(source.get_layer("stem_conv0").kernel))


def test_keras_file_fine_tuning_reports_what_was_skipped(tmp_path, capsys):
    source = _tiny(10, seed=1)
    path = tmp_path / "src.keras"
    source.save(path)
    target = _tiny(5, seed=2)
    train.load_finetune_weights(target, str(path), "custom", num_classes=5)
    report = capsys.readouterr().out
    n = sum(1 for l in target.layers if l.get_weights())
    assert f"copied {n - 1} of {n} layers with weights" in report
    assert "skipped 1: linear (shapes [(256, 10), (10,)] in the file, " \
           "[(256, 5), (5,)] in the model)" in report
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(target.get_layer("nf_block").skip_gain),
        keras.ops.convert_to_numpy(source.get_layer("nf_block").skip_gain))


def test_keras_file_with_nothing_matching_is_an_error(tmp_path):
    other = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(3, name="dense")])
    path = tmp_path / "other.keras"
    other.save(path)
    with pytest.raises(train.UsageError,
                       match="no layer of the model matches"):
        train.load_finetune_weights(_tiny(5, seed=2), str(path), "custom",
                                    num_classes=5)
