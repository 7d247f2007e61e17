"""Fine-tuning helpers (keras_nfnets.finetune, keras_nfnets.optim.layer_decay):
freezing by stage and layer-wise learning-rate decay change exactly the
intended variables' updates, checked against a manual SGD step (with AGC
around the decay too); a `.keras` round trip keeps the frozen stages and
the multipliers."""

import re

import keras
import numpy as np
import pytest

import keras_nfnets
from keras_nfnets.optim import clip_gradient
from training_helpers import TINY_CONFIG
from training_helpers import tiny_classifier as _model

LR = 0.5


def _batch():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(4, 32, 32, 3)).astype("float32"),
            np.array([0, 1, 2, 3]))


def _grads(model, x, y):
    """{path: dLoss/dW} of every variable (frozen or not)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    variables = [v for layer in model.layers for v in layer.weights]
    grads = tape.gradient(loss, [v.value for v in variables])
    return {v.path: g.numpy() for v, g in zip(variables, grads)}


def _hand_depth(path):
    """TINY_CONFIG by hand: stem 0, block i at i + 1, then 5."""
    if path.startswith("stem_conv"):
        return 0
    block = re.match(r"nf_block(?:_(\d+))?/", path)
    return int(block.group(1) or 0) + 1 if block else 5


def test_freeze_stages_changes_only_the_other_stages():
    model = _model()
    frozen = keras_nfnets.freeze_stages(model, ["stem", "stage1"])
    assert frozen == ["stem_conv0", "stem_conv1", "stem_conv2",
                      "stem_conv3", "nf_block"]
    x, y = _batch()
    before = {v.path: v.numpy() for v in model.weights}
    grads = _grads(model, x, y)
    model.compile(keras.optimizers.SGD(LR),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), agc_clipping=None)
    model.train_on_batch(x, y)
    moved = 0
    for v in model.weights:
        w0 = before[v.path]
        if v.path.startswith(("stem_conv", "nf_block/")):
            np.testing.assert_array_equal(v.numpy(), w0, err_msg=v.path)
        else:
            np.testing.assert_allclose(v.numpy(), w0 - LR * grads[v.path],
                                       rtol=1e-5, atol=1e-7, err_msg=v.path)
            moved += 1
    assert moved == len(model.trainable_variables) > 0
    keras_nfnets.unfreeze_stages(model, "stage1")
    assert all(v.trainable for v in model.get_layer("nf_block").weights)
    assert not any(v.trainable for v in model.get_layer("stem_conv0").weights)


def test_layer_decay_with_agc_scales_each_variable_by_depth(tmp_path):
    model = _model()
    keras_nfnets.freeze_stages(model, "stem")
    decay = 0.5
    opt = keras_nfnets.LayerDecay(keras.optimizers.SGD(LR), model,
                                  decay=decay)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), agc_clipping=0.01)
    assert isinstance(model.optimizer, keras_nfnets.AGC)
    assert isinstance(model.optimizer, keras_nfnets.LayerDecay)
    x, y = _batch()
    before = {v.path: v.numpy() for v in model.weights}
    grads = _grads(model, x, y)
    model.train_on_batch(x, y)
    scales = set()
    for v in model.weights:
        w0, g = before[v.path], grads[v.path]
        if v.path.startswith("stem_conv"):
            np.testing.assert_array_equal(v.numpy(), w0, err_msg=v.path)
            continue
        if v.path != "linear/kernel":  # AGC's default exclusion
            g = np.asarray(clip_gradient(g, w0, 0.01, 1e-3))
        scale = decay ** (5 - _hand_depth(v.path))
        scales.add(scale)
        np.testing.assert_allclose(v.numpy(), w0 - LR * scale * g,
                                   rtol=1e-4, atol=1e-7, err_msg=v.path)
        # ... and not at a neighbouring depth's rate (x2 or x0.5): the step
        # taken, projected on the expected one, is 1 of it, whatever the
        # size of the weights.
        expected = -LR * scale * g
        if np.abs(expected).max() > 1e-5:
            taken = (v.numpy() - w0).ravel().astype("float64")
            expected = expected.ravel().astype("float64")
            ratio = taken @ expected / (expected @ expected)
            assert abs(ratio - 1.0) < 0.1, (v.path, ratio)
    assert scales == {1.0, 0.5, 0.25, 0.125, 0.0625}

    path = tmp_path / "finetune.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, keras_nfnets.LayerDecay)
    assert isinstance(loaded.optimizer, keras_nfnets.AGC)
    assert loaded.optimizer.lr_multipliers == model.optimizer.lr_multipliers
    assert loaded.optimizer.decay == decay
    assert ([v.path for v in loaded.trainable_variables]
            == [v.path for v in model.trainable_variables])
    # The loaded optimizer takes the same next step.
    loaded.train_on_batch(x, y)
    model.train_on_batch(x, y)
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5,
                                   atol=1e-7, err_msg=a.path)


def test_stages_of_a_backbone_inside_a_user_model():
    backbone = keras_nfnets.NFNet(
        dict(TINY_CONFIG), include_top=False, pooling="avg",
        input_shape=(32, 32, 3), include_preprocessing=False)
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(5, name="head")(backbone(inputs))
    model = keras.Model(inputs, outputs)
    assert keras_nfnets.finetune.stage_names(model) == [
        "stem", "stage1", "stage2", "stage3", "stage4", "head"]
    keras_nfnets.freeze_stages(model, ["stem", "stage1", "stage2",
                                       "stage3", "stage4"])
    assert [v.path for v in model.trainable_variables] == [
        "head/kernel", "head/bias"]


def test_bad_arguments_are_refused():
    model = _model()
    with pytest.raises(ValueError, match=r"Unknown stage.*stage9.*stage4"):
        keras_nfnets.freeze_stages(model, ["stage9"])
    with pytest.raises(ValueError, match="decay=1.5"):
        keras_nfnets.LayerDecay(keras.optimizers.SGD(), model, decay=1.5)
    with pytest.raises(ValueError, match="either `model`"):
        keras_nfnets.LayerDecay(keras.optimizers.SGD())
    with pytest.raises(ValueError, match="already decays"):
        keras_nfnets.LayerDecay(keras_nfnets.LayerDecay(
            keras.optimizers.SGD(), multipliers={}), multipliers={})
