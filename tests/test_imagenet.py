"""ImageNet utilities: class index, decode_predictions, preprocessing."""

import json

import numpy as np
import pytest
import tensorflow as tf

import keras_nfnets
from conftest import fixture_path
from keras_nfnets import imagenet


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


@pytest.mark.parametrize("shape", [(300, 300, 3), (375, 500, 3),
                                   (333, 241, 3)])
def test_eval_crop_matches_deepmind(shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype="uint8")
    ours = np.asarray(imagenet.preprocess_for_eval(image, "F0"))
    assert ours.shape == (256, 256, 3)
    np.testing.assert_allclose(ours, _deepmind_eval_crop(image, 256).numpy(),
                               atol=1e-3)
    batch = np.asarray(imagenet.center_crop_and_resize(image[None], 64))
    np.testing.assert_allclose(batch[0],
                               _deepmind_eval_crop(image, 64).numpy(),
                               atol=1e-3)


def test_eval_sizes_follow_the_variant_table():
    assert [imagenet.eval_image_size(f"F{n}") for n in range(7)] == [
        256, 320, 352, 416, 512, 544, 576]
