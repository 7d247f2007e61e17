"""`python -m training.train --backend=jax` (keras.distribution.DataParallel
over 2 CPU devices) and `--backend=torch`, end to end in subprocesses: the
runs finish, the JAX model loads under TensorFlow (this process) with the
same predictions, and 2 devices end with the weights of 1 device. (The
flags refused on JAX: test_training_flags.py.)"""

import importlib.util
import json
import subprocess

import numpy as np
import pytest

from training_helpers import (FAST_XLA, REPO,
                              assert_jax_model_loads_on_tensorflow, env,
                              make_folder, model_weights, run_train,
                              tiny_flags, train_cmd, write_config)

TWO_DEVICES = "--xla_force_host_platform_device_count=2"


def _needs(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")


def _flags(tmp_path, root, name, backend, **overrides):
    return tiny_flags(write_config(tmp_path / "c.json"), f"folder:{root}",
                      tmp_path / name, backend=backend, train_steps=3,
                      checkpoint_steps=2, **overrides)


def _metrics(run_dir):
    with open(run_dir / "metrics.json") as f:
        return json.load(f)


# Slow (about 3 minutes): test_multihost_jax's training test runs this
# DataParallel program (one process, 2 devices) in `make test`, and checks
# the TensorFlow load; here 2 devices are checked against 1.
@pytest.mark.slow
def test_jax_data_parallel_run_equals_one_device_and_loads_on_tf(tmp_path):
    _needs("jax")
    root = make_folder(tmp_path / "imgs", classes=3, train=8, test=4)
    # XLA (the JAX default) for both; the two runs go side by side.
    procs = {
        devices: subprocess.Popen(
            train_cmd(_flags(tmp_path, root, f"jax{devices}", "jax",
                             jit_compile="auto")),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env(JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_XLA + (
                " " + TWO_DEVICES if devices == 2 else "")))
        for devices in (2, 1)}
    outs = {d: p.communicate(timeout=300) for d, p in procs.items()}
    for d, p in procs.items():
        assert p.returncode == 0, outs[d][1][-3000:]
    assert "jax DataParallel strategy with 2 replica(s)" in outs[2][0]
    assert "jax single-device strategy with 1 replica(s)" in outs[1][0]
    for d in (2, 1):
        m = _metrics(tmp_path / f"jax{d}")
        assert (m["backend"], m["replicas"], m["steps"]) == ("jax", d, 3)
        assert (tmp_path / f"jax{d}" / "backup" / "latest.weights.h5").exists()

    # Same global batches -> the same final (EMA) weights on 1 and 2 devices.
    two = model_weights(str(tmp_path / "jax2" / "model.keras"))
    one = model_weights(str(tmp_path / "jax1" / "model.keras"))
    assert two.keys() == one.keys()
    assert max(float(np.max(np.abs(two[k] - one[k]))) for k in two) < 1e-5

    # The JAX-trained .keras loads under TensorFlow (this process) and
    # predicts what it predicts under JAX.
    assert_jax_model_loads_on_tensorflow(tmp_path / "jax2" / "model.keras",
                                         tmp_path)


def test_torch_run_finishes(tmp_path):
    _needs("torch")
    root = make_folder(tmp_path / "imgs", classes=3, train=8, test=4)
    out = run_train(_flags(tmp_path, root, "torch", "torch"))
    assert out.returncode == 0, out.stderr[-3000:]
    m = _metrics(tmp_path / "torch")
    assert (m["backend"], m["replicas"], m["steps"]) == ("torch", 1, 3)
    assert (tmp_path / "torch" / "model.keras").exists()
