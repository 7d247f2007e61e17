"""Signal propagation: DeepMind's metrics, the plot and the command line."""

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

import keras

import keras_nfnets
from keras_nfnets import spp

from conftest import REPO, deepmind_fixture, fixture_path

# fixture -> (constructor, arguments besides weights/classes/preprocessing,
#             input size)
FIXTURES = {
    "nfnet_tiny": (keras_nfnets.NFNet, dict(config=None), 40),
    "nf_resnet50_w1": (keras_nfnets.NFResNet50, dict(width=1), 64),
    "nf_regnet_b0": (keras_nfnets.NFRegNetB0, dict(), 64),
}


@pytest.fixture(autouse=True)
def _free_models():
    yield
    keras.backend.clear_session()
    gc.collect()


def metric_keys(ref):
    return {k for k in ref if k.startswith(("avg_sq_mean_", "avg_var_",
                                            "res_avg_var_"))}


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_signal_propagation_reproduces_deepmind_metrics(fixture):
    constructor, extra, size = FIXTURES[fixture]
    if "config" in extra:
        extra = dict(config=str(fixture_path("nfnet_tiny_config.json")))
    ref = deepmind_fixture(f"{fixture}_reference.npz")
    model = constructor(weights=str(fixture_path(f"{fixture}_haiku.npz")),
                        classes=10, input_shape=(size, size, 3),
                        include_preprocessing=False, **extra)
    metrics = keras_nfnets.signal_propagation(model, ref["inputs"])
    assert set(metrics) == metric_keys(ref)
    for key in metric_keys(ref):
        expected = float(ref[key])
        assert abs(metrics[key] - expected) <= 1e-3 * abs(expected), key


def test_keras_batchnorm_resnet():
    model = keras.applications.ResNet50V2(weights=None, include_top=False,
                                          input_shape=(32, 32, 3))
    before = [keras.ops.convert_to_numpy(v)
              for v in model.non_trainable_variables]
    inputs = np.random.default_rng(0).standard_normal(
        (2, 32, 32, 3)).astype("float32")
    metrics = spp.signal_propagation(model, inputs)
    arrays = spp.as_arrays(metrics)
    assert [len(arrays[k]) for k in spp.METRICS] == [17, 17, 16]
    # Stem output: the max-pool before the first block's pre-activation.
    stem = keras.Model(model.input, model.get_layer("pool1_pool").output)
    assert np.isclose(arrays["avg_var"][0],
                      np.var(stem(inputs), axis=(0, 1, 2)).mean(),
                      rtol=1e-5)
    # Batch-statistics BN: every residual branch ends in a fresh conv of a
    # unit-variance input, so its variance is the same in every block, while
    # the block outputs' variance grows within a stage.
    assert arrays["res_avg_var"].max() < 2 * arrays["res_avg_var"].min()
    assert arrays["avg_var"][3] > arrays["avg_var"][1]
    # The moving statistics are left as they were.
    after = [keras.ops.convert_to_numpy(v)
             for v in model.non_trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_no_residual_blocks_is_an_error():
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(inp))
    with pytest.raises(ValueError, match="no residual blocks"):
        spp.signal_propagation(model, np.zeros((1, 8, 8, 3), "float32"))


def test_plot(tmp_path):
    metrics = {f"{m}_{i}": float(i + 1) for m in ("avg_sq_mean", "avg_var")
               for i in range(4)}
    metrics.update({f"res_avg_var_{i}": 1.0 for i in range(3)})
    out = tmp_path / "spp.png"
    fig = keras_nfnets.plot_signal_propagation(
        {"a": metrics, "b": metrics}, out=out, title="t")
    assert len(fig.axes) == 3
    assert out.stat().st_size > 10_000
    lines = fig.axes[2].get_lines()
    assert list(lines[0].get_xdata()) == [1, 2, 3]


def test_command_line(tmp_path):
    out = tmp_path / "spp.png"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "keras_nfnets.spp", "--model", "NFResNet50",
         "--compare", "resnet50v2", "--out", str(out), "--image-size", "32",
         "--batch-size", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RuntimeWarning" not in result.stderr
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
    assert "nf_resnet50 (skip gain 1): 16 blocks" in result.stdout
    assert "resnet50v2: 16 blocks" in result.stdout


def test_command_line_on_a_block_without_skip_gain(tmp_path):
    """timm's L-family blocks have no skip-gain weight: --skip-gain leaves
    them alone (it used to fail with an AttributeError)."""
    from keras_nfnets import spp  # pylint: disable=import-outside-toplevel
    out = tmp_path / "spp_l0.png"
    spp.main(["--model", "ECANFNetL0", "--out", str(out), "--image-size",
              "32", "--batch-size", "1", "--skip-gain", "1.0"])
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
