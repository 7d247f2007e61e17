"""keras_nfnets.memory: the lean CPU allocator switch.

It has to be applied before TensorFlow's runtime starts, so the working case
runs in a fresh process. No memory or speed numbers here: those come from
`make bench` (docs/performance.md)."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

import keras_nfnets
from training_helpers import check_result

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = r"""
import json, os, sys
import numpy as np
import keras, keras_nfnets
applied = keras_nfnets.use_lean_cpu_allocator() if sys.argv[1] == "lean" else {}
keras.utils.set_random_seed(0)
model = keras_nfnets.NFNet(dict(width=(16, 32, 32, 32), depth=(1, 1, 1, 1),
                                group_width=(8, 8, 8, 8)),
                           weights=None, input_shape=(16, 16, 3), classes=3,
                           stochdepth_rate=0.0)
model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
              loss="sparse_categorical_crossentropy")
x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
y = np.array([0, 1, 2, 0])
losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
print("RESULT " + json.dumps(dict(
    applied=applied, losses=losses,
    env=os.environ.get("TF_ONEDNN_USE_SYSTEM_ALLOCATOR"))))
"""


def _start(mode):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    env.pop("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", None)
    return subprocess.Popen([sys.executable, "-c", _CHILD, mode], cwd=_ROOT,
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc):
    return check_result(proc, timeout=600)


def test_lean_allocator_trains_to_the_same_numbers():
    # The two fresh processes run side by side.
    procs = _start("default"), _start("lean")
    default, lean = (_result(p) for p in procs)
    assert lean["applied"] == {"tensorflow": True,
                               "glibc": sys.platform.startswith("linux")}
    assert lean["env"] == "1" and default["env"] is None
    # Where tensors live does not change a single value.
    assert lean["losses"] == pytest.approx(default["losses"], rel=1e-6)


def test_lean_allocator_refuses_once_tensorflow_started():
    tf.constant(1.0)  # the runtime (and its CPU allocator) now exists
    with pytest.raises(RuntimeError, match="before TensorFlow creates its "
                                           "first tensor"):
        keras_nfnets.use_lean_cpu_allocator()
