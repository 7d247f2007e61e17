"""keras_nfnets/hub/nfnet_image_converter.py and
nfnet_image_classifier_preprocessor.py: the authors' evaluation
preprocessing as KerasHub's ImageConverter."""

import pathlib

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

import keras_nfnets  # noqa: E402
from keras_nfnets.hub import (NFNetImageClassifierPreprocessor,  # noqa: E402
                              NFNetImageConverter)

IMAGE = (pathlib.Path(__file__).parents[2] / "training" / "demo_data"
         / "test" / "bird" / "0034.jpg")


def _image():
    return keras.utils.img_to_array(keras.utils.load_img(IMAGE))


@pytest.mark.parametrize("variant", ["F0", "ECA-L0", "B0"])
def test_converter_is_the_variants_evaluation_preprocessing(variant):
    converter = NFNetImageConverter.for_variant(variant, size=24)
    reference = keras_nfnets.default_preprocessing(variant, size=24)
    assert isinstance(converter, keras_hub.layers.ImageConverter)
    assert converter.image_size == (24, 24)
    image = _image()[None]
    expected = keras.ops.convert_to_numpy(reference(image))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(converter(image)), expected)
    clone = NFNetImageConverter.from_config(converter.get_config())
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(clone(image)), expected)
    preprocessor = NFNetImageClassifierPreprocessor(converter)
    x, y = preprocessor(image, np.array([3]))[:2]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), expected)


def test_converter_refuses_bad_input():
    converter = NFNetImageConverter.for_variant("F0", size=24)
    with pytest.raises(ValueError, match="Multiply by 255"):
        converter(np.full((1, 30, 30, 3), 0.5, "float32"))
    with pytest.raises(ValueError, match="square"):
        NFNetImageConverter(image_size=(24, 32))
    with pytest.raises(AttributeError, match="construction"):
        converter.image_size = (32, 32)
