"""Step-exact backup and restore (fault tolerance).

`keras.callbacks.BackupAndRestore` restores at epoch granularity: a run
killed mid-epoch repeats the whole epoch from the restored weights, so it
neither loses "at most the work since the checkpoint" nor ends with the
weights of an uninterrupted run. `StepBackup` is the same idea at step
granularity:

* every `save_freq` steps (and at each epoch end) the chief writes the model
  *and optimizer* variables (step counter, momentum, EMA) to
  `<backup_dir>/latest.weights.h5`, atomically (write, then rename) so a
  kill during the write keeps the previous one, and the layers'
  random-generator states (dropout, stochastic depth) to `latest.json`;
* `restore()` loads it before `fit` and returns the global step, from
  which `train.py` resumes mid-epoch with the input stream skipped to that
  step (see `training.data`).

The backup is kept after training ends (it is small next to the model
directory, and `metrics.json` marks the run finished).
"""

import json
import os
import tempfile

import keras
import tensorflow as tf

WEIGHTS = "latest.weights.h5"
META = "latest.json"


def _rng_states(model):
    """The state variables of the layers' `SeedGenerator`s (dropout,
    stochastic depth): not part of Keras weights files, so kept here."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _global_step(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class StepBackup(keras.callbacks.Callback):
    """Saves the full training state every `save_freq` steps.

    Args:
        backup_dir: a local or gs:// directory, used by this run only.
        save_freq: steps between backups.
        write: False on non-chief workers (they only restore).
    """

    def __init__(self, backup_dir, save_freq=100, write=True):
        super().__init__()
        self.backup_dir = str(backup_dir)
        self.save_freq = max(int(save_freq), 1)
        self.write = write
        self._last_saved = 0

    @property
    def weights_path(self):
        return os.path.join(self.backup_dir, WEIGHTS)

    def saved_step(self):
        """The global step of the backup on disk, or None."""
        meta = os.path.join(self.backup_dir, META)
        if not tf.io.gfile.exists(meta) or not tf.io.gfile.exists(
                self.weights_path):
            return None
        with tf.io.gfile.GFile(meta) as f:
            return int(json.load(f)["step"])

    def restore(self, model):
        """Loads the backup into `model` (built and compiled) and returns
        the global step it was taken at (0 when there is none)."""
        if self.saved_step() is None:
            return 0
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.weights_path)
        with tf.io.gfile.GFile(os.path.join(self.backup_dir, META)) as f:
            rng = json.load(f).get("rng", [])
        states = _rng_states(model)
        if len(rng) == len(states):
            for var, value in zip(states, rng):
                var.assign(keras.ops.convert_to_tensor(value, var.dtype))
        step = _global_step(model)
        self._last_saved = step
        return step

    def save(self):
        step = _global_step(self.model)
        if not self.write or step == self._last_saved:
            return
        tf.io.gfile.makedirs(self.backup_dir)
        # Write next to the target then rename: a kill mid-write leaves the
        # previous backup intact. (On gs:// the copy is atomic per object.)
        fd, tmp = tempfile.mkstemp(suffix=".weights.h5")
        os.close(fd)
        try:
            self.model.save_weights(tmp, overwrite=True)
            tf.io.gfile.copy(tmp, self.weights_path + ".tmp", overwrite=True)
            tf.io.gfile.rename(self.weights_path + ".tmp", self.weights_path,
                               overwrite=True)
        finally:
            os.remove(tmp)
        meta = os.path.join(self.backup_dir, META)
        with tf.io.gfile.GFile(meta + ".tmp", "w") as f:
            json.dump({"step": step, "rng": [
                keras.ops.convert_to_numpy(v).tolist()
                for v in _rng_states(self.model)]}, f)
        tf.io.gfile.rename(meta + ".tmp", meta, overwrite=True)
        self._last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if _global_step(self.model) - self._last_saved >= self.save_freq:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()
