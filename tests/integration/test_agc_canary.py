"""The AGC canary: `fit` for one step with gradients 10-100x over the AGC
threshold, on every backend and path, checked against an update derived by
hand (tests/agc_canary_check.py; no fixture needed). If clipping were
bypassed, the update would be the raw one and these tests fail:
`test_the_canary_fails_when_the_clip_is_bypassed` disables the clip in
`update_step` and checks that the canary's check fails (as every case below
did in a throwaway run with the hook disabled).

Also here: what AGC does around and inside wrapping optimizers, the per-family
defaults, the adaptive-optimizer warning, and that a Keras release that stops
calling `update_step` is an error, not silent unclipped training."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_nfnets
from keras_nfnets import agc, compat

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
import agc_canary_check as canary_lib  # noqa: E402  pylint: disable=wrong-import-position

SCRIPT = pathlib.Path(__file__).parents[1] / "agc_canary_check.py"
REPO = SCRIPT.parents[1]


def run_canary(mode, backend="tensorflow"):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get(
                   "PYTHONPATH", ""))
    out = subprocess.run([sys.executable, str(SCRIPT), mode], env=env,
                         capture_output=True, text=True, timeout=600,
                         check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"{backend} {mode} failed:\n{out.stderr[-4000:]}")


def check_clipped(result, tolerance):
    """Every variable moved by -lr * AGC(g), except the classifier weight,
    which moved by -lr * g; and AGC changes each clipped update a lot."""
    assert set(result["vars"]) == {"hidden/kernel", "hidden/bias",
                                   "linear/kernel", "linear/bias"}
    for path, r in result["vars"].items():
        if path == "linear/kernel":  # DeepMind's exclusion: raw update
            assert r["to_raw"] < tolerance, (path, r)
            continue
        assert r["clip_changes"] > 0.5, (path, r)  # the clip is material
        assert r["to_clipped"] < tolerance, (path, r)
        assert r["to_raw"] > 0.5, (path, r)


def test_canary_tensorflow_one_device():
    result = canary_lib.canary()
    assert result["optimizer"] == "AGCSGD"  # the default compile wrapped it
    check_clipped(result, 1e-5)


def test_the_canary_fails_when_the_clip_is_bypassed(monkeypatch):
    """The canary's own check: with the clip in `update_step` disabled (the
    silent failure this file exists to catch), `check_clipped` fails."""
    monkeypatch.setattr(agc, "clip_gradient",
                        lambda grad, *args, **kwargs: grad)
    result = canary_lib.canary()
    with pytest.raises(AssertionError):
        check_clipped(result, 1e-5)
    hidden = result["vars"]["hidden/kernel"]
    assert hidden["to_raw"] < 1e-5 and hidden["to_clipped"] > 0.5, hidden


def test_canary_tensorflow_mixed_float16():
    result = canary_lib.canary("mixed_float16")
    assert result["optimizer"] == "SkipCountingLossScaleOptimizer"  # counts skips
    # float16 forward/backward: unit roundoff 2^-11 ~ 5e-4 per op, a few ops
    check_clipped(result, 1e-2)


def test_canary_tensorflow_mirrored_strategy():
    result = run_canary("mirrored")
    assert result["replicas"] == 2
    check_clipped(result, 1e-5)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_canary_other_backends(backend):
    result = run_canary("plain", backend)
    assert result["backend"] == backend
    check_clipped(result, 1e-5)


def test_nan_on_one_replica_skips_the_step_on_both():
    r = run_canary("nan_on_one_replica")
    assert r["replicas"] == 2 and r["has_ema"] and r["has_momentum"]
    # weights, momentum slots, EMA and iterations: all unchanged, and equal
    # on both replicas; skipped_steps counted once (on each replica's copy)
    assert r["changed"] == [], r
    assert r["replicas_agree"] and r["finite_after"], r
    assert r["skipped"] == [1, 1], r
    assert r["iterations"] == 1, r


# ------------------------------------------------------ what cannot happen
def test_an_update_without_update_step_is_an_error():
    """A Keras that stopped calling update_step would train unclipped: AGC
    raises instead (here, an optimizer whose apply bypasses it)."""

    class Bypass(keras.optimizers.SGD):
        def apply(self, grads, trainable_variables=None):
            for g, v in zip(grads, trainable_variables):
                v.assign_sub(0.1 * g)

    var = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    opt = agc.AGC(Bypass(0.1), exclude=())
    with pytest.raises(compat.CompatError, match="without calling"):
        opt.apply([np.ones((2, 2), "float32")], [var])


def test_compat_require_names_the_version():
    with pytest.raises(compat.CompatError, match=keras.__version__):
        compat.require(object(), "_no_such_hook", "a test")


def test_torch_fused_classes_map_to_the_public_class():
    assert agc._public_base(keras.optimizers.SGD) is keras.optimizers.SGD

    class SGD(keras.optimizers.SGD):  # the shape of Keras's torch SGD
        pass

    assert agc._public_base(SGD) is keras.optimizers.SGD
    assert agc._public_base(keras_nfnets.NFNetSGD) is keras_nfnets.NFNetSGD


# -------------------------------------------------- wrapping optimizers
def test_agc_refuses_to_wrap_wrapping_optimizers():
    with pytest.raises(ValueError, match="around AGC"):
        agc.AGC(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()))
    with pytest.raises(ValueError, match="already clips"):
        agc.AGC(agc.AGC(keras.optimizers.SGD()))
    sgd = keras.optimizers.SGD()
    sgd.build([keras.Variable(np.ones(2, "float32"))])
    with pytest.raises(ValueError, match="already built"):
        agc.AGC(sgd)


multi_optimizer = getattr(keras.optimizers, "MultiOptimizer", None)


@pytest.mark.skipif(multi_optimizer is None,
                    reason="keras.optimizers.MultiOptimizer needs Keras 3.15")
def test_multi_optimizer_with_agc_inside_clips_its_variables():
    """AGC around a MultiOptimizer is refused with the way to do it; AGC
    inside one clips the variables given to it, the others get raw SGD."""
    with pytest.raises(ValueError, match="Put AGC inside"):
        agc.AGC(multi_optimizer(keras.optimizers.OptimizerMap(
            keras.optimizers.SGD())))
    params, x = canary_lib.problem()
    _, y = canary_lib.forward(params, x)
    t = y + 1.0
    grads = canary_lib.raw_gradients(params, x, t)
    model = canary_lib.build(params)
    with pytest.raises(ValueError, match="agc_clipping=None"):
        model.compile(optimizer=multi_optimizer(keras.optimizers.OptimizerMap(
            keras.optimizers.SGD())), loss="mse")
    lr = canary_lib.LR
    opt = multi_optimizer(keras.optimizers.OptimizerMap(
        agc.AGC(keras.optimizers.SGD(lr), exclude=()),
        {"linear/.*": keras.optimizers.SGD(lr)}))
    model.compile(optimizer=opt, loss="mse", agc_clipping=None)
    model.fit(x.astype("float32"), t.astype("float32"),
              batch_size=canary_lib.BATCH, shuffle=False, verbose=0)
    for v in model.trainable_variables:
        w0, g = params[v.path], grads[v.path]
        expected = w0 - lr * (g if v.path.startswith("linear/")
                              else canary_lib.agc(g, w0))
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-5,
                                   atol=1e-6, err_msg=v.path)


# ---------------------------------------------------- defaults, warnings
def test_family_defaults_follow_deepmind():
    from keras_nfnets import variants  # pylint: disable=import-outside-toplevel
    assert agc.default_clipping_for(variants.get_config("F0")) == 0.01
    assert agc.default_clipping_for(
        next(iter(variants.NF_RESNET_VARIANTS.values()))) is None
    assert agc.default_clipping_for(
        next(iter(variants.NF_REGNET_VARIANTS.values()))) is None
    params, _ = canary_lib.problem()
    model = canary_lib.build(params)
    model.default_agc_clipping = None  # what NFResNet*/NFRegNet* set
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    assert not isinstance(model.optimizer, agc.AGC)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                  agc_clipping=0.02)
    assert model.optimizer.clipping == 0.02
    # the default travels with the model
    again = keras_nfnets.NFNetModel.from_config(model.get_config())
    assert again.default_agc_clipping is None


def test_adaptive_optimizer_with_the_sgd_default_warns():
    with pytest.warns(agc.AdaptiveOptimizerWarning, match="tuned for SGD"):
        agc.AGC(keras.optimizers.Adam(1e-3))
    params, _ = canary_lib.problem()
    model = canary_lib.build(params)
    with pytest.warns(agc.AdaptiveOptimizerWarning):
        model.compile(optimizer="adam", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error", agc.AdaptiveOptimizerWarning)
        agc.AGC(keras.optimizers.Adam(1e-3), clipping=0.01)  # chosen: quiet
        agc.AGC(keras.optimizers.SGD(0.1))
        model.compile(optimizer="adam", loss="mse", agc_clipping=0.05)
