"""DeepMind's optimizer recipe: SGD_AGC steps against the reference, the
warmup-cosine schedule, the warmed-up EMA, serialization."""

import keras
import numpy as np
import pytest

import keras_nfnets
from keras_nfnets import compat
from conftest import (AGC_NAMES, agc_fixture_variables, deepmind_fixture,
                      relative_error)

def test_two_sgd_agc_steps_match_deepmind():
    ref = deepmind_fixture("agc_reference.npz")
    variables = agc_fixture_variables(ref)
    opt = keras_nfnets.AGC(
        keras_nfnets.NFNetSGD(0.1, momentum=0.9, nesterov=True,
                              weight_decay=2e-5),
        clipping=0.01, eps=1e-3, exclude=("linear/w",))
    grads = [ref["grad:" + n] for n in AGC_NAMES]
    for step in (1, 2):
        opt.apply_gradients(zip(grads, variables))
        for name, var in zip(AGC_NAMES, variables):
            err = relative_error(var.numpy(), ref[f"after_step{step}:{name}"])
            assert err < 1e-6, (step, name, err)
    assert int(opt.iterations.numpy()) == 2


def test_weight_decay_rule():
    opt = keras_nfnets.NFNetSGD(0.1)
    decayed = {n: opt.uses_weight_decay(v)
               for n, v in zip(AGC_NAMES, agc_fixture_variables(
                   deepmind_fixture("agc_reference.npz")))}
    assert decayed == {"conv/w": True, "conv/gain": False, "conv/bias": False,
                       "block/skip_gain": False, "se/w": True,
                       "zero_init/w": True, "linear/w": True,
                       "linear/b": False}


def test_keras_names_get_deepmind_weight_decay():
    model = keras_nfnets.NFNet(
        _tiny_config(), classes=10, input_shape=(32, 32, 3))
    opt = keras_nfnets.NFNetSGD(0.1)
    for v in model.trainable_variables:
        leaf = v.path.split("/")[-1]
        assert opt.uses_weight_decay(v) == (leaf == "kernel"), v.path


def _tiny_config():
    from conftest import fixture_path
    return str(fixture_path("nfnet_tiny_config.json"))


def test_warmup_cosine_schedule():
    lr = keras_nfnets.WarmupCosineDecay(0.4, warmup_steps=10, total_steps=110)
    values = [float(lr(t)) for t in (0, 5, 10, 60, 110, 200)]
    np.testing.assert_allclose(values, [0.0, 0.2, 0.4, 0.2, 0.0, 0.0],
                               atol=1e-7)
    again = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(lr))
    assert isinstance(again, keras_nfnets.WarmupCosineDecay)
    assert again.get_config() == lr.get_config()


def test_ema_is_deepmind_warmed_up_average():
    var = keras.Variable(np.array([1.0, 2.0], "float32"), name="w")
    opt = keras_nfnets.NFNetSGD(1.0, momentum=0.0, weight_decay=0.0,
                                use_ema=True, ema_momentum=0.5)
    ema = np.array([1.0, 2.0])  # starts at the initial weights
    value = np.array([1.0, 2.0])
    for t, g in enumerate([0.5, -1.0, 0.25]):
        opt.apply_gradients([(np.full(2, g, "float32"), var)])
        value = value - g
        decay = min(0.5, (1 + t) / (10 + t))
        ema = decay * ema + (1 - decay) * value
        np.testing.assert_allclose(
            compat.ema_averages(opt)[0].numpy(), ema, rtol=1e-6)


def test_nfnet_optimizer_recipe_and_serialization():
    opt = keras_nfnets.nfnet_optimizer(batch_size=1024, steps_per_epoch=100,
                                       epochs=10)
    assert isinstance(opt, keras_nfnets.AGC)
    inner = opt  # an NFNetSGD with AGC in its update_step
    assert isinstance(inner, keras_nfnets.NFNetSGD)
    assert inner.nesterov and inner.momentum == 0.9
    assert inner.l2_weight_decay == 2e-5 and inner.use_ema
    assert inner.ema_momentum == 0.99999
    schedule = inner.get_config()["optimizer"]["config"]["learning_rate"]
    schedule = keras.saving.deserialize_keras_object(schedule)
    assert schedule.base_learning_rate == pytest.approx(0.4)
    assert schedule.warmup_steps == 500 and schedule.total_steps == 1000
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, keras_nfnets.AGC)
    assert again.get_config() == opt.get_config()
