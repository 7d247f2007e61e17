"""ImageNet utilities: class index, decode_predictions, preprocessing."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_nfnets
from conftest import fixture_path
from keras_nfnets import imagenet
from keras_nfnets.preprocessing import NFNetImagePreprocessing


def test_class_index_ships_with_the_package():
    index = imagenet.class_index()
    assert len(index) == 1000
    wnids = [index[str(i)][0] for i in range(1000)]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert index["0"] == ["n01440764", "tench"]
    assert index["999"] == ["n15075141", "toilet_tissue"]
    with open(imagenet.CLASS_INDEX_PATH) as f:
        assert json.load(f) == index


def test_decode_predictions():
    preds = np.full((2, 1000), 1e-4, "float32")
    preds[0, [1, 2, 281]] = [0.2, 0.1, 0.6]
    preds[1, 999] = 0.9
    decoded = imagenet.decode_predictions(preds, top=3)
    assert [d[:2] for d in decoded[0]] == [
        ("n02123045", "tabby"), ("n01443537", "goldfish"),
        ("n01484850", "great_white_shark")]
    assert decoded[0][0][2] == pytest.approx(0.6)
    assert decoded[1][0][:2] == ("n15075141", "toilet_tissue")
    assert keras_nfnets.decode_predictions is imagenet.decode_predictions
    with pytest.raises(ValueError, match=r"\(samples, 1000\)"):
        imagenet.decode_predictions(np.zeros((2, 10)))


def test_preprocess_input_matches_the_in_model_normalisation():
    config = str(fixture_path("nfnet_tiny_config.json"))
    kwargs = dict(config=config, classes=10, input_shape=(40, 40, 3),
                  classifier_activation=None, seed=0)
    inside = keras_nfnets.NFNet(include_preprocessing=True, **kwargs)
    outside = keras_nfnets.NFNet(include_preprocessing=False, **kwargs)
    outside.set_weights(inside.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 40, 40, 3))
    assert imagenet.preprocess_input(x) is x  # the model normalises
    np.testing.assert_allclose(
        np.asarray(outside(imagenet.preprocess_input(x, normalize=True),
                           training=False)),
        np.asarray(inside(x.astype("float32"), training=False)),
        rtol=1e-4, atol=1e-4)
    first = imagenet.preprocess_input(np.moveaxis(x, -1, 1), normalize=True,
                                      data_format="channels_first")
    np.testing.assert_allclose(
        np.moveaxis(np.asarray(first), 1, -1),
        imagenet.preprocess_input(x, normalize=True), rtol=1e-6)


def _deepmind_eval_crop(image, size):
    """DeepMind's `_decode_and_center_crop` (nfnets/dataset.py), on a
    decoded image: crop size/(size+32) of the short side, bicubic resize."""
    shape = tf.shape(image)
    crop = tf.cast((size / (size + 32)) *
                   tf.cast(tf.minimum(shape[0], shape[1]), tf.float32),
                   tf.int32)
    top = ((shape[0] - crop) + 1) // 2
    left = ((shape[1] - crop) + 1) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, crop, crop)
    return tf.image.resize(image, [size, size], tf.image.ResizeMethod.BICUBIC)


def _deepmind_resize_then_crop(image, size):
    """DeepMind's `_decode_and_resize_then_crop(..., crop_pct=32)`
    (nfnets/dataset.py, `eval_preproc='resize_crop_32'` for NFNets), on a
    decoded image: squash to (size + 32) squared, bicubic, centre crop."""
    image = tf.image.resize(image, [size + 32, size + 32],
                            tf.image.ResizeMethod.BICUBIC)
    offset = (32 + 1) // 2
    return tf.image.crop_to_bounding_box(image, offset, offset, size, size)


@pytest.mark.parametrize("shape", [(300, 300, 3), (375, 500, 3),
                                   (333, 241, 3)])
def test_eval_crop_matches_deepmind(shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype="uint8")
    ours = np.asarray(imagenet.preprocess_for_eval(image, "F0"))
    assert ours.shape == (256, 256, 3)
    np.testing.assert_allclose(
        ours, _deepmind_resize_then_crop(image, 256).numpy(), atol=1e-3)
    regnet = np.asarray(imagenet.preprocess_for_eval(image, "B1"))  # 256
    np.testing.assert_allclose(regnet, _deepmind_eval_crop(image, 256).numpy(),
                               atol=1e-3)
    batch = np.asarray(imagenet.center_crop_and_resize(image[None], 64))
    np.testing.assert_allclose(batch[0],
                               _deepmind_eval_crop(image, 64).numpy(),
                               atol=1e-3)


def test_eval_sizes_follow_the_variant_table():
    assert [imagenet.eval_image_size(f"F{n}") for n in range(7)] == [
        256, 320, 352, 416, 512, 544, 576]


def test_preprocess_for_eval_reads_the_models_preprocessing():
    """A model carrying `preprocessing` (a layer or its config, as a
    `.keras` file restores it) is preprocessed by it; a model with only a
    variant `config` by that variant's default; one with neither is
    refused by name."""
    image = np.random.default_rng(2).integers(0, 256, (120, 90, 3), "uint8")
    model = keras.Sequential([keras.layers.Identity()], name="plain")
    model.preprocessing = NFNetImagePreprocessing(48, mode="center",
                                                  crop_pct=0.9)
    expected = np.asarray(model.preprocessing(image))
    assert expected.shape == (48, 48, 3)
    np.testing.assert_array_equal(
        np.asarray(imagenet.preprocess_for_eval(image, model)), expected)
    model.preprocessing = model.preprocessing.get_config()
    np.testing.assert_array_equal(
        np.asarray(imagenet.preprocess_for_eval(image, model)), expected)
    assert imagenet.preprocess_for_eval(image, model, size=32).shape == (
        32, 32, 3)
    del model.preprocessing
    model.config = keras_nfnets.get_config("F1")
    np.testing.assert_array_equal(
        np.asarray(imagenet.preprocess_for_eval(image, model)),
        np.asarray(imagenet.preprocess_for_eval(image, "F1")))
    del model.config
    with pytest.raises(ValueError, match="carries no `preprocessing`"):
        imagenet.preprocess_for_eval(image, model)


# Issue 32 item 3: each refused with what was expected (main returned
# values up to 65535, a 256 x 256 image for size=0, or a 3-pixel-high
# "image" for a channels-first array).
@pytest.mark.parametrize("bad,size,match", [
    (np.full((50, 60, 3), 60000, "uint16"), None, "uint16"),
    (np.full((50, 60, 3), 0.5, "float32"), None, r"\[0, 1\]"),
    (np.zeros((50, 60, 3), "uint8"), 0, "positive int"),
    (np.zeros((3, 50, 60), "uint8"), None, "channels-first")])
def test_preprocess_for_eval_refuses_what_it_cannot_be_right_for(
        bad, size, match):
    with pytest.raises(ValueError, match=match):
        imagenet.preprocess_for_eval(bad, "F0", size=size)


# Issue 32 item 7: main raised from TensorFlow internals on each.
def test_preprocess_for_eval_grayscale_tiny_and_mixed_sizes():
    gray = np.random.default_rng(3).integers(0, 256, (50, 70), "uint8")
    out = np.asarray(imagenet.preprocess_for_eval(gray, "F0"))
    assert out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    tiny = np.asarray(imagenet.preprocess_for_eval(
        np.full((1, 1, 3), 200, "uint8"), "B0"))
    np.testing.assert_allclose(tiny, 200, atol=1e-3)
    mixed = imagenet.preprocess_for_eval(
        [np.zeros((40, 50, 3), "uint8"), np.zeros((90, 30, 3), "uint8")],
        "ECA-L0")
    assert tuple(mixed.shape) == (2, 288, 288, 3)
