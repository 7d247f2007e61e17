"""AGC inside training (keras_nfnets.optim.agc): NFNetModel.compile, the AGC
wrapper around a user-built model (the user's optimizer kept), mixed
precision, saving, and MirroredStrategy over two logical CPU devices."""

import os
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_nfnets
from keras_nfnets.optim import agc, clip
from conftest import REPO, relative_error
from training_helpers import (PROGRAM_CONFIG, check_result, start_check,
                              stop_checks, write_config)


def _small(include_top=True, **kwargs):
    """Two single blocks (training_helpers.PROGRAM_CONFIG), not DeepMind's
    six-block tiny config: these tests check what AGC does inside fit, and
    their cost is tracing or compiling the train step."""
    return keras_nfnets.NFNet(
        dict(PROGRAM_CONFIG), include_top=include_top, classes=10,
        input_shape=(32, 32, 3), classifier_activation=None,
        include_preprocessing=False, drop_rate=0.0, stochdepth_rate=0.0,
        seed=1, **kwargs)


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 32, 32, 3)).astype("float32"),
            rng.integers(0, 10, size=(n,)))


def _raw_grads(model, x, y):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    return [g.numpy() for g in tape.gradient(loss,
                                             model.trainable_variables)]


def _check_one_sgd_step(model, before, grads, lr, unclipped_path):
    """After one plain-SGD step, every variable moved by -lr * AGC(g) except
    `unclipped_path`, which moved by -lr * g although AGC would clip it."""
    seen = False
    for v, w0, g in zip(model.trainable_variables, before, grads):
        if v.path == unclipped_path:
            seen = True
            would_clip = np.asarray(agc.clip_gradient(g, w0, 0.01, 1e-3))
            assert not np.allclose(would_clip, g), "clip would be a no-op"
            expected = w0 - lr * g
        else:
            expected = w0 - lr * np.asarray(agc.clip_gradient(g, w0, 0.01,
                                                              1e-3))
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-4,
                                   atol=1e-6, err_msg=v.path)
    assert seen


def test_fit_clips_everything_but_the_classifier_weight():
    model = _small()
    x, y = _batch()
    before = [v.numpy() for v in model.trainable_variables]
    grads = _raw_grads(model, x, y)
    lr = 0.5
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), agc_clipping=0.01)
    assert isinstance(model.optimizer, keras_nfnets.AGC)
    assert model.optimizer.exclude == ("linear/kernel",)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    _check_one_sgd_step(model, before, grads, lr, "linear/kernel")
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert int(model.optimizer.iterations.numpy()) == 3


def test_agc_wrapper_for_a_user_model_around_a_backbone():
    backbone = _small(include_top=False, pooling="avg")
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(10, name="head")(backbone(inputs))
    model = keras.Model(inputs, outputs)
    x, y = _batch(seed=1)
    before = [v.numpy() for v in model.trainable_variables]
    grads = _raw_grads(model, x, y)
    model.compile(
        optimizer=keras_nfnets.AGC(keras.optimizers.SGD(0.5),
                                   exclude="head/kernel"),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    _check_one_sgd_step(model, before, grads, 0.5, "head/kernel")


def test_exclude_that_matches_nothing_warns():
    var = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    opt = keras_nfnets.AGC(keras.optimizers.SGD(0.1), exclude=("linear",))
    with pytest.warns(UserWarning, match="match no trainable variable"):
        opt.build([var])


def test_agc_off_leaves_the_optimizer_alone():
    model = _small()
    model.compile(optimizer="sgd", loss="mse", agc_clipping=None)
    assert isinstance(model.optimizer, keras.optimizers.SGD)


def test_save_and_load_keep_agc(tmp_path):
    model = _small()
    x, y = _batch()
    model.compile(optimizer=keras_nfnets.NFNetSGD(0.1, use_ema=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True),
                  agc_clipping=0.02, agc_eps=1e-3)
    model.fit(x, y, batch_size=4, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_nfnets.NFNetModel)
    opt = loaded.optimizer
    assert isinstance(opt, keras_nfnets.AGC) and opt.clipping == 0.02
    assert opt.exclude == ("linear/kernel",)
    assert isinstance(opt, keras_nfnets.NFNetSGD) and opt.use_ema
    for a, b in zip(model.optimizer.variables, opt.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    loaded.fit(x, y, batch_size=4, verbose=0)
    assert int(opt.iterations.numpy()) == 2
    # Compiling with AGC off also round-trips.
    model.compile(optimizer="sgd", loss="mse", agc_clipping=None)
    model.save(path)
    assert isinstance(keras.saving.load_model(path).optimizer,
                      keras.optimizers.SGD)


# ---------------------------------------------------------- mixed precision
def _one_step_update(policy, run_eagerly=False):
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(3)
        model = _small()
        keras.config.set_dtype_policy("float32")
        x, y = _batch(seed=2)
        before = [v.numpy() for v in model.trainable_variables]
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True), agc_clipping=0.01,
                      run_eagerly=run_eagerly)
        model.fit(x, y, batch_size=4, verbose=0)
        return model, before, [v.numpy() - w for v, w in
                               zip(model.trainable_variables, before)]
    finally:
        keras.config.set_dtype_policy("float32")


def test_mixed_float16_agc_sees_unscaled_gradients():
    _, _, ref = _one_step_update("float32")
    model, _, got = _one_step_update("mixed_float16")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, keras_nfnets.AGC)
    worst = max(relative_error(g, r) for g, r in zip(got, ref))
    assert worst < 2e-2, worst  # float16 tolerance; a scaled clip is 1e4 off


#: float32 unit roundoff.
_U32 = 2.0 ** -24


def _unit_norms(x):
    return np.asarray(agc.unitwise_norm(np.asarray(x, "float64")))


def _agc64(grad, param, clipping=0.01, eps=1e-3):
    """AGC in float64: (clipped gradient, unit gradient norms, unit
    thresholds clipping * max(||W_i||, eps))."""
    g64 = np.asarray(grad, "float64")
    threshold = clipping * np.maximum(_unit_norms(param), eps)
    gn = _unit_norms(g64)
    clipped = np.where(gn > threshold,
                       g64 * threshold / np.maximum(gn, 1e-6), g64)
    return clipped, gn, threshold


def test_mixed_bfloat16_keeps_agc_in_float32(monkeypatch):
    """Under mixed_bfloat16 the clip runs in float32 on float32 gradients,
    and the step is exactly AGC of the gradient the model produced.

    Not compared: the bf16 model's gradient with the float32 model's. bf16
    keeps 8 mantissa bits (unit roundoff 2^-9 per op) and through a
    network's forward and backward pass that error compounds by an amount
    that depends on depth, data and the CPU (with or without native bf16
    instructions): no fixed tolerance on it is machine-independent. What AGC
    guarantees, and what is checked, with bounds from float32 rounding
    (u = 2^-24): (1) its output is AGC of its input computed in float64, to
    (n + 8) u relative (a unit norm sums n squares: n u; sqrt, max, divide
    and multiply: a few u more); (2) the update is -lr times that output, to
    the rounding of w - lr * c; (3) a clipped unit's update has norm
    lr * clipping * max(||W_i||, eps) whatever the gradient's rounding, so
    on the units clipped in both runs it equals the float32 reference run's
    (same initial weights) to float32 rounding."""
    original = agc.clip_gradient
    records = []

    def spy(grad, param, *args):
        out = original(grad, param, *args)
        records.append((np.asarray(param), np.asarray(grad), np.asarray(out),
                        keras.backend.standardize_dtype(out.dtype),
                        keras.backend.standardize_dtype(param.dtype)))
        return out

    monkeypatch.setattr(agc, "clip_gradient", spy)
    runs = {}
    for policy in ("float32", "mixed_bfloat16"):
        records.clear()
        model, before, delta = _one_step_update(policy, run_eagerly=True)
        runs[policy] = (list(records), delta)
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert records and all(r[3:] == ("float32", "float32") for r in records)
    lr = 0.5
    both_clipped = 0
    # update_step runs (and calls the clip) in variable order, eagerly.
    clipped_vars = [i for i, v in enumerate(model.trainable_variables)
                    if v.path != "linear/kernel"]
    assert all(len(recs) == len(clipped_vars) for recs, _ in runs.values())
    for j, i in enumerate(clipped_vars):
        v, w0 = model.trainable_variables[i], before[i]
        moved = {}
        for policy, (recs, deltas) in runs.items():
            param, grad, out, _, _ = recs[j]
            assert np.array_equal(param, w0), (policy, v.path)
            expected, gn, threshold = _agc64(grad, w0)
            n = grad.size // _unit_norms(grad).size
            bound = (n + 8) * _U32
            # (1) float32 AGC == float64 AGC (a unit on the threshold may go
            # either way: left out).
            edge = np.broadcast_to(
                np.abs(gn - threshold) <= bound * threshold, grad.shape)
            err = np.abs(np.where(edge, 0.0, out - expected)).max()
            assert err <= bound * np.abs(expected).max(), (policy, v.path)
            # (2) the step is -lr * AGC(g).
            step_rounding = 2 * _U32 * (np.abs(w0) + lr * np.abs(out))
            assert np.all(np.abs(deltas[i] + lr * out) <= step_rounding +
                          1e-30), (policy, v.path)
            # (3) clipped units move by lr * threshold.
            clipped = gn > threshold * (1 + bound)
            target = lr * threshold
            tol = bound + 4 * _U32 * _unit_norms(w0) / target
            rel = np.abs(_unit_norms(deltas[i]) - target) / target
            assert np.all(np.where(clipped, rel <= tol, True)), (policy,
                                                                 v.path)
            moved[policy] = (clipped, _unit_norms(deltas[i]), tol)
        c32, n32, tol = moved["float32"]
        c16, n16, _ = moved["mixed_bfloat16"]
        both = c32 & c16
        assert np.all(np.where(both, np.abs(n16 - n32) <= 2 * tol * n32,
                               True)), v.path
        both_clipped += int(both.sum())
    assert both_clipped > 0, "no unit was clipped in both runs"


# ------------------------------------------------------------- distribution
_DISTRIBUTED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    import keras_nfnets
    from keras_nfnets import agc

    # Deterministic kernels (no run-to-run variation from thread
    # scheduling); the mirrored/single difference that remains is the
    # reordering of float32 sums, bounded in the test.
    tf.config.experimental.enable_op_determinism()

    class PerReplicaClipSGD(keras.optimizers.SGD):
        # The naive design: clip in apply(), i.e. each replica's share.
        def apply(self, grads, trainable_variables=None):
            grads = [g if v.path == "linear/kernel"
                     else agc.clip_gradient(g, v, 0.01, 1e-3)
                     for g, v in zip(grads, trainable_variables)]
            super().apply(grads, trainable_variables)

    config, jit, arms, out = sys.argv[1], sys.argv[2] == "1", *sys.argv[3:]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(24,))

    def build():
        return keras_nfnets.NFNet(
            config, classes=10, input_shape=(32, 32, 3),
            classifier_activation=None, include_preprocessing=False,
            drop_rate=0.0, stochdepth_rate=0.0)

    keras.utils.set_random_seed(0)  # the same start in both processes
    init = build().get_weights()

    def run(strategy, make_optimizer):
        with strategy.scope():
            model = build()
            model.set_weights(init)
            model.compile(optimizer=make_optimizer(), loss=keras.losses.
                          SparseCategoricalCrossentropy(from_logits=True),
                          agc_clipping=None, jit_compile=jit)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        return model.get_weights()

    sgd = lambda: keras.optimizers.SGD(0.5, momentum=0.9)
    agc_ = lambda: keras_nfnets.AGC(sgd(), exclude=("linear/kernel",))
    naive = lambda: PerReplicaClipSGD(0.5, momentum=0.9)
    if arms == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        runs = {"init_mirrored": init, "mirrored": run(strategy, agc_),
                "naive_mirrored": run(strategy, naive)}
    else:
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        runs = {"init_single": init, "single": run(strategy, agc_),
                "unclipped_single": run(strategy, sgd)}
    np.savez(out, **{f"{k}:{i}": w for k, ws in runs.items()
                     for i, w in enumerate(ws)})
    print("RESULT {}")
""")


def _weights(path):
    """{arm: [weights]} from a file the script above wrote."""
    with np.load(path) as f:
        out = {}
        for key in sorted(f.files, key=lambda k: int(k.split(":")[1])):
            out.setdefault(key.split(":")[0], []).append(f[key])
    return out


def test_mirrored_strategy_clips_the_global_batch_gradient(tmp_path):
    """3 steps (global batch 8, 4 per replica) over two logical CPUs end
    where one device ends; clipping each replica's share does not.
    Deterministic kernels; the bound on what remains (the order of float32
    sums across the replicas) is derived at the assertion.

    (Graph mode: TF cannot XLA-compile a MirroredStrategy step over logical
    CPU devices even without AGC, "Trying to access resource ... located in
    device CPU:1 from device CPU:0"; XLA is tested on one device below.)

    Fresh TensorFlow processes (logical CPU devices are fixed at
    TensorFlow's start, so process isolation is the point) build a
    two-block NFNet (training_helpers.PROGRAM_CONFIG) and trace its train
    step for each arm: two replicas and the naive per-replica clip in one,
    one device and no clipping in the other, side by side."""
    jit = False
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get(
                   "PYTHONPATH", ""))
    config = str(write_config(tmp_path / "c.json"))
    # The two-replica arms and the one-device arms side by side, each
    # process tracing its two arms (tracing is single-threaded).
    procs = {arms: start_check(
        [sys.executable, "-c", _DISTRIBUTED, config, "1" if jit else "0",
         arms, str(tmp_path / f"{arms}.npz")], env)
        for arms in ("mirrored", "single")}
    try:
        for arms, proc in procs.items():
            check_result(proc, what=f"the {arms} arms")
    finally:
        stop_checks(procs.values())
    runs = {**_weights(tmp_path / "mirrored.npz"),
            **_weights(tmp_path / "single.npz")}

    def err(a, b):
        return max(float(np.abs(u - v).max() / max(np.abs(v).max(), 1e-12))
                   for u, v in zip(a, b))

    for a, b in zip(runs["init_mirrored"], runs["init_single"]):
        np.testing.assert_array_equal(a, b)  # both processes start alike
    ref = runs["single"]
    result = {arm: err(runs[arm], ref)
              for arm in ("mirrored", "naive_mirrored", "unclipped_single")}
    print(result)
    # With deterministic kernels the only difference left is the order of
    # float32 sums: each gradient entry sums 8 x 32 x 32 = 8192 terms, which
    # reordered differ by ~sqrt(n) u = 90 x 2^-24 = 5.4e-6 relative (n u =
    # 4.9e-4 at the very worst); 3 momentum-0.9 steps weigh it by at most
    # 1 + 1.9 + 2.71 = 5.6: ~3e-5 typical, n u x 5.6 = 2.7e-3 at the very
    # worst. Measured over 5 runs on one AMD EPYC: 1.7e-6 ... 8.2e-5 (the
    # sums are not in a fixed order from run to run), so the typical-case
    # bound of 1e-4 had no margin: bound 1e-3, the worst case rounded down,
    # while clipping per replica is off by > 1 and no clipping by > 1e4.
    assert result["mirrored"] < 1e-3, result
    assert result["naive_mirrored"] > 1e-1, result  # per-replica clip fails
    assert result["unclipped_single"] > 1e-3, result  # clipping was active


def test_agc_train_step_compiles_with_xla():
    x, y = _batch(n=8, seed=4)
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(5)
        model = _small()
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True), agc_clipping=0.01,
                      jit_compile=jit)
        assert model.jit_compile == jit
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        results.append(model.get_weights())
    worst = max(relative_error(a, b) for a, b in zip(*results))
    assert worst < 1e-4, worst


def test_agc_keeps_the_optimizer_instance():
    """`AGC(opt)` is `opt` itself: after `fit`, `opt.iterations` has moved
    and its slots are the ones the step used."""
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    wrapped = keras_nfnets.AGC(sgd, clipping=0.01, exclude=())
    assert wrapped is sgd and isinstance(sgd, keras_nfnets.AGC)
    assert isinstance(sgd, keras.optimizers.SGD)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=wrapped, loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), batch_size=2, verbose=0)
    assert model.optimizer is sgd
    assert int(sgd.iterations.numpy()) == 2
    assert any(np.abs(v.numpy()).sum() > 0 for v in sgd.momentums)


def test_agc_refuses_bad_arguments_before_touching_the_optimizer():
    sgd = keras.optimizers.SGD(0.1)
    with pytest.raises(ValueError, match="clipping"):
        keras_nfnets.AGC(sgd, clipping=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        keras_nfnets.AGC(sgd, learning_rate=0.1)
    assert type(sgd) is keras.optimizers.SGD
    with pytest.raises(ValueError, match="already clips"):
        keras_nfnets.AGC(keras_nfnets.AGC(keras.optimizers.SGD(0.1)))


# ------------------------------------------------------------- graph size
#: An NFNet's kinds of variables (HWIO kernels, SE dense kernels, biases,
#: gains, a scalar skip gain) and the classifier weight AGC leaves alone.
_SHAPES = [(3, 3, 3, 8), (3, 3, 8, 8), (3, 3, 8, 8), (1, 1, 8, 16),
           (16, 4), (4, 16), (8,), (8,), (16,), (1, 1, 1, 8), ()]


def _update_graph_nodes(variables, clipping):
    """Nodes of the traced optimizer update (the function and the functions
    it calls) for `AGC(SGD(momentum))` around `variables`."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    opt = keras_nfnets.AGC(keras.optimizers.SGD(0.1, momentum=0.9),
                           clipping=clipping, exclude=("linear",),
                           skip_nonfinite=False)
    opt.build(variables)
    update = tf.function(lambda grads: opt.apply(grads, variables))
    graph = update.get_concrete_function(
        [tf.TensorSpec(v.shape, v.dtype) for v in variables]
    ).graph.as_graph_def()
    return len(graph.node) + sum(len(f.node_def)
                                 for f in graph.library.function), opt


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="counts the nodes of a traced TensorFlow graph")
def test_the_traced_clip_is_a_few_ops_per_clipped_variable():
    """The clip in a traced train step (here: the optimizer update of an
    NFNet's kinds of variables, with and without the clip) grows by at most
    8 nodes per clipped variable and 15 per shape of unit norms, counted
    from what the clip computes:

    * per clipped variable: the weight read, its sum of squares per unit
      (square, sum, the axes) and the gradient's (3 more), and the one op on
      the whole gradient, `G * factor`: 8;
    * per shape of unit norms (their factors computed together): the two
      square roots, `max(., eps) * clipping` (2 ops, 2 constants), the
      test, `max(., 1e-6)` and the divide (3 ops, 1 constant), `where(.,
      ., 1)` (1 op, 1 constant), stacking the two sums and unstacking the
      factors (3): 15.

    Clipping each variable on its own in its `update_step` (as before,
    about 20 nodes each: the factor's ops, constants and a full-size select
    per variable) is over this bound; so is any per-variable growth."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"),
                                name=f"w{i}") for i, s in enumerate(_SHAPES)]
    variables.append(keras.Variable(np.ones((16, 10), "float32"),
                                    name="linear"))
    plain, _ = _update_graph_nodes(variables, None)
    clipped, opt = _update_graph_nodes(variables, 0.01)
    chosen = [v for v, m in zip(variables, opt.clip_mask) if m]
    shapes = {np.sum(np.zeros(v.shape), axis=clip.unit_axes(v.shape)).shape
              for v in chosen}
    assert len(chosen) == len(_SHAPES)  # all but the classifier weight
    grown = clipped - plain
    bound = 8 * len(chosen) + 15 * len(shapes)
    print(f"{len(chosen)} clipped variables, {len(shapes)} shapes: "
          f"{grown} nodes (bound {bound})")
    assert 0 < grown <= bound, (grown, bound)
