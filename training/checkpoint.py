"""Step-exact backup and restore (fault tolerance).

`keras.callbacks.BackupAndRestore` restores at epoch granularity: a run
killed mid-epoch repeats the whole epoch from the restored weights, so it
neither loses "at most the work since the checkpoint" nor ends with the
weights of an uninterrupted run. `StepBackup` is the same idea at step
granularity:

* every `save_freq` steps (and at each epoch end) the chief writes the model
  *and optimizer* variables (step counter, momentum, EMA) and the layers'
  random-generator states (dropout, stochastic depth; stored as an HDF5
  attribute of the same file) to `<backup_dir>/latest.weights.h5`: one
  file, written under a temporary name next to it and renamed, so the
  backup is one atomic unit (a kill at any moment leaves the previous
  backup or the new one, never a mix) and a killed write leaves nothing
  behind in /tmp (its temporary file is removed by the next save).
  `latest.json` repeats the step for people and scripts (informational);
* `restore()` loads it before `fit` and returns the global step, from
  which `train.py` resumes mid-epoch with the input stream skipped to that
  step (see `training.data`). A backup that does not fit the model's
  optimizer (e.g. written with the EMA, resumed without) is refused.

The backup is kept after training ends (it is small next to the model
directory, and `metrics.json` marks the run finished).
"""

import glob
import json
import os
import tempfile

import keras
import tensorflow as tf

WEIGHTS = "latest.weights.h5"
META = "latest.json"
#: HDF5 attribute of the weights file holding {"step", "rng"}.
STATE_ATTR = "keras_nfnets_backup"


def _rng_states(model):
    """The state variables of the layers' `SeedGenerator`s (dropout,
    stochastic depth): not part of Keras weights files, so kept here."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _global_step(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class BackupError(RuntimeError):
    """A backup that cannot be resumed from, and why."""


def _read_state(path):
    """The {"step", "rng"} stored inside a backup weights file (None for a
    file without it: a backup written before the state moved into it)."""
    import h5py  # pylint: disable=import-outside-toplevel
    with tf.io.gfile.GFile(path, "rb") as f, h5py.File(f, "r") as h5:
        raw = h5.attrs.get(STATE_ATTR)
    if raw is None:
        return None
    return json.loads(raw if isinstance(raw, str) else raw.decode())


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

    def _state(self):
        if not tf.io.gfile.exists(self.weights_path):
            return None
        state = _read_state(self.weights_path)
        if state is None:  # older layout: the state in latest.json
            meta = os.path.join(self.backup_dir, META)
            if not tf.io.gfile.exists(meta):
                return None
            with tf.io.gfile.GFile(meta) as f:
                state = json.load(f)
        return state

    def saved_step(self):
        """The global step of the backup on disk, or None."""
        state = self._state()
        return None if state is None else int(state["step"])

    def restore(self, model):
        """Loads the backup into `model` (built and compiled) and returns
        the global step it was taken at (0 when there is none)."""
        state = self._state()
        if state is None:
            return 0
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(self.weights_path)
        except ValueError as e:
            raise BackupError(
                f"The backup {self.weights_path} (step {state['step']}) does "
                f"not fit this model and optimizer ({e}); resume with the "
                "settings it was written with, or use a new --model_dir."
            ) from e
        step = _global_step(model)
        if step != int(state["step"]):
            raise BackupError(
                f"The backup {self.weights_path} (step {state['step']}) does "
                "not fit this model's optimizer: its step counter was not "
                f"restored (it reads {step}). The run was started with other "
                "optimizer settings (e.g. --ema_decay on/off); resume it with "
                "those, or use a new --model_dir.")
        rng = state.get("rng", [])
        states = _rng_states(model)
        if len(rng) != len(states):
            raise BackupError(
                f"The backup {self.weights_path} holds {len(rng)} random-"
                f"generator states, the model has {len(states)} (dropout / "
                "stochastic depth layers differ): not the same model.")
        for var, value in zip(states, rng):
            var.assign(keras.ops.convert_to_tensor(value, var.dtype))
        self._last_saved = step
        return step

    def _remove_stale_temporaries(self):
        if not str(self.backup_dir).startswith("gs://"):
            for stale in glob.glob(os.path.join(
                    self.backup_dir, f".{WEIGHTS}.*.tmp.weights.h5")):
                os.remove(stale)

    def save(self):
        import h5py  # pylint: disable=import-outside-toplevel
        step = _global_step(self.model)
        if not self.write or step == self._last_saved:
            return
        tf.io.gfile.makedirs(self.backup_dir)
        self._remove_stale_temporaries()  # left by a killed earlier write
        state = json.dumps({"step": step, "rng": [
            keras.ops.convert_to_numpy(v).tolist()
            for v in _rng_states(self.model)]})
        remote = str(self.backup_dir).startswith("gs://")
        # Local: the temporary file lives next to its target (same file
        # system: the rename is atomic; nothing is left in /tmp). gs://:
        # h5py cannot write there, so write locally and copy (the copy of
        # one object is atomic).
        # (save_weights wants the .weights.h5 suffix.)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{WEIGHTS}.", suffix=".tmp.weights.h5",
            dir=None if remote else self.backup_dir)
        os.close(fd)
        try:
            self.model.save_weights(tmp, overwrite=True)
            with h5py.File(tmp, "a") as f:
                f.attrs[STATE_ATTR] = state
            if remote:
                tf.io.gfile.copy(tmp, self.weights_path, overwrite=True)
            else:
                os.replace(tmp, self.weights_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        # Informational copy of the step (the backup itself is the file).
        meta = os.path.join(self.backup_dir, META)
        with tf.io.gfile.GFile(meta + ".tmp", "w") as f:
            f.write(state)
        tf.io.gfile.rename(meta + ".tmp", meta, overwrite=True)
        self._last_saved = step

    def on_train_batch_end(self, batch, logs=None):
        if _global_step(self.model) - self._last_saved >= self.save_freq:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()
