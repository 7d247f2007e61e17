"""`keras_nfnets.weights.load`: the one dispatcher, for every source, its
classifier options, its messages for "imagenet", and one walk / one check
per load."""

import hashlib
import pathlib

import keras
import numpy as np
import pytest

import keras_nfnets
from conftest import LoopbackServer, deepmind_fixture, fixture_path
from conftest import relative_error
from keras_nfnets import presets, variants
from keras_nfnets import weights as nf_weights
from keras_nfnets.weights import (CheckpointError, WrongVariantError,
                                  load_deepmind_checkpoint)
from keras_nfnets.weights.__main__ import save_deepmind_checkpoint

TINY = "nfnet_tiny_haiku.npz"
TINY_WIDTHS = dict(width=(32, 64, 96, 128), group_width=(16, 16, 16, 16),
                   train_imsize=32, test_imsize=40)


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


# ---------------------------------------------------------------------------
# DeepMind and timm files.

def _tiny40(classes=10, **kwargs):
    return keras_nfnets.NFNet(
        str(fixture_path("nfnet_tiny_config.json")), classes=classes,
        input_shape=(40, 40, 3), classifier_activation=None,
        include_preprocessing=False, **kwargs)


def test_one_load_walks_the_model_once_and_checks_each_tensor_once():
    model = _tiny40()
    stats = nf_weights.load_weights(model, fixture_path(TINY))
    params = load_deepmind_checkpoint(fixture_path(TINY))
    tensors = {f"{m}/{p}" for m, group in params.items() for p in group}
    assert stats.walks == 1
    assert set(stats.checks) == tensors
    assert set(stats.checks.values()) == {1}
    assert sorted(stats.assigned) == sorted(v.path for v in model.weights)
    reference = deepmind_fixture("nfnet_tiny_reference.npz")
    logits = model(reference["inputs"], training=False)
    assert relative_error(logits, reference["logits"]) < 1e-4


def test_deepmind_file_into_other_classes_skips_the_classifier():
    """Issue 32: a DeepMind file into a model with another number of
    classes crashed in `variable.assign`; "auto" keeps the model's own
    classifier, everything else is the file's."""
    keras.utils.set_random_seed(5)
    model = _tiny40(classes=3)
    own = {v.path: np.asarray(v).copy() for v in model.weights
           if v.path.startswith("linear/")}
    with pytest.raises(WrongVariantError, match=r"linear/w: checkpoint "
                                                r"\(256, 10\) vs model"):
        nf_weights.load_weights(model, fixture_path(TINY))
    stats = nf_weights.load_weights(model, fixture_path(TINY),
                                    skip_classifier="auto")
    assert stats.skipped == ["linear"]
    params = load_deepmind_checkpoint(fixture_path(TINY))
    np.testing.assert_array_equal(
        np.asarray(model.get_layer("stem_conv0").kernel),
        params["NFNet/~/stem_conv0"]["w"])
    for v in model.weights:
        if v.path in own:
            np.testing.assert_array_equal(np.asarray(v), own[v.path])


def test_unknown_file_and_bad_option_are_named(tmp_path):
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="neither a DeepMind"):
        nf_weights.load_weights(_tiny40(), other)
    with pytest.raises(ValueError, match="does not exist"):
        nf_weights.load_weights(_tiny40(), tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="skip_classifier must be"):
        nf_weights.load_weights(_tiny40(), fixture_path(TINY),
                                skip_classifier="yes")


def test_keras_weights_file_auto_skips_a_classifier_of_another_shape(
        tmp_path):
    source = _tiny(10, seed=1)
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    target = _tiny(5, seed=2)
    stats = nf_weights.load_weights(target, path, skip_classifier="auto")
    assert "linear" in stats.skipped
    np.testing.assert_array_equal(_values(target)["stem_conv0/kernel"],
                                  _values(source)["stem_conv0/kernel"])


# ---------------------------------------------------------------------------
# "imagenet": which file, and the messages when there is none.

@pytest.mark.parametrize("ctor", ["NFNetF7", "NFNetF0Plus", "NFNetF6Plus"])
def test_unpublished_variants_have_no_imagenet_weights(ctor):
    with pytest.raises(ValueError, match="No ImageNet weights are published"
                                         ".*DeepMind released F0-F6 only"):
        getattr(keras_nfnets, ctor)(weights="imagenet")


def test_imagenet_messages_name_the_publisher():
    with pytest.raises(ValueError, match="ECANFNetL3.*timm") as err:
        nf_weights.load_weights(None, "imagenet", variant="ECA-L3")
    assert "DeepMind" not in str(err.value)
    with pytest.raises(ValueError, match="No ImageNet weights are available"
                                         ".*NFNetF0.*ECANFNetL0"):
        keras_nfnets.NFResNet50(weights="imagenet")


def test_imagenet_argument_rules():
    with pytest.raises(ValueError, match="classes` should be 1000"):
        keras_nfnets.NFNetF0(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match="classifier_activation"):
        keras_nfnets.NFNetF0(weights="imagenet", classifier_activation="relu")


def test_imagenet_f0_file_into_a_three_class_f0(tmp_path, monkeypatch):
    """Issue 32: a correct 94-module F0 file into an F0 with 3 classes was
    refused ("94 modules where the model needs 95"). F0's table row with
    tiny widths (same block layout, so the same 94 modules)."""
    folder = tmp_path / "www"
    folder.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(variants.NFNET_VARIANTS, "F0", variants.NFNetConfig(
        depth=(1, 2, 6, 3), **TINY_WIDTHS))
    keras.utils.set_random_seed(2)
    source = keras_nfnets.NFNet("F0", classes=1000, input_shape=(40, 40, 3))
    params = save_deepmind_checkpoint(source, folder / "F0_haiku.npz")
    assert len(params) == 94
    monkeypatch.setenv(presets.ACCEPT_ENV, hashlib.sha256(
        (folder / "F0_haiku.npz").read_bytes()).hexdigest())
    server = LoopbackServer(folder)
    monkeypatch.setenv(presets.URL_ENVS["deepmind"], server.url)
    try:
        model = keras_nfnets.NFNet("F0", classes=3, input_shape=(40, 40, 3))
        stats = nf_weights.load_weights(model, "imagenet", variant="F0",
                                        skip_classifier="auto")
    finally:
        server.stop()
    assert stats.skipped == ["linear"] and stats.walks == 1
    assert pathlib.Path(stats.path).name == "F0_haiku.npz"
    for a, b in zip(model.weights, source.weights):
        if not a.path.startswith("linear/"):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_imagenet_for_timm_rows_goes_through_huggingface_hub_unless_mirrored(
        monkeypatch):
    """Issue 29: timm's rows through `huggingface_hub` when it is installed
    and no mirror is set (the download itself: tests/integration/
    test_hub_presets_and_weights.py); DeepMind's rows never."""
    monkeypatch.delenv(presets.URL_ENVS["timm"], raising=False)
    eca, f0 = presets.PRESETS["ECA-L0"], presets.PRESETS["F0"]
    assert eca["path"] == f"{eca['hub_id']}/resolve/{eca['revision']}/" \
        "model.safetensors"
    installed = nf_weights.download.hf_available()
    assert nf_weights.load.uses_hugging_face(eca) is installed
    assert nf_weights.load.uses_hugging_face(f0) is False
    monkeypatch.setenv(presets.URL_ENVS["timm"], "http://127.0.0.1:9/")
    assert nf_weights.load.uses_hugging_face(eca) is False
