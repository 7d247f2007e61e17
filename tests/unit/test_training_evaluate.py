"""`training.evaluate.tf_preprocess`: the tf.data form of a model's
`NFNetImagePreprocessing` gives the layer's own numbers (issue 27), so the
evaluation program scores what `preprocess_for_eval(images, model)`
gives."""

import numpy as np
import pytest
import tensorflow as tf

from keras_nfnets.preprocessing import NFNetImagePreprocessing
from training import evaluate

# Two non-square sizes (landscape, portrait) and a square one; small, as
# the procedures only differ in their arithmetic of sizes and offsets.
SHAPES = [(75, 100), (128, 85), (60, 60)]


def _png(shape, seed):
    image = np.random.default_rng(seed).integers(0, 256, shape + (3,),
                                                 "uint8")
    return tf.io.encode_png(image), image


@pytest.mark.parametrize("layer", [
    NFNetImagePreprocessing(48, mode="resize_crop"),
    NFNetImagePreprocessing(48, mode="resize_crop", crop_padding=0),
    NFNetImagePreprocessing(48, mode="crop_resize"),
    NFNetImagePreprocessing(48, mode="crop_resize", antialias=True),
    NFNetImagePreprocessing(48, mode="center", crop_pct=0.875),
    NFNetImagePreprocessing(60, mode="center", crop_pct=1.0,
                            mean=(1, 2, 3), std=(4, 5, 6))],
    ids=["resize_crop_32", "resize_crop_0", "crop_resize",
         "crop_resize_antialias", "center_0.875", "center_1.0_normalised"])
def test_tf_preprocess_is_the_layer(layer):
    fn = evaluate.tf_preprocess(layer)
    for seed, shape in enumerate(SHAPES):
        data, image = _png(shape, seed)
        got = fn(data).numpy()
        want = np.asarray(layer(image))
        assert got.shape == want.shape == (layer.size, layer.size, 3)
        np.testing.assert_allclose(got, want, atol=1e-3, err_msg=str(shape))
    # the config works as well as the layer (as a .keras file's model holds)
    data, image = _png(SHAPES[0], 0)
    np.testing.assert_array_equal(
        evaluate.tf_preprocess(layer.get_config())(data).numpy(),
        fn(data).numpy())


def test_tf_preprocess_in_a_dataset_map():
    """Shapes unknown until run time, as in tf.data."""
    layer = NFNetImagePreprocessing(40, mode="center", crop_pct=0.9)
    images = [_png(shape, i) for i, shape in enumerate(SHAPES)]
    ds = tf.data.Dataset.from_tensor_slices(
        [data.numpy() for data, _ in images]).map(
            evaluate.tf_preprocess(layer))
    for got, (_, image) in zip(ds, images):
        np.testing.assert_allclose(got.numpy(), np.asarray(layer(image)),
                                   atol=1e-3)
