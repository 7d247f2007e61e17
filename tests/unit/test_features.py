"""`feature_extractor=True`: the stride-keyed feature maps "P1".."P5" of
every family, their numbers against DeepMind's reference, `weights=
"imagenet"`, and a head trained on top (gradients reach the backbone)."""

import gc
import re
import shutil

import numpy as np
import pytest

import keras

import keras_nfnets
from keras_nfnets import convert, pretrained, variants

from conftest import LoopbackServer
from conftest import REPO, deepmind_fixture, fixture_path, relative_error

STRIDES = {"P1": 2, "P2": 4, "P3": 8, "P4": 16, "P5": 32}


@pytest.fixture(autouse=True)
def _free_models():
    yield
    keras.backend.clear_session()
    gc.collect()


def _run(model, x):
    """The model's outputs (a dict of arrays) in inference mode, eagerly."""
    out = model(np.asarray(x, "float32"), training=False)
    return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}


def _l_family():
    ctor = getattr(keras_nfnets, "NFNetL0", None)
    if ctor is None:
        pytest.skip("the L-family (NFNetL0) is not in this build yet")
    return ctor


# (constructor, its config for pyramid_channels, extra arguments)
FAMILIES = {
    "F0": lambda: (keras_nfnets.NFNetF0, variants.get_config("F0")),
    "ResNet50": lambda: (keras_nfnets.NFResNet50,
                         variants.NF_RESNET_VARIANTS["ResNet50"]),
    "B0": lambda: (keras_nfnets.NFRegNetB0,
                   variants.NF_REGNET_VARIANTS["B0"]),
    "L0": lambda: (_l_family(), None),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_feature_shapes_and_strides_at_two_input_sizes(family):
    ctor, config = FAMILIES[family]()
    model = ctor(weights=None, feature_extractor=True)
    assert sorted(model.output) == list(STRIDES)
    channels = {k: v.shape[-1] for k, v in model.output.items()}
    if config is not None:
        assert channels == keras_nfnets.pyramid_channels(config)
        # The constructor's docstring names the same channel counts.
        for key, ch in channels.items():
            assert f"`{key}`: {ch}" in ctor.__doc__
    for h, w in ((64, 64), (96, 64)):
        maps = model(np.zeros((1, h, w, 3), "float32"), training=False)
        for key, stride in STRIDES.items():
            assert tuple(maps[key].shape) == (
                1, -(-h // stride), -(-w // stride), channels[key]), key


def test_f0_pyramid_is_the_classifier_models_layers():
    """P1 after the stem's stride-2 part, P2..P4 after each stage, P5 after
    final_conv + final_act: the same layers as the classifier model."""
    assert keras_nfnets.pyramid_channels("F0") == {
        "P1": 64, "P2": 256, "P3": 512, "P4": 1536, "P5": 3072}
    model = keras_nfnets.NFNetF0(weights=None, feature_extractor=True)
    # F0 depths (1, 2, 6, 3): the last blocks of stages 1-3 are 0, 2, 8.
    taps = {"P1": "stem_act2", "P2": "nf_block", "P3": "nf_block_2",
            "P4": "nf_block_8", "P5": "final_act"}
    for key, name in taps.items():
        assert model.output[key] is model.get_layer(name).output, key


FIXTURES = {
    "nfnet_tiny": (keras_nfnets.NFNet, dict(
        config=None, input_shape=(40, 40, 3))),
    "nf_resnet50_w1": (keras_nfnets.NFResNet50, dict(
        width=1, drop_rate=0.0, input_shape=(64, 64, 3))),
    "nf_regnet_b0": (keras_nfnets.NFRegNetB0, dict(input_shape=(64, 64, 3))),
}


def fixture_backbone(fixture, **kwargs):
    ctor, extra = FIXTURES[fixture]
    extra = dict(extra)
    if "config" in extra:
        extra["config"] = str(fixture_path("nfnet_tiny_config.json"))
    args = dict(weights=str(fixture_path(f"{fixture}_haiku.npz")),
                include_preprocessing=False, **extra)
    args.update(kwargs)
    return ctor(**args)


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_p5_pools_to_deepminds_features(fixture):
    """The backbone loads a DeepMind checkpoint without its classifier; the
    global average of P5 is DeepMind's pooled feature vector."""
    ref = deepmind_fixture(f"{fixture}_reference.npz")
    model = fixture_backbone(fixture, feature_extractor=True)
    maps = _run(model, ref["inputs"])
    assert relative_error(maps["P5"].mean(axis=(1, 2)), ref["pool"]) < 1e-4
    size = ref["inputs"].shape[1]
    for key, stride in STRIDES.items():
        assert maps[key].shape[1] == -(-size // stride)


def test_feature_extractor_argument_rules():
    with pytest.raises(ValueError, match="pooling.*feature_extractor"):
        keras_nfnets.NFRegNetB0(feature_extractor=True, pooling="avg")
    # The classifier arguments do not apply: no `linear` layer is built.
    model = keras_nfnets.NFRegNetB0(feature_extractor=True, classes=7)
    with pytest.raises(ValueError):
        model.get_layer("linear")
    assert model.input_shape == (None, None, None, 3)


def test_feature_model_saves_and_loads(tmp_path):
    model = fixture_backbone("nfnet_tiny", feature_extractor=True,
                             input_shape=(None, None, 3))
    x = np.random.default_rng(0).normal(size=(2, 48, 64, 3))
    expected = _run(model, x)
    model.save(tmp_path / "backbone.keras")
    again = keras.saving.load_model(tmp_path / "backbone.keras")
    got = _run(again, x)
    for key in STRIDES:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)


# -- weights="imagenet": the public one-liner against a loopback server ----

_Server = LoopbackServer


def test_imagenet_weights_with_feature_extractor(tmp_path, monkeypatch):
    """NFNetF0(weights="imagenet", feature_extractor=True) with F0's table
    entry shrunk to tiny widths, served over HTTP: the maps are those of
    the checkpoint's classifier model, at any input size."""
    folder = tmp_path / "www"
    folder.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    tiny_f0 = variants.NFNetConfig(
        depth=(1, 2, 6, 3), width=(32, 64, 96, 128),
        group_width=(16, 16, 16, 16), train_imsize=32, test_imsize=40)
    monkeypatch.setitem(variants.NFNET_VARIANTS, "F0", tiny_f0)
    keras.utils.set_random_seed(0)
    source = keras_nfnets.NFNet(config=tiny_f0, input_shape=(None, None, 3))
    for v in source.weights:  # every path matters (skip gains are 0)
        if v.path.endswith("skip_gain"):
            v.assign(0.5)
    convert.save_deepmind_checkpoint(source, folder / "F0_haiku.npz")
    # Not DeepMind's published F0 (its md5 is checked): accepted
    # deliberately by its sha256, as a user would.
    monkeypatch.setenv(pretrained.ACCEPT_ENV,
                       pretrained.sha256(folder / "F0_haiku.npz"))
    server = _Server(folder)
    monkeypatch.setenv(pretrained.URL_ENV, server.url)
    try:
        model = keras_nfnets.NFNetF0(weights="imagenet",
                                     feature_extractor=True)
    finally:
        server.stop()
    taps = keras.Model(source.input, {
        k: source.get_layer(name).output for k, name in (
            ("P1", "stem_act2"), ("P2", "nf_block"), ("P3", "nf_block_2"),
            ("P4", "nf_block_8"), ("P5", "final_act"))})
    x = np.random.default_rng(1).uniform(0, 255, (2, 48, 80, 3))
    expected = _run(taps, x)
    got = _run(model, x)
    for key in STRIDES:
        assert relative_error(got[key], expected[key]) < 1e-5, key


# -- a head on top: the README's "Backbone" example ---------------------------

def readme_backbone_code():
    """The README's Backbone example, with its `backbone = ...` line."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Backbone", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert "backbone = keras_nfnets.NFNetF0(" in code
    return code


def test_readme_fpn_head_trains_and_gradients_reach_the_backbone():
    code = readme_backbone_code()
    # The README's backbone line builds NFNet-F0 with ImageNet weights; the
    # test runs the same code on the tiny DeepMind checkpoint.
    code = re.sub(r"backbone = keras_nfnets\.NFNetF0\(.*?\)\n",
                  "backbone = tiny_backbone()\n", code, flags=re.S)
    scope = {"tiny_backbone": lambda: fixture_backbone(
        "nfnet_tiny", feature_extractor=True, input_shape=(None, None, 3),
        include_preprocessing=True)}
    exec(code, scope)  # pylint: disable=exec-used
    model, backbone = scope["model"], scope["backbone"]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    assert tuple(model(x).shape) == (4, 64, 64, 5)
    y = rng.integers(0, 5, (4, 64, 64)).astype("int32")
    before = [np.array(v) for v in backbone.trainable_variables]
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    losses = [float(model.train_on_batch(x, y)) for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    # Plain SGD: a variable moves exactly when its gradient is non-zero.
    # Every backbone variable moved, from the stem to the last block.
    unchanged = [v.path for v, b in zip(backbone.trainable_variables, before)
                 if np.array_equal(np.array(v), b)]
    assert not unchanged, unchanged
    assert len(before) == len(backbone.trainable_variables) > 50


def test_docs_channel_table_is_pyramid_channels():
    text = (REPO / "docs" / "models.md").read_text()
    section = text.split("## Feature maps", 1)[1].split("\n## ", 1)[0]
    rows = {r.split("|")[1].strip(): [int(c) for c in r.split("|")[2:7]]
            for r in section.splitlines()
            if r.startswith("| NF")}
    configs = {"NFNet-F0 ... F7": "F0", "NFNet-F0+ ... F7+": "F7+",
               "NF-ResNet-50 ... 600": variants.NF_RESNET_VARIANTS["ResNet600"],
               "NF-RegNet-B0": variants.NF_REGNET_VARIANTS["B0"]}
    assert sorted(rows) == sorted(configs)
    for row, config in configs.items():
        assert rows[row] == list(
            keras_nfnets.pyramid_channels(config).values()), row
