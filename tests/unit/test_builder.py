"""The builder's NF-ResNet and NF-RegNet families (keras_nfnets/builder.py
through their constructors): DeepMind parity, layer names, arguments."""

import gc

import numpy as np
import pytest

import keras

import keras_nfnets
from keras_nfnets import variants

from conftest import deepmind_fixture, fixture_path, relative_error

# DeepMind's fixtures and the arguments they were made with (shared/README).
FAMILY_FIXTURES = {
    "nf_resnet50_w1": (keras_nfnets.NFResNet50, dict(width=1, drop_rate=0.0)),
    "nf_regnet_b0": (keras_nfnets.NFRegNetB0, dict()),
}


def fixture_model(fixture, **kwargs):
    constructor, extra = FAMILY_FIXTURES[fixture]
    args = dict(weights=str(fixture_path(f"{fixture}_haiku.npz")),
                classes=10, input_shape=(64, 64, 3),
                classifier_activation=None, include_preprocessing=False,
                **extra)
    args.update(kwargs)
    return constructor(**args)


@pytest.fixture(autouse=True)
def _free_models():
    yield
    keras.backend.clear_session()
    gc.collect()


@pytest.mark.parametrize("fixture", sorted(FAMILY_FIXTURES))
def test_family_reproduces_deepmind_logits_and_pool(fixture):
    ref = deepmind_fixture(f"{fixture}_reference.npz")
    model = fixture_model(fixture)
    both = keras.Model(model.input,
                       [model.output, model.get_layer("avg_pool").output])
    logits, pool = both.predict(ref["inputs"], verbose=0)
    assert relative_error(logits, ref["logits"]) < 1e-4
    assert relative_error(pool, ref["pool"]) < 1e-4


@pytest.mark.parametrize("fixture", sorted(FAMILY_FIXTURES))
def test_family_features_without_top(fixture):
    """include_top=False loads the checkpoint minus the classifier."""
    ref = deepmind_fixture(f"{fixture}_reference.npz")
    model = fixture_model(fixture, include_top=False, pooling="avg")
    pool = model.predict(ref["inputs"], verbose=0)
    assert pool.shape == ref["pool"].shape
    assert relative_error(pool, ref["pool"]) < 1e-4


def test_layer_names_follow_haiku_modules():
    model = keras_nfnets.NFResNet50(width=1, input_shape=(64, 64, 3),
                                    classes=10)
    names = [layer.name for layer in model.layers]
    assert names[1:4] == ["preprocessing", "initial_conv", "stem_pool"]
    assert "nf_res_block_15" in names and "final_conv" not in names
    block = model.get_layer("nf_res_block")
    assert sorted(block.named_sublayers()) == [
        "conv0", "conv1", "conv2", "conv_shortcut"]
    assert block.conv_shortcut.strides == (1, 1)  # stage 1 stride is 1
    assert model.get_layer("nf_res_block_3").conv_shortcut.strides == (2, 2)

    regnet = keras_nfnets.NFRegNetB0(input_shape=(64, 64, 3), classes=10)
    first = regnet.get_layer("nf_block")
    assert (first.width, first.groups) == (32, 4)  # expansion 1, groups of 8
    assert first.se.in_channels == first.width  # SE on the bottleneck
    assert regnet.get_layer("final_conv").filters == 1280 * 330 // 440
    assert not np.any(regnet.get_layer("linear").get_weights()[0])


def test_nf_resnet_se_variant():
    model = keras_nfnets.NFResNet50(width=1, use_se=True, classes=10,
                                    input_shape=(64, 64, 3))
    se = model.get_layer("nf_res_block").se
    assert (se.in_channels, se.hidden_channels) == (64, 16)
    # The plain checkpoint lacks the SE weights: the error names them.
    with pytest.raises(keras_nfnets.CheckpointError,
                       match="not a DeepMind checkpoint for this model.*modules where the model needs"):
        fixture_model("nf_resnet50_w1", use_se=True)


def test_parameter_counts():
    # NF-ResNet-50 has exactly ResNet-50's size plus gains (25,557,032 for
    # torchvision's ResNet-50); NF-RegNet-B0 as DeepMind's code builds it.
    counts = {}
    for fn in (keras_nfnets.NFResNet50, keras_nfnets.NFRegNetB0):
        counts[fn.__name__] = fn(input_shape=(64, 64, 3)).count_params()
        keras.backend.clear_session()
    assert counts == {"NFResNet50": 25_557_048, "NFRegNetB0": 8_595_372}


def test_keras_applications_arguments():
    model = keras_nfnets.NFRegNetB0(include_top=False, pooling="max",
                                    input_shape=(32, 48, 3))
    assert model.output_shape == (None, 960)
    assert model.name == "nf_regnet_b0"
    inp = keras.Input((32, 32, 3))
    model = keras_nfnets.NFResNet50(width=0.25, include_top=False,
                                    input_tensor=inp, name="tiny")
    assert model.output_shape == (None, 1, 1, 128) and model.name == "tiny"
    model = keras_nfnets.NFResNet(
        variants.NFResNetConfig(depth=(1, 1, 1, 1), width=0.25), classes=3,
        input_shape=(32, 32, 3), classifier_activation=None)
    assert model.output_shape == (None, 3)
    assert model.name == "nf_resnet_custom"


def test_family_argument_errors():
    with pytest.raises(ValueError, match="Unknown variant 'ResNet51'"):
        keras_nfnets.NFResNet("ResNet51")
    with pytest.raises(TypeError, match="widht"):
        keras_nfnets.NFResNet50(widht=1)
    with pytest.raises(ValueError, match="No ImageNet weights are available for 'nf_regnet_b0'"):
        keras_nfnets.NFRegNetB0(weights="imagenet")
