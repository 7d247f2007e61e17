"""The AGC canary, runnable under any backend in its own process.

    KERAS_BACKEND=jax python tests/agc_canary_check.py plain
    python tests/agc_canary_check.py mirrored      # TF, 2 logical CPUs
    python tests/agc_canary_check.py nan_on_one_replica

One `fit` step on a small linear `NFNetModel` whose gradients are 10-100x
over the AGC threshold, compiled with the default `compile()` (AGC 0.01,
the classifier weight `linear/kernel` not clipped). The raw gradient is
derived by hand in float64 numpy (no fixture, no framework), so the check
is independent of the code under test. Prints `RESULT {json}`: for each
variable the distance of the update to the clipped and to the raw one.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODE = sys.argv[1] if len(sys.argv) > 1 else "plain"
if MODE in ("mirrored", "nan_on_one_replica"):
    import tensorflow as tf
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

import keras  # noqa: E402

import keras_nfnets  # noqa: E402

LR, CLIPPING, EPS = 0.5, 0.01, 1e-3
BATCH = 8


def problem():
    """Weights, inputs and targets: y = (x W1 + b1) W2 + b2, MSE loss."""
    rng = np.random.default_rng(0)
    params = {"hidden/kernel": rng.normal(size=(4, 3)) * 0.5,
              "hidden/bias": rng.normal(size=(3,)) * 0.5,
              "linear/kernel": rng.normal(size=(3, 2)) * 0.5,
              "linear/bias": rng.normal(size=(2,)) * 0.5}
    x = rng.uniform(-1, 1, size=(BATCH, 4))
    return params, x


def forward(p, x):
    h = x @ p["hidden/kernel"] + p["hidden/bias"]
    return h, h @ p["linear/kernel"] + p["linear/bias"]


def raw_gradients(p, x, t):
    """d mean((y - t)^2) / d params, by hand (Keras's MSE: mean over the
    outputs, then over the batch)."""
    h, y = forward(p, x)
    dy = 2.0 * (y - t) / y.size
    dh = dy @ p["linear/kernel"].T
    return {"hidden/kernel": x.T @ dh, "hidden/bias": dh.sum(0),
            "linear/kernel": h.T @ dy, "linear/bias": dy.sum(0)}


def unit_norm(a):
    if a.ndim <= 1:
        return np.sqrt((a ** 2).sum())
    return np.sqrt((a ** 2).sum(axis=0, keepdims=True))


def agc(g, w):
    threshold = CLIPPING * np.maximum(unit_norm(w), EPS)
    gn = unit_norm(g)
    return np.where(gn > threshold, g * threshold / np.maximum(gn, 1e-6), g)


def build(params):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, name="hidden")(inputs)
    outputs = keras.layers.Dense(2, name="linear", dtype="float32")(h)
    model = keras_nfnets.NFNetModel(inputs, outputs)
    for v in model.trainable_variables:
        v.assign(params[v.path].astype(v.dtype))
    return model


def canary(policy="float32", strategy=None):
    params, x = problem()
    _, y = forward(params, x)
    t = y + 1.0  # every output 1 off: gradients ~0.1-0.3, weights ~0.5-1
    grads = raw_gradients(params, x, t)
    keras.config.set_dtype_policy(policy)
    try:
        if strategy is not None:
            with strategy.scope():
                model = build(params)
                model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
        else:
            model = build(params)
            model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    finally:
        keras.config.set_dtype_policy("float32")
    model.fit(x.astype("float32"), t.astype("float32"), batch_size=BATCH,
              epochs=1, shuffle=False, verbose=0)
    out = {"backend": keras.backend.backend(), "policy": policy,
           "optimizer": type(model.optimizer).__name__, "vars": {}}
    for v in model.trainable_variables:
        w0, g = params[v.path], grads[v.path]
        new = keras.ops.convert_to_numpy(v.value).astype("float64")
        clipped_step = w0 - LR * agc(g, w0)
        raw_step = w0 - LR * g
        scale = np.abs(LR * g).max()
        out["vars"][v.path] = {
            "to_clipped": float(np.abs(new - clipped_step).max() / scale),
            "to_raw": float(np.abs(new - raw_step).max() / scale),
            "clip_changes": float(np.abs(clipped_step - raw_step).max()
                                  / scale)}
    return out


def nan_on_one_replica():
    """A NaN gradient on one of two replicas skips the step on both."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    params, x = problem()
    _, y = forward(params, x)
    t = y + 1.0
    with strategy.scope():
        model = build(params)
        model.compile(optimizer=keras_nfnets.NFNetSGD(
            LR, momentum=0.9, use_ema=True, ema_momentum=0.9), loss="mse")
    x32, t32 = x.astype("float32"), t.astype("float32")
    model.fit(x32, t32, batch_size=BATCH, shuffle=False, verbose=0)
    opt = model.optimizer

    def state():
        out = {}
        for v in model.trainable_variables + opt.variables:
            out[v.path] = [np.asarray(r) for r in
                           strategy.experimental_local_results(v.value)]
        return out

    before = state()
    bad = x32.copy()
    bad[-1, 0] = np.nan  # one example: on one replica only
    model.fit(bad, t32, batch_size=BATCH, shuffle=False, verbose=0)
    after = state()
    changed = [k for k in before if not all(
        np.array_equal(a, b, equal_nan=True)
        for a, b in zip(before[k], after[k]))]
    changed = [k for k in changed if not k.endswith("skipped_steps")]
    replicas_agree = all(np.array_equal(r[0], r[1], equal_nan=True)
                         for r in after.values() if len(r) == 2)
    skipped = [int(r) for r in strategy.experimental_local_results(
        opt.skipped_steps.value)]
    names = sorted(before)
    return {"replicas": strategy.num_replicas_in_sync, "changed": changed,
            "replicas_agree": replicas_agree, "skipped": skipped,
            "iterations": int(opt.iterations.numpy()),
            "has_ema": any("average" in k for k in names),
            "has_momentum": any("momentum" in k for k in names),
            "finite_after": bool(all(np.isfinite(a).all()
                                     for a in after.values()
                                     for a in a))}


def main():
    if MODE == "plain":
        result = canary()
    elif MODE == "mirrored":
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        result = canary(strategy=strategy)
        result["replicas"] = strategy.num_replicas_in_sync
    elif MODE == "nan_on_one_replica":
        result = nan_on_one_replica()
    else:
        raise SystemExit(f"unknown mode {MODE}")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
