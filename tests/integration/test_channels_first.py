"""channels_first: the decision is that the models work under it.

Keras users on the PyTorch backend feed NCHW tensors (torchvision's
layout) and set `keras.config.set_image_data_format("channels_first")`;
Keras's own applications accept it. So every constructor honours it: the
model takes `(channels, height, width)` input and returns NCHW feature maps,
with the same numbers as channels_last (one family per backend, each in a
fresh process: TensorFlow the tiny NFNet, JAX the NF-ResNet-50, PyTorch the
NF-RegNet-B0, all against DeepMind's logits), and a channels_last shape
under channels_first is refused with an error naming the data format.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import fixture_path

SCRIPT = pathlib.Path(__file__).parents[1] / "channels_first_checks.py"
STRIDES = {"P1": 2, "P2": 4, "P3": 8, "P4": 16, "P5": 32}


def run_check(backend, fixture):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    # The repository's copy or ../shared's (skips when neither has it); the
    # script reads the fixture's files from the folder where it was found.
    folder = fixture_path(f"{fixture}_haiku.npz").parent
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu",
               KERAS_NFNETS_FIXTURES=str(folder),
               PYTHONPATH=os.pathsep.join(
                   [str(SCRIPT.parents[1])]
                   + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run([sys.executable, str(SCRIPT), fixture], env=env,
                         capture_output=True, text=True, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"{backend} {fixture} failed:\n{out.stderr[-4000:]}")


@pytest.mark.parametrize("backend,fixture", [
    ("tensorflow", "nfnet_tiny"),
    ("jax", "nf_resnet50_w1"),
    ("torch", "nf_regnet_b0"),
])
def test_channels_first_gives_the_channels_last_numbers(backend, fixture):
    r = run_check(backend, fixture)
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
