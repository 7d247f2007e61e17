"""channels_first: the decision is that the models work under it.

Keras users on the PyTorch backend feed NCHW tensors (torchvision's
layout) and set `keras.config.set_image_data_format("channels_first")`;
Keras's own applications accept it. So every constructor honours it: the
model takes `(channels, height, width)` input and returns NCHW feature maps,
with the same numbers as channels_last (one family per backend, each in a
fresh process: TensorFlow the tiny NFNet, JAX the NF-ResNet-50, PyTorch the
NF-RegNet-B0, all against DeepMind's logits; the three run side by
side), and a channels_last shape under channels_first is refused with an
error naming the data format.
"""

import os
import pathlib
import sys

import pytest

from conftest import FIXTURES as SHARED_FIXTURES
from conftest import REPO_FIXTURES, fixture_path
from training_helpers import BackendChecks, backend_env

SCRIPT = pathlib.Path(__file__).parents[1] / "channels_first_checks.py"
STRIDES = {"P1": 2, "P2": 4, "P3": 8, "P4": 16, "P5": 32}
FIXTURES = {"tensorflow": "nfnet_tiny", "jax": "nf_resnet50_w1",
            "torch": "nf_regnet_b0"}


def _command(backend):
    # The repository's copy or ../shared's; the script reads the fixture's
    # files from the folder where it was found (a backend whose fixture is
    # missing is skipped by its test before its result is read).
    folder = next((f for f in (REPO_FIXTURES, SHARED_FIXTURES)
                   if (f / f"{FIXTURES[backend]}_haiku.npz").exists()),
                  REPO_FIXTURES)
    return [sys.executable, str(SCRIPT), FIXTURES[backend]], backend_env(
        backend, KERAS_NFNETS_FIXTURES=str(folder),
        PYTHONPATH=os.pathsep.join(
            [str(SCRIPT.parents[1])]
            + [p for p in [os.environ.get("PYTHONPATH")] if p]))


#: The three checks, side by side, each in a fresh process.
_CHECKS = BackendChecks(_command, backends=tuple(FIXTURES))


@pytest.fixture(scope="module", autouse=True)
def _stop_unused_checks():
    """Stops a check started for a test that was then not run (-k)."""
    yield
    _CHECKS.stop()


@pytest.mark.parametrize("backend,fixture", list(FIXTURES.items()))
def test_channels_first_gives_the_channels_last_numbers(backend, fixture):
    fixture_path(f"{fixture}_haiku.npz")  # skips when ../shared lacks it
    r = _CHECKS.result(backend)
    assert r["backend"] == backend
    size = r["input_shape"][-1]
    assert r["input_shape"] == [None, 3, size, size]
    assert r["logits_rel_err"] < 1e-4          # DeepMind's logits
    assert r["logits_layout_diff"] < 1e-5      # NCHW vs NHWC, same model
    assert r["features_layout_diff"] < 1e-5
    for key, stride in STRIDES.items():         # NCHW feature maps
        n, c, h, w = r["feature_shapes"][key]
        assert (h, w) == (-(-size // stride),) * 2 and c > 4, key
    error = r["channels_last_shape_error"]
    assert error and "channels_first" in error and "(3, 224, 224)" in error
