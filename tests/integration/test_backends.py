"""The same models, weights, SPP and AGC on JAX and PyTorch.

Each backend runs in its own process (Keras picks its backend at import);
TensorFlow is covered by the rest of the suite. Skipped when a backend is
not installed.
"""

import importlib.util
import pathlib
import sys

import pytest

from conftest import fixture_path
from training_helpers import (BackendChecks, backend_env, check_result,
                              start_check)

SCRIPT = pathlib.Path(__file__).parents[1] / "backend_checks.py"


def _start(backend, check, **env):
    # Quick XLA:CPU compiles; numerics unchanged.
    return start_check([sys.executable, str(SCRIPT), check],
                       backend_env(backend, **env))


def run_check(backend, check, **env):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    fixture_path("nfnet_tiny_haiku.npz")  # skips when ../shared is absent
    return check_result(_start(backend, check, **env),
                        what=f"{backend} {check}")


#: The parity check on JAX and PyTorch, side by side.
_PARITY = BackendChecks(lambda backend: (
    [sys.executable, str(SCRIPT), "parity"], backend_env(backend)))


@pytest.fixture(scope="module", autouse=True)
def _stop_unused_checks():
    """Stops a check started for a test that was then not run (-k)."""
    yield
    _PARITY.stop()


def _parity(backend):
    fixture_path("nfnet_tiny_haiku.npz")  # skips when ../shared is absent
    return _PARITY.result(backend)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_parity_and_agc_on_backend(backend):
    r = _parity(backend)
    assert r["backend"] == backend
    assert r["logits_rel_err"] < 1e-4       # tiny NFNet vs DeepMind logits
    assert r["spp_rel_err"] < 1e-4          # signal-propagation metrics
    assert r["clipped_rel_err"] < 1e-5      # adaptive_clip_grads vs clipped:*
    assert r["step1_rel_err"] < 1e-6        # SGD_AGC step 1
    assert r["step2_rel_err"] < 1e-6        # SGD_AGC step 2
    assert r["fit_loss_finite"]


# CI time: test_train_jax checks the same equality (DataParallel over 2 CPU
# devices ends with one device's weights) through the training program.
@pytest.mark.slow
def test_jax_data_parallel_equals_single_device():
    r = run_check("jax", "data_parallel",
                  XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert r["devices"] == 2
    assert r["max_abs_diff"] < 1e-5
