"""AGC's clip statistics (keras_nfnets.optim.monitor, groups): the clip
fraction and mean clip factor `AGCMonitor` reports equal a hand count for a
known gradient (units whose ||G|| / max(||W||, eps) exceeds lambda), per
group (stem, stage1..4, skip_gain, head), on TensorFlow here and on JAX and
PyTorch in a process each (this file is also the script they run); a
two-epoch `fit` logs them to History, CSVLogger and TensorBoard (scalars
and a histogram, read back from the event files), and the plot draws."""

import csv
import json
import pathlib
import re
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

import keras  # noqa: E402

import keras_nfnets  # noqa: E402
from keras_nfnets.optim import SKIP_GAINS, monitor  # noqa: E402
from training_helpers import BackendChecks, backend_env  # noqa: E402
from training_helpers import tiny_classifier as _model  # noqa: E402

LAMBDA, EPS = 0.01, 1e-3


def _hand_group(path):
    """TINY_CONFIG's groups, written out by hand: one block per stage."""
    if path.startswith("stem_conv"):
        return "stem"
    if path.endswith("/skip_gain"):
        return "skip_gain"
    block = re.match(r"nf_block(?:_(\d+))?/", path)
    if block:
        return f"stage{int(block.group(1) or 0) + 1}"
    return "stage4" if path.startswith("final_conv") else "head"


def _np_units(x):
    """||x_i|| per unit, in NumPy: whole tensor for scalars/vectors, over
    axis 0 for dense kernels, over H, W, I for HWIO kernels."""
    x = np.asarray(x, "float64")
    if sum(d != 1 for d in x.shape) <= 1:
        return np.sqrt(np.sum(x * x)).reshape(1)
    axis = 0 if x.ndim in (2, 3) else (0, 1, 2)
    return np.sqrt(np.sum(x * x, axis=axis)).ravel()


def _known_gradients(variables, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=tuple(v.shape))
             * 10 ** rng.uniform(-5, -1)).astype("float32")
            for v in variables]


def _expected(variables, grads, excluded):
    per_group = {}
    for v, g in zip(variables, grads):
        if v.path in excluded:
            continue
        w = np.asarray(keras.ops.convert_to_numpy(v))
        ratio = _np_units(g) / np.maximum(_np_units(w), EPS)
        clipped = ratio > LAMBDA
        factor = np.where(clipped, LAMBDA / ratio, 1.0)
        rows = per_group.setdefault(_hand_group(v.path), [])
        rows.append((clipped.size, clipped.sum(), factor.sum()))
    out = {}
    for group, rows in [("", sum(per_group.values(), []))] + sorted(
            per_group.items()):
        units, clipped, factors = np.sum(rows, axis=0)
        key = "/" + group if group else ""
        out["agc_clip_fraction" + key] = clipped / units
        out["agc_clip_factor" + key] = factors / units
    return out


CASES = {"default": ("linear/kernel",),
         "no_skip": ("linear/kernel", SKIP_GAINS)}


def hand_count_check(cases=tuple(CASES)):
    """Reported vs hand-counted statistics after one step of a known
    gradient (default exclusion; the skip gains excluded too), and a
    one-step fit whose monitor saw exactly one step. (Eager steps are slow
    on JAX: its process runs the default case only; the exclusion is
    backend-independent Python.)"""
    model = _model()
    variables = model.trainable_variables
    grads = _known_gradients(variables)
    result = {"backend": keras.backend.backend()}
    for name in cases:
        exclude = CASES[name]
        opt = keras_nfnets.AGC(keras.optimizers.SGD(0.0), clipping=LAMBDA,
                               eps=EPS, exclude=exclude, monitor=True)
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(g)
                                 for g in grads], variables))
        reported = monitor.summarize(opt, model)
        excluded = {"linear/kernel"} | ({v.path for v in variables
                                         if v.path.endswith("skip_gain")}
                                        if name == "no_skip" else set())
        expected = _expected(variables, grads, excluded)
        result[name] = {"keys": sorted(k for k in reported
                                       if k.startswith("agc_")),
                        "expected_keys": sorted(expected),
                        "max_err": max(abs(reported[k] - expected[k])
                                       for k in expected),
                        "fraction": expected["agc_clip_fraction"]}

    # (with layer-wise decay inside: its update_step runs in the compiled
    # step of this backend too)
    model.compile(keras_nfnets.AGC(
        keras_nfnets.LayerDecay(keras.optimizers.SGD(0.01), model, 0.5),
        clipping=LAMBDA, monitor=True),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(np.zeros((2, 32, 32, 3), "float32"), np.array([0, 1]),
                        batch_size=2, epochs=1, verbose=0,
                        callbacks=[monitor.AGCMonitor()])
    units = sum(_np_units(v).size for v in variables
                if v.path != "linear/kernel")
    opt = model.optimizer
    result["fit"] = {
        "units_seen": float(np.sum(keras.ops.convert_to_numpy(
            opt.agc_units))),
        "units_per_step": units,
        "logged": sorted(k for k in history.history if k.startswith("agc_"))}
    return result


def _assert_check(result, cases=tuple(CASES)):
    for name in cases:
        r = result[name]
        assert r["keys"] == r["expected_keys"], (name, r)
        assert r["max_err"] < 1e-5, (name, r)
        assert 0.05 < r["fraction"] < 0.95, r  # a gradient that tells
    assert "agc_clip_fraction/skip_gain" in result["default"]["keys"]
    if "no_skip" in cases:
        assert ("agc_clip_fraction/skip_gain"
                not in result["no_skip"]["keys"])
    fit = result["fit"]
    assert fit["units_seen"] == fit["units_per_step"], fit
    assert "agc_clip_fraction/stage4" in fit["logged"], fit


def test_clip_fraction_equals_hand_count_tensorflow():
    _assert_check(hand_count_check())


#: This file's hand-count check on JAX and PyTorch, side by side.
_CHECKS = BackendChecks(lambda backend: (
    [sys.executable, str(HERE)], backend_env(backend)), timeout=600)


@pytest.fixture(scope="module", autouse=True)
def _stop_unused_checks():
    """Stops a check started for a test that was then not run (-k)."""
    yield
    _CHECKS.stop()


def _run_backend(backend):
    return _CHECKS.result(backend)


def test_clip_fraction_equals_hand_count_jax():
    result = _run_backend("jax")
    assert result["backend"] == "jax"
    _assert_check(result, ("default",))


def test_clip_fraction_equals_hand_count_torch():
    result = _run_backend("torch")
    assert result["backend"] == "torch"
    _assert_check(result, ("default",))


def _tensorboard_events(log_dir):
    """`{tag: (plugin, [(step, value), ...])}` read back from the event
    files under `log_dir` with TensorFlow's event reader."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    out = {}
    for path in sorted(pathlib.Path(log_dir).rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                # (the plugin is named in a tag's first event only)
                plugin, steps = out.setdefault(
                    value.tag, (value.metadata.plugin_data.plugin_name, []))
                steps.append((event.step, tf.make_ndarray(value.tensor)))
    return out


def test_monitor_writes_csv_tensorboard_and_plot(tmp_path):
    """Two epochs: the CSVLogger rows and TensorBoard's scalars (read back
    from its event file) hold the monitor's per-group clip fractions, the
    histogram of per-variable clip fractions counts each clipped variable
    once per epoch, and the plot draws."""
    model = _model()
    model.compile(keras_nfnets.AGC(keras.optimizers.SGD(0.01),
                                   clipping=LAMBDA, monitor=True,
                                   exclude=("linear/kernel", SKIP_GAINS)),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    log, board = tmp_path / "log.csv", tmp_path / "tensorboard"
    history = model.fit(
        np.random.default_rng(0).normal(size=(2, 32, 32, 3)), np.array([0, 1]),
        batch_size=2, epochs=2, verbose=0,
        callbacks=[keras_nfnets.AGCMonitor(histogram_dir=str(board / "agc")),
                   keras.callbacks.CSVLogger(str(log)),
                   keras.callbacks.TensorBoard(str(board), write_graph=False,
                                               profile_batch=0)])
    rows = list(csv.DictReader(log.open()))
    assert len(rows) == 2
    for group in ("stem", "stage1", "stage4", "head"):
        values = [float(r[f"agc_clip_fraction/{group}"]) for r in rows]
        assert values == history.history[f"agc_clip_fraction/{group}"]
        assert all(0.0 <= x <= 1.0 for x in values)
    assert "agc_clip_fraction/skip_gain" not in rows[0]

    events = _tensorboard_events(board)
    for key in ("agc_clip_fraction", "agc_clip_factor/stage1",
                "agc_clip_fraction/stem", "agc_clip_fraction/head"):
        plugin, steps = events[f"epoch_{key}"]
        assert plugin == "scalars", (key, plugin)
        assert [s for s, _ in steps] == [0, 1]
        np.testing.assert_allclose([float(v) for _, v in steps],
                                   history.history[key], rtol=1e-6)
    assert "epoch_agc_clip_fraction/skip_gain" not in events
    plugin, steps = events["agc_clip_fraction_per_variable"]
    assert plugin == "histograms"
    clipped = sum(1 for v in model.trainable_variables
                  if v.path != "linear/kernel"
                  and not v.path.endswith("skip_gain"))
    assert [s for s, _ in steps] == [0, 1]
    for _, buckets in steps:  # (left edge, right edge, count) rows
        assert buckets.shape[1] == 3
        assert buckets[:, 2].sum() == clipped

    ax = keras_nfnets.plot_clip_fraction(history, tmp_path / "clip.png")
    assert (tmp_path / "clip.png").stat().st_size > 0
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {
        "all", "stem", "stage1", "head"}


def test_monitor_refuses_an_optimizer_without_statistics():
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), "mse", agc_clipping=0.01)
    import pytest  # pylint: disable=import-outside-toplevel
    callback = keras_nfnets.AGCMonitor()
    callback.set_model(model)
    with pytest.raises(ValueError, match="monitor=True"):
        callback.on_train_begin()
    with pytest.raises(ValueError, match="no agc_clip_fraction"):
        keras_nfnets.plot_clip_fraction({"loss": [1.0]})


if __name__ == "__main__":
    print("RESULT " + json.dumps(hand_count_check(("default",)),
                                 default=float))
