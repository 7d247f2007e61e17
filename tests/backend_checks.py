"""Parity checks run under one Keras backend, in their own process.

    KERAS_BACKEND=jax python tests/backend_checks.py parity
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python tests/backend_checks.py data_parallel

Prints one JSON line `RESULT {...}` with the measured errors; the test in
tests/integration/test_backends.py asserts on them.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402

import keras_nfnets  # noqa: E402
from conftest import (AGC_NAMES, agc_fixture_variables,  # noqa: E402
                      deepmind_fixture, fixture_path, relative_error)

def tiny_model(**kwargs):
    return keras_nfnets.NFNet(
        config=str(fixture_path("nfnet_tiny_config.json")), classes=10,
        input_shape=(40, 40, 3), classifier_activation=None,
        include_preprocessing=False, **kwargs)


def parity():
    out = {"backend": keras.backend.backend()}
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    model = tiny_model(weights=str(fixture_path("nfnet_tiny_haiku.npz")))
    out["logits_rel_err"] = relative_error(
        model.predict(ref["inputs"], verbose=0), ref["logits"])
    metrics = keras_nfnets.signal_propagation(model, ref["inputs"])
    out["spp_rel_err"] = max(relative_error(metrics[k], ref[k])
                             for k in ref if k.startswith(("avg_", "res_")))

    agc = deepmind_fixture("agc_reference.npz")
    variables = agc_fixture_variables(agc)
    grads = [keras.ops.convert_to_tensor(agc["grad:" + n]) for n in AGC_NAMES]
    clipped = keras_nfnets.adaptive_clip_grads(grads, variables, 0.01, 1e-3)
    out["clipped_rel_err"] = max(
        relative_error(keras.ops.convert_to_numpy(c), agc["clipped:" + n])
        for c, n in zip(clipped, AGC_NAMES))

    opt = keras_nfnets.AGC(
        keras_nfnets.NFNetSGD(0.1, momentum=0.9, nesterov=True,
                              weight_decay=2e-5),
        clipping=0.01, eps=1e-3, exclude=("linear/w",))
    errs = []
    for step in (1, 2):
        opt.apply_gradients(zip(grads, variables))
        errs.append(max(
            relative_error(keras.ops.convert_to_numpy(v),
                           agc[f"after_step{step}:{n}"])
            for v, n in zip(variables, AGC_NAMES)))
    out["step1_rel_err"], out["step2_rel_err"] = errs

    # A real fit step with AGC through NFNetModel.compile.
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    hist = model.fit(ref["inputs"], np.array([1, 2]), epochs=1, verbose=0)
    out["fit_loss_finite"] = bool(np.isfinite(hist.history["loss"][0]))
    return out


def data_parallel():
    """A JAX DataParallel run over 2 CPU devices equals one device."""
    import jax
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(8,))
    weights = str(fixture_path("nfnet_tiny_haiku.npz"))

    def train(distribution):
        keras.distribution.set_distribution(distribution)
        keras.utils.set_random_seed(0)
        model = keras_nfnets.NFNet(
            config=str(fixture_path("nfnet_tiny_config.json")), classes=10,
            input_shape=(32, 32, 3), classifier_activation=None,
            include_preprocessing=False, weights=weights, drop_rate=0.0,
            stochdepth_rate=0.0)
        model.compile(optimizer=keras_nfnets.NFNetSGD(0.5, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        return [keras.ops.convert_to_numpy(v) for v in model.weights]

    devices = jax.devices("cpu")
    single = train(None)
    dp = train(keras.distribution.DataParallel(devices=devices))
    keras.distribution.set_distribution(None)
    return {"backend": "jax", "devices": len(devices),
            "max_abs_diff": max(float(np.max(np.abs(a - b)))
                                for a, b in zip(single, dp))}


if __name__ == "__main__":
    result = {"parity": parity, "data_parallel": data_parallel}[sys.argv[1]]()
    print("RESULT " + json.dumps(result), flush=True)
