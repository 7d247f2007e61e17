"""keras_nfnets without TensorFlow: the JAX and PyTorch user's install.

`make test-notf` (run by `.ci/run`) builds `.venv-notf` from the package
with the `[jax,torch]` extras and the `test-portable` extra (pytest, timm
to produce references) — no TensorFlow — and runs this module once with
`KERAS_BACKEND=jax` and once with `KERAS_BACKEND=torch`. Where TensorFlow
is installed (the main test venv) every test here skips: what it proves is
that nothing needs TensorFlow, which only a venv without it can show.

Each test uses the public API only and compares with the references'
outputs (DeepMind's fixture, timm's own logits), never with this package's.
"""

import importlib.util
import os
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None,
    reason="TensorFlow is installed here; `make test-notf` runs this module "
           "in a venv without it")

import keras  # noqa: E402  (after the skip: Keras picks its backend here)

import keras_nfnets  # noqa: E402
from conftest import (AGC_NAMES, agc_fixture_variables,  # noqa: E402
                      deepmind_fixture, fixture_path, relative_error)
from backend_checks import tiny_model as _tiny_deepmind  # noqa: E402
from timm_helpers import TINY_ECA, TINY_ECA_TIMM, timm_references  # noqa: E402


def test_tensorflow_is_absent_and_never_imported():
    assert importlib.util.find_spec("tensorflow") is None
    assert keras.backend.backend() in ("jax", "torch")
    _tiny_deepmind()
    assert "tensorflow" not in sys.modules


def test_tiny_nfnet_reproduces_deepmind_logits():
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    model = _tiny_deepmind(weights=str(fixture_path("nfnet_tiny_haiku.npz")))
    err = relative_error(model.predict(ref["inputs"], verbose=0),
                         ref["logits"])
    assert err < 1e-4, err
    metrics = keras_nfnets.signal_propagation(model, ref["inputs"])
    spp = max(relative_error(metrics[k], ref[k])
              for k in ref if k.startswith(("avg_", "res_")))
    assert spp < 1e-4, spp


def test_timm_safetensors_reproduce_timm_logits(tmp_path):
    ref = timm_references(tmp_path, [dict(key="tiny_eca", cfg=TINY_ECA_TIMM,
                                          size=40, seed=1)])["tiny_eca"]
    model = keras_nfnets.NFNet(
        config=TINY_ECA, weights=str(ref["path"]), input_shape=(40, 40, 3),
        include_preprocessing=False, classifier_activation=None)
    logits = keras.ops.convert_to_numpy(
        model(np.asarray(ref["inputs"], "float32"), training=False))
    err = relative_error(logits, ref["logits"])
    assert err < 1e-4, err


def test_agc_matches_deepmind_and_fits():
    agc = deepmind_fixture("agc_reference.npz")
    variables = agc_fixture_variables(agc)
    grads = [keras.ops.convert_to_tensor(agc["grad:" + n]) for n in AGC_NAMES]
    opt = keras_nfnets.AGC(
        keras_nfnets.NFNetSGD(0.1, momentum=0.9, nesterov=True,
                              weight_decay=2e-5),
        clipping=0.01, eps=1e-3, exclude=("linear/w",))
    opt.apply_gradients(zip(grads, variables))
    err = max(relative_error(keras.ops.convert_to_numpy(v),
                             agc["after_step1:" + n])
              for v, n in zip(variables, AGC_NAMES))
    assert err < 1e-6, err

    model = _tiny_deepmind(weights=str(fixture_path("nfnet_tiny_haiku.npz")))
    model.compile(optimizer=keras_nfnets.nfnet_optimizer(
                      batch_size=4, steps_per_epoch=1, epochs=1,
                      warmup_epochs=0),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    before = [keras.ops.convert_to_numpy(v).copy()
              for v in model.trainable_variables]
    x = np.random.default_rng(0).normal(size=(4, 40, 40, 3)).astype("float32")
    hist = model.fit(x, np.array([1, 2, 3, 4]), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert isinstance(model.optimizer, keras_nfnets.AGC)
    moved = sum(not np.array_equal(b, keras.ops.convert_to_numpy(v))
                for b, v in zip(before, model.trainable_variables))
    assert moved > 0


def test_keras_file_round_trip_and_features(tmp_path):
    model = _tiny_deepmind(weights=str(fixture_path("nfnet_tiny_haiku.npz")))
    x = np.random.default_rng(1).normal(size=(2, 40, 40, 3)).astype("float32")
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    again = keras.models.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(
            again(x)))

    features = keras_nfnets.NFNet(
        config=str(fixture_path("nfnet_tiny_config.json")),
        input_shape=(64, 64, 3), include_preprocessing=False,
        feature_extractor=True)
    out = features(np.zeros((1, 64, 64, 3), "float32"))
    assert sorted(out) == ["P1", "P2", "P3", "P4", "P5"]
    assert [tuple(out[k].shape)[1] for k in sorted(out)] == [32, 16, 8, 4, 2]


def test_folded_model_keeps_the_logits():
    model = _tiny_deepmind(weights=str(fixture_path("nfnet_tiny_haiku.npz")))
    x = np.random.default_rng(2).normal(size=(2, 40, 40, 3)).astype("float32")
    folded = keras_nfnets.fold_weight_standardization(model)
    err = relative_error(keras.ops.convert_to_numpy(folded(x)),
                         keras.ops.convert_to_numpy(model(x)))
    assert err < 1e-5, err


def test_training_program_names_the_train_extra():
    import subprocess  # pylint: disable=import-outside-toplevel
    out = subprocess.run([sys.executable, "-m", "keras_nfnets.train",
                          "--demo"], capture_output=True, text=True,
                         timeout=300, cwd="/")
    assert out.returncode != 0
    assert "keras_nfnets[train]" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_tensorflow_only_paths_name_the_extra():
    with pytest.raises(ImportError, match=r"keras_nfnets\[tensorflow\]"):
        keras_nfnets.use_lean_cpu_allocator()
    assert os.environ.get("TF_ONEDNN_USE_SYSTEM_ALLOCATOR") is None
