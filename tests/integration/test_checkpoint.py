"""The step backup is one atomic unit and leaves nothing behind when its
writer is killed (issue 14, item 10)."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np

from training import checkpoint
from training_helpers import REPO, env, write_config


def _model(tmp_path, seed=0):
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(seed)
    model = keras_nfnets.NFNet(
        config=str(write_config(tmp_path / "c.json")), classes=3,
        input_shape=(16, 16, 3), classifier_activation=None, drop_rate=0.3,
        stochdepth_rate=0.2, seed=seed)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                  agc_clipping=None, jit_compile=False)
    return model


def _step(model):
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3))
    model.train_on_batch(x.astype("float32"), np.zeros((2, 3), "float32"))


def _rng(model):
    return [np.asarray(v) for v in checkpoint._rng_states(model)]  # pylint: disable=protected-access


def test_weights_and_rng_state_are_one_unit(tmp_path):
    """The old layout renamed the weights, then latest.json: a kill between
    the two resumed the new weights with the old dropout RNG state."""
    model = _model(tmp_path)
    backup = checkpoint.StepBackup(tmp_path / "backup", save_freq=1)
    backup.set_model(model)
    _step(model)
    backup.save()
    stale_meta = (tmp_path / "backup" / checkpoint.META).read_bytes()
    _step(model)
    backup.save()
    want = _rng(model)
    # The state a kill between the two renames used to leave behind.
    (tmp_path / "backup" / checkpoint.META).write_bytes(stale_meta)

    fresh = _model(tmp_path, seed=1)
    fresh.optimizer.build(fresh.trainable_variables)
    assert checkpoint.StepBackup(tmp_path / "backup").restore(fresh) == 2
    for a, b in zip(_rng(fresh), want):
        np.testing.assert_array_equal(a, b)
    assert len(want) > 0


_WRITER = """
import sys
sys.path.insert(0, sys.argv[2])
import numpy as np
import keras
from training import checkpoint
inputs = keras.Input((64,))
# ~16 MB of weights: a write takes long enough to be interrupted.
model = keras.Model(inputs, keras.layers.Dense(64)(
    keras.layers.Dense(60000)(inputs)))
model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
model.optimizer.build(model.trainable_variables)
backup = checkpoint.StepBackup(sys.argv[1], save_freq=1)
backup.set_model(model)
print("ready", flush=True)
while True:
    model.optimizer.iterations.assign_add(1)
    backup.save()
"""


def test_killed_backup_writes_leak_nothing(tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    target = tmp_path / "backup"
    for delay in (0.3, 0.8, 1.3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target), str(REPO / "tests")],
            cwd=REPO, env=env(TMPDIR=str(tmpdir)), stdout=subprocess.PIPE,
            text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert os.listdir(tmpdir) == []  # nothing in the temporary folder
    backup = checkpoint.StepBackup(target)
    assert backup.saved_step() >= 1
    # The next save removes what a killed write left next to its target.
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(64)(
        keras.layers.Dense(60000)(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)
    step = backup.restore(model)
    backup.set_model(model)
    model.optimizer.iterations.assign_add(1)
    backup.save()
    assert sorted(os.listdir(target)) == [checkpoint.META, checkpoint.WEIGHTS]
    assert backup.saved_step() == step + 1
