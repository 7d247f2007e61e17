"""keras_nfnets/hub/nfnet_presets.py: one KerasHub preset per published
file of `keras_nfnets.presets.PRESETS`, cached as a preset directory."""

import os

import numpy as np
import pytest

pytest.importorskip("keras_hub")

import keras  # noqa: E402

from conftest import deepmind_fixture, fixture_path  # noqa: E402
from keras_nfnets import builder, presets, variants  # noqa: E402
from keras_nfnets.hub import (NFNetBackbone,  # noqa: E402
                              NFNetImageClassifier, nfnet_presets)


def test_one_preset_per_published_file_on_keras_hubs_pattern():
    names = {v["variant"]: k for k, v in
             nfnet_presets.backbone_presets.items()}
    assert set(names) == set(presets.PRESETS)
    assert names["F0"] == "nfnet_f0_imagenet"
    assert names["F6"] == "nfnet_f6_imagenet"
    assert names["ECA-L0"] == "eca_nfnet_l0_imagenet"
    assert names["L0"] == "nfnet_l0_imagenet"
    assert names["ResNet50-timm"] == "nf_resnet50_imagenet"
    assert names["B1-timm"] == "nf_regnet_b1_imagenet"
    meta = nfnet_presets.backbone_presets["nfnet_f0_imagenet"]["metadata"]
    row = presets.PRESETS["F0"]
    assert (meta["published_top1"], meta["license"], meta["file"],
            meta["image_size"]) == (row["top1"], row["license"], row["file"],
                                    row["test_size"])
    assert meta["source_url"] == ("https://storage.googleapis.com/dm-nfnets/"
                                  "F0_haiku.npz")
    for name, preset in nfnet_presets.backbone_presets.items():
        meta = preset["metadata"]
        assert meta["description"] and meta["license"], name
        assert 0 < meta["params"] < meta["classifier_params"], name


def test_preset_params_are_the_real_backbones_count():
    """KerasHub's `params` (the backbone's) from the table's count of the
    published model, without building it; checked on the smallest real
    backbone (NF-RegNet-B1, timm's count in the table)."""
    meta = nfnet_presets.backbone_presets["nf_regnet_b1_imagenet"]["metadata"]
    backbone = NFNetBackbone("B1-timm")
    assert backbone.count_params() == meta["params"]
    assert meta["classifier_params"] == presets.PRESETS["B1-timm"]["params"]


def test_resolve_uses_the_cache_and_passes_other_handles(tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    directory = nfnet_presets.preset_dir("eca_nfnet_l0_imagenet")
    assert directory == os.path.join(str(tmp_path), "models", "hub",
                                     "eca_nfnet_l0_imagenet")
    os.makedirs(directory)
    open(os.path.join(directory, "task.json"), "w").close()
    assert nfnet_presets.resolve("eca_nfnet_l0_imagenet") == directory
    for handle in ("hf://user/nfnet", "kaggle://user/nfnet/keras/x",
                   str(tmp_path)):
        assert nfnet_presets.resolve(handle) == handle


def test_unknown_preset_name_is_refused():
    with pytest.raises(ValueError, match="Unknown NFNet preset 'nfnet_f9'"):
        nfnet_presets.preset_variant("nfnet_f9")


def test_a_preset_built_from_the_original_file_computes_deepminds_outputs(
        tmp_path, monkeypatch):
    """`build_preset` (what `from_preset("nfnet_f0_imagenet")` runs on first
    use): the file through the one dispatcher, copied into the KerasHub
    classifier, saved as a preset. F0's row with the architecture and
    classifier of DeepMind's tiny fixture, whose reference outputs the
    loaded preset must compute."""
    monkeypatch.setitem(variants.NFNET_VARIANTS, "F0", variants.get_config(
        str(fixture_path("nfnet_tiny_config.json"))))
    monkeypatch.setattr(nfnet_presets, "IMAGENET_CLASSES", 10)
    directory = str(tmp_path / "nfnet_f0_imagenet")
    nfnet_presets.build_preset(
        "nfnet_f0_imagenet", directory,
        weights=str(fixture_path("nfnet_tiny_haiku.npz")))
    classifier = NFNetImageClassifier.from_preset(directory)
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    # The reference inputs are normalised; the backbone normalises itself.
    images = (ref["inputs"] * np.array(builder.IMAGENET_STD)
              + np.array(builder.IMAGENET_MEAN)).astype("float32")
    probs = keras.ops.convert_to_numpy(classifier(images))
    np.testing.assert_allclose(
        probs, keras.ops.convert_to_numpy(keras.ops.softmax(ref["logits"])),
        rtol=0, atol=1e-5)
