"""keras_nfnets/hub/nfnet_backbone.py: KerasHub-style backbone checks for
every family (tiny configs) at two input sizes."""

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

import keras_nfnets  # noqa: E402
from keras_nfnets.hub import NFNetBackbone  # noqa: E402
from keras_nfnets.hub.nfnet_backbone import resolve_config  # noqa: E402
from hub_helpers import TINY  # noqa: E402

SIZES = (32, 64)


@pytest.mark.parametrize("variant", sorted(TINY))
def test_backbone_pyramid_at_two_sizes_and_config_round_trip(variant):
    overrides = TINY[variant]
    backbone = NFNetBackbone(variant, overrides=overrides,
                             image_shape=(None, None, 3))
    assert isinstance(backbone, keras_hub.models.FeaturePyramidBackbone)
    assert list(backbone.pyramid_outputs) == ["P1", "P2", "P3", "P4", "P5"]
    channels = keras_nfnets.pyramid_channels(
        resolve_config(variant, overrides))
    pyramid = keras.Model(backbone.input, backbone.pyramid_outputs)
    rng = np.random.default_rng(0)
    for size in SIZES:
        x = rng.uniform(0, 255, (1, size, size, 3)).astype("float32")
        maps = pyramid(x)
        for level in range(1, 6):
            assert tuple(maps[f"P{level}"].shape) == (
                1, size // 2 ** level, size // 2 ** level,
                channels[f"P{level}"]), (variant, size, level)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(backbone(x)),
            keras.ops.convert_to_numpy(maps["P5"]))

    config = backbone.get_config()
    clone = NFNetBackbone.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(backbone.get_weights())
    x = rng.uniform(0, 255, (1, SIZES[0], SIZES[0], 3)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)),
                                  keras.ops.convert_to_numpy(backbone(x)))


def test_backbone_channels_first_and_dtype():
    """data_format and dtype are arguments: the global settings are read,
    never left changed, and the numbers are the channels_last model's."""
    last = NFNetBackbone("F0", overrides=TINY["F0"], image_shape=(32, 32, 3))
    first = NFNetBackbone("F0", overrides=TINY["F0"],
                          image_shape=(3, 32, 32),
                          data_format="channels_first")
    first.set_weights(last.get_weights())
    assert first.data_format == "channels_first"
    assert tuple(first.pyramid_outputs["P2"].shape) == (None, 16, 8, 8)
    x = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3)).astype(
        "float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(np.moveaxis(x, -1, 1))),
        np.moveaxis(keras.ops.convert_to_numpy(last(x)), -1, 1),
        rtol=0, atol=1e-6)
    assert keras.config.image_data_format() == "channels_last"

    half = NFNetBackbone("F0", overrides=TINY["F0"], image_shape=(32, 32, 3),
                         dtype="bfloat16")
    assert half.get_layer("stem_conv0").dtype_policy.name == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("variant, overrides, match", [
    ("F99", None, "Unknown NFNet variant 'F99'"),
    ("F0", {"depht": (1, 1, 1, 1)}, r"Unknown override\(s\) \['depht'\]"),
    ("F0", {"depth": 3}, "Bad override"),
])
def test_backbone_refuses_bad_arguments(variant, overrides, match):
    with pytest.raises(ValueError, match=match):
        NFNetBackbone(variant, overrides=overrides)


def test_backbone_refuses_bad_image_shape_and_format():
    with pytest.raises(ValueError, match="image_shape"):
        NFNetBackbone("F0", overrides=TINY["F0"], image_shape=(32, 32))
    with pytest.raises(ValueError, match="data_format"):
        NFNetBackbone("F0", overrides=TINY["F0"], data_format="nhwc")
