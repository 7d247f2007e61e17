"""An NFNetBackbone as the `image_encoder` of KerasHub's dense tasks
(DeepLabV3 segmentation, RetinaNet detection), tiny configs: 2 training
steps on synthetic data move every encoder weight (each received a
gradient), and the task model round-trips through `.keras`.

The 2 steps run eagerly (`run_eagerly=True`): for models this small,
tracing the training step costs far more than running it twice."""

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

from hub_helpers import TINY  # noqa: E402
from keras_nfnets.hub import NFNetBackbone  # noqa: E402

SIZE = 64


def _encoder():
    return NFNetBackbone("F0", overrides=TINY["F0"],
                         image_shape=(SIZE, SIZE, 3))


def _fit_moves_every_encoder_weight(model, encoder, x, y):
    # DeepMind initialises each block's skip gain to zero, so at
    # initialisation no gradient reaches the residual branches by design;
    # a trained model's gains are not zero: set them so, to see every
    # weight connected.
    for v in encoder.trainable_variables:
        if v.path.endswith("skip_gain"):
            v.assign(keras.ops.ones_like(v))
    before = [keras.ops.convert_to_numpy(v) for v in
              encoder.trainable_variables]
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0)
    unchanged = [v.path for v, b in zip(encoder.trainable_variables, before)
                 if np.array_equal(keras.ops.convert_to_numpy(v), b)]
    assert not unchanged, (len(unchanged), unchanged)


def _round_trip(model, tmp_path, x):
    path = str(tmp_path / "task.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.backbone.image_encoder) is NFNetBackbone
    expected = keras.tree.map_structure(keras.ops.convert_to_numpy,
                                        model(x, training=False))
    actual = keras.tree.map_structure(keras.ops.convert_to_numpy,
                                      loaded(x, training=False))
    keras.tree.map_structure(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
        actual, expected)


def test_deeplabv3_with_an_nfnet_encoder(tmp_path):
    encoder = _encoder()
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P5", upsampling_size=8,
        dilation_rates=[1, 2])
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=backbone, num_classes=3)
    segmenter.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss="sparse_categorical_crossentropy",
                      run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, 3, (2, SIZE, SIZE, 1))
    _fit_moves_every_encoder_weight(segmenter, encoder, x, y)
    _round_trip(segmenter, tmp_path, x)


def test_retinanet_with_an_nfnet_encoder(tmp_path):
    """64 px is the smallest input at which the boxes match anchors (at
    32 px the loss gives the encoder no gradient)."""
    encoder = _encoder()
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=5, use_p5=False,
        image_shape=(SIZE, SIZE, 3))
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=2, bounding_box_format="yxyx",
        anchor_generator=keras_hub.layers.AnchorGenerator(
            bounding_box_format="yxyx", min_level=3, max_level=5,
            num_scales=1, aspect_ratios=[1.0], anchor_size=4),
        pre_logits_num_conv_layers=1)
    detector.compile(optimizer=keras.optimizers.SGD(0.01),
                     run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    y = {"boxes": np.array([[[8, 8, 40, 40]], [[16, 4, 60, 30]]], "float32"),
         "labels": np.array([[0], [1]], "int32")}
    _fit_moves_every_encoder_weight(detector, encoder, x, y)
    _round_trip(detector, tmp_path, x)
