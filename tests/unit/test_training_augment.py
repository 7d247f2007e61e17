"""training/augment.py: RandAugment in tf.data on any Keras backend."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras
from training import augment
from training_helpers import REPO, env


def _numpy_histogram(x, lo, hi, nbins):
    bins = np.clip(((x.astype("float32") - lo) * (nbins - 1) / (hi - lo)
                    ).astype("int32"), 0, nbins - 1)
    return np.bincount(bins.ravel(), minlength=nbins)


@pytest.mark.parametrize("value_range", [(0, 255), (-1, 1)])
def test_equalization_histogram_counts_every_bin(value_range):
    layer = augment.RandAugment(2, 5).equalization
    rng = np.random.default_rng(0)
    lo, hi = value_range
    x = rng.uniform(lo - 5, hi + 5, (37, 23)).astype("float32")
    got = layer._custom_histogram_fixed_width(  # pylint: disable=protected-access
        tf.constant(x), value_range, 256)
    assert got.shape == (256,)
    np.testing.assert_array_equal(got.numpy(),
                                  _numpy_histogram(x, lo, hi, 256))


def test_equalized_images_equal_keras_own_layer():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 24, 3)).astype("float32")
    images[2, ..., 1] = 7.0  # one flat channel: left as it is
    ours = augment.RandAugment(2, 5).equalization
    theirs = keras.layers.Equalization(value_range=(0, 255))
    np.testing.assert_array_equal(np.asarray(ours(images)),
                                  np.asarray(theirs(images)))


_TRACE = """
import tensorflow as tf
from training import augment
layer = augment.RandAugment(2, 5)
fn = tf.function(lambda image, seed: layer.augment(image, seed))
graph = fn.get_concrete_function(tf.TensorSpec((32, 32, 3), tf.float32),
                                 tf.TensorSpec((2,), tf.int32)).graph
ops = len(graph.get_operations())
for f in graph._functions.values():  # the branches of tf.cond/case
    ops += len(f.definition.node_def)
print("OPS", ops)
"""


def test_tf_data_augmentation_stays_small_under_jax():
    """Regression: under KERAS_BACKEND=jax, Keras's Equalization counted its
    histogram with a 256-step loop, ~4,600 ops per traced augmentation
    (25 s of a tiny JAX training run was tracing it in tf.data)."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    counts = {}
    for backend in ("tensorflow", "jax"):
        out = subprocess.run([sys.executable, "-c", _TRACE], cwd=REPO,
                             env=env(KERAS_BACKEND=backend,
                                     JAX_PLATFORMS="cpu"),
                             capture_output=True, text=True, timeout=300)
        lines = [l for l in out.stdout.splitlines() if l.startswith("OPS")]
        assert lines, out.stderr[-3000:]
        counts[backend] = int(lines[0].split()[1])
    print(counts)
    assert counts["jax"] <= counts["tensorflow"] + 50, counts
