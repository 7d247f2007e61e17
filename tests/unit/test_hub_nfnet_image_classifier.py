"""keras_nfnets/hub/nfnet_image_classifier.py: KerasHub's classifier over
an NFNetBackbone, compiled with the family's recipe and AGC."""

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

import keras_nfnets  # noqa: E402
from keras_nfnets.hub import NFNetBackbone, NFNetImageClassifier  # noqa: E402
from hub_helpers import TINY  # noqa: E402


def _classifier(variant):
    backbone = NFNetBackbone(variant, overrides=TINY[variant],
                             image_shape=(32, 32, 3))
    return NFNetImageClassifier(backbone, num_classes=3)


def test_compile_defaults_to_the_nfnet_recipe_with_agc():
    classifier = _classifier("F0")
    assert isinstance(classifier, keras_hub.models.ImageClassifier)
    classifier.compile(run_eagerly=True)  # one tiny step: no tracing
    optimizer = classifier.optimizer
    assert isinstance(optimizer, keras_nfnets.AGC)
    assert isinstance(optimizer, keras_nfnets.NFNetSGD)
    assert optimizer.clipping == 0.01
    assert list(optimizer.exclude) == ["predictions/kernel"]
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(
        "float32")
    history = classifier.fit(x, np.array([0, 2]), batch_size=2, epochs=1,
                             shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_compile_follows_the_family_and_the_users_choice():
    classifier = _classifier("ResNet50")  # DeepMind trained it without AGC
    classifier.compile()
    assert not isinstance(classifier.optimizer, keras_nfnets.AGC)
    assert isinstance(classifier.optimizer, keras_nfnets.NFNetSGD)
    classifier.compile(optimizer=keras.optimizers.SGD(0.01),
                       agc_clipping=0.02)
    assert classifier.optimizer.clipping == 0.02
