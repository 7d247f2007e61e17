"""The resumable fit: restore the step backup, then run `model.fit` over the
steps that remain, cut into whole Keras epochs where it can.

    schedule = Schedule.of(num_train=50_000, batch_size=4096, epochs=360)
    segments(step=7, steps_per_epoch=5, total_steps=14, epochs=3)
    # [(1, 2, 3), (2, 3, 4)]: the rest of epoch 1, then the last partial one
"""

import contextlib
import dataclasses

import keras
import tensorflow as tf
from absl import logging

from keras_nfnets import compat

from . import checkpoint
from . import data
from . import strategy as strategy_lib
from .errors import UsageError


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long a run trains: `total_steps` in Keras epochs of
    `steps_per_epoch` (`epochs` of them, the last maybe partial)."""
    steps_per_epoch: int
    total_steps: int
    epochs: int

    @classmethod
    def of(cls, num_train, batch_size, epochs, train_steps=None,
           steps_per_epoch=None):
        """From the flags: --train_steps wins over --epochs; an epoch is one
        pass over the training split unless --steps_per_epoch says."""
        per_epoch = steps_per_epoch or max(num_train // batch_size, 1)
        total = train_steps or max(int(round(epochs * per_epoch)), 1)
        return cls(per_epoch, total, -(-total // per_epoch))


def segments(step, steps_per_epoch, total_steps, epochs):
    """The `fit` calls that take a run from `step` to `total_steps`, as
    (first epoch, end epoch, steps per epoch): Keras runs whole epochs of
    one length, so the rest of an interrupted epoch and a last partial
    epoch are calls of their own."""
    out = []
    epoch, done = divmod(step, steps_per_epoch)
    if done and step < total_steps:
        out.append((epoch, epoch + 1,
                    min(steps_per_epoch - done, total_steps - step)))
        epoch += 1
    full_epochs = total_steps // steps_per_epoch
    if full_epochs > epoch:
        out.append((epoch, full_epochs, steps_per_epoch))
        epoch = full_epochs
    last = total_steps - max(full_epochs * steps_per_epoch, step)
    if last > 0 and epoch < epochs:
        out.append((epoch, epoch + 1, last))
    return out


def current_step(model):
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def fit(model, strategy, source, train_input, schedule, callbacks, backup,
        on_restored=None, swap_ema=True):
    """Runs (or resumes) training up to `schedule.total_steps`: restores
    `backup`, calls `on_restored`, then fits each segment on the input
    `train_input` (a data.TrainInput) started at the step reached. Returns
    the History of the last fit call. With `swap_ema=False` the model
    keeps its raw (training) weights at the end; `swap_in_ema` then swaps
    the EMA in and returns the raw ones."""
    try:
        step = backup.restore(model)
    except checkpoint.BackupError as e:
        raise UsageError(str(e)) from e
    if on_restored is not None:
        on_restored()
    if step:
        logging.info("Resuming from the backup at step %d.", step)
        print(f"Resuming from step {step}/{schedule.total_steps}.",
              flush=True)
    todo = segments(step, schedule.steps_per_epoch, schedule.total_steps,
                    schedule.epochs)
    history = None
    for i, (first, end, steps) in enumerate(todo):
        final = swap_ema and i == len(todo) - 1
        # A partial fit (the rest of an interrupted epoch) must not end by
        # swapping the EMA into the model, which Keras does at fit's end.
        with (contextlib.nullcontext() if final
              else compat.keep_training_weights(model.optimizer)):
            dataset = strategy.distribute_datasets_from_function(
                data.train_dataset_fn(source, dataclasses.replace(
                    train_input, start_step=current_step(model))))
            history = model.fit(
                dataset, initial_epoch=first, epochs=end,
                steps_per_epoch=steps, callbacks=callbacks,
                verbose=1 if strategy_lib.is_chief(strategy) else 0)
    if history is None and swap_ema:  # the backup was after the last step
        model.optimizer.finalize_variable_values(model.trainable_variables)
    return history


def swap_in_ema(model):
    """After `fit(..., swap_ema=False)`: swaps the EMA weights into the
    model (as Keras does at fit's end) and returns copies of the raw
    weights it replaced, or None when the optimizer keeps no EMA."""
    if not uses_ema(model):
        return None
    raw = copy_weights(model)
    model.optimizer.finalize_variable_values(model.trainable_variables)
    return raw


def uses_ema(model):
    """Whether the model's optimizer keeps an EMA of the weights."""
    return bool(getattr(model.optimizer, "use_ema", False))


def copy_weights(model):
    """Copies (on their devices) of the model's trainable weights."""
    return [keras.ops.copy(v.value) for v in model.trainable_variables]


def swap_weights(model, values):
    """Assigns `values` (from `copy_weights`) to the trainable weights and
    returns copies of the ones they replaced."""
    before = copy_weights(model)
    for variable, value in zip(model.trainable_variables, values):
        variable.assign(value)
    return before


@contextlib.contextmanager
def naming_unreadable_images(source, split):
    """Turns a decoding failure of the input pipeline into a UsageError that
    names the unreadable files of `split` (folder datasets)."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        error = data.unreadable_error(source, split)
        if error is None:
            raise
        raise UsageError(str(error)) from e
