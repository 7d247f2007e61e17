"""DeepMind's NFNet optimizer recipe for Keras.

* `NFNetSGD`: SGD with (Nesterov) momentum and *coupled* weight decay, the
  update of DeepMind's `optim.SGD`:

      g <- g + weight_decay * w        (not for gains, biases, skip gains)
      m <- momentum * m + g
      w <- w - lr * (g + momentum * m)  (Nesterov; `w - lr * m` otherwise)

  With `use_ema=True` it keeps DeepMind's exponential moving average of the
  weights, initialised to the initial weights and warmed up as
  `decay_t = min(ema_momentum, (1 + t) / (10 + t))` (Keras's own EMA uses a
  fixed momentum, which is not DeepMind's). The averages are optimizer
  variables, so they are saved in `.keras` files and checkpoints; evaluate
  with them through `keras.callbacks.SwapEMAWeights`.
* `WarmupCosineDecay`: linear warmup from 0, then cosine decay to 0.
* `nfnet_optimizer(...)`: the whole recipe in one call, wrapped in AGC.

The AGC clip itself lives in `keras_nfnets.optim`; `nfnet_optimizer` returns
`AGC(NFNetSGD(...))`, so the gradient is clipped first (on the reduced
gradient) and the decay is added after clipping, as in DeepMind's
`SGD_AGC`.
"""

import math
import re

import keras
from keras import ops

from keras_nfnets import compat
from keras_nfnets.optim.agc import AGC

_PACKAGE = "keras_nfnets"

#: DeepMind excludes haiku params named `scale`/`offset`/`b` or containing
#: `gain` or `bias` from weight decay. In Keras names: `bias`, `gain`,
#: `skip_gain`, and a BatchNorm's `gamma`/`beta` (DeepMind's scale/offset).
DEFAULT_WEIGHT_DECAY_EXCLUDE = ("gain", "bias", "^b$", "^scale$", "^offset$",
                                "^gamma$", "^beta$")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NFNetSGD(compat.EMAHooks, keras.optimizers.Optimizer):
    """SGD with Nesterov momentum and coupled L2 weight decay (DeepMind's).

    Args:
        learning_rate: float or `LearningRateSchedule`.
        momentum: momentum coefficient (0.9).
        nesterov: Nesterov momentum (True).
        weight_decay: L2 coefficient added to the gradient, `g + wd * w`,
            before momentum (2e-5). It is "coupled": it goes through
            momentum and the learning rate, unlike Keras's decoupled
            `weight_decay` argument of other optimizers.
        weight_decay_exclude: regular expressions searched in each
            variable's *name* (its last path component); matching variables
            get no decay. Defaults to DeepMind's rule (gains, biases, skip
            gains; `b`, `scale`, `offset`, `gamma`, `beta`).
        use_ema: keep an exponential moving average of the weights.
        ema_momentum: the EMA decay (DeepMind: 0.99999), warmed up as
            `min(ema_momentum, (1 + t) / (10 + t))` at step `t`.
        **kwargs: the other `keras.optimizers.Optimizer` arguments
            (`clipnorm`, `gradient_accumulation_steps`, ...).

    Example:
    >>> opt = NFNetSGD(0.1, momentum=0.9, nesterov=True, weight_decay=2e-5)
    >>> model.compile(optimizer=keras_nfnets.AGC(opt), loss=...)
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True,
                 weight_decay=2e-5,
                 weight_decay_exclude=DEFAULT_WEIGHT_DECAY_EXCLUDE,
                 use_ema=False, ema_momentum=0.99999,
                 ema_overwrite_frequency=None, name="nfnet_sgd", **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, weight_decay=None,
                         use_ema=use_ema, ema_momentum=ema_momentum,
                         ema_overwrite_frequency=ema_overwrite_frequency,
                         name=name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.l2_weight_decay = float(weight_decay or 0.0)
        self.weight_decay_exclude = tuple(weight_decay_exclude or ())
        self.decay_flags = []
        if use_ema:
            self.check_ema_hooks()

    def uses_weight_decay(self, variable):
        """Whether `variable` (a Keras variable) gets the coupled decay."""
        if not self.l2_weight_decay:
            return False
        name = variable.name.split("/")[-1].split(":")[0]
        return not any(re.search(p, name) for p in self.weight_decay_exclude)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.decay_flags = [self.uses_weight_decay(v) for v in variables]
        self.momentums = (self.add_optimizer_variables(variables, "momentum")
                          if self.momentum else [None] * len(variables))
        if self.use_ema:
            # DeepMind's EMA starts from the initial weights. A copy: on JAX
            # an assigned array is shared, and a train step that donates
            # its state cannot donate one buffer twice.
            for var, average in zip(variables, compat.ema_averages(self)):
                if average is not None:
                    average.assign(ops.copy(var))

    def update_step(self, gradient, variable, learning_rate):
        index = compat.variable_index(self, variable)
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.decay_flags[index]:
            g = g + ops.cast(self.l2_weight_decay, variable.dtype) * variable
        if self.momentum:
            m = self.momentums[index]
            mu = ops.cast(self.momentum, variable.dtype)
            self.assign(m, mu * m + g)
            g = g + mu * m if self.nesterov else ops.convert_to_tensor(m)
        self.assign_sub(variable, lr * g)

    def apply(self, grads, trainable_variables=None):
        calls = self.ema_hook_calls
        super().apply(grads, trainable_variables)
        if self.use_ema and self.ema_hook_calls == calls:
            raise compat.not_called(
                "_update_model_variables_moving_average",
                "the EMA update: NFNetSGD's DeepMind EMA would not be kept")

    def update_ema(self, trainable_variables):
        """DeepMind's EMA update (Keras calls it after each update)."""
        if not self.use_ema:
            return
        step = ops.cast(self.iterations, "float32")
        decay = ops.minimum(ops.cast(self.ema_momentum, "float32"),
                            (1.0 + step) / (10.0 + step))
        for var, average in zip(trainable_variables,
                                compat.ema_averages(self)):
            if average is None:
                continue
            d = ops.cast(decay, average.dtype)
            average.assign(d * average + (1.0 - d) * ops.cast(var,
                                                             average.dtype))

    def overwrite_with_ema(self, trainable_variables):
        """Sets the weights to their EMA (`finalize_variable_values`,
        `keras.callbacks.SwapEMAWeights`)."""
        # As Keras's, but with copies: on JAX the weights and their average
        # would share one buffer, and the next jitted step that donates the
        # weights (evaluate, fit) would delete the average with them.
        averages = compat.ema_averages(self)
        if len(trainable_variables) != len(averages):
            raise ValueError(
                f"The number of model variables ({len(trainable_variables)}) "
                "to overwrite with their EMA does not match the number the "
                f"optimizer was built with ({len(averages)}). Check that "
                "the optimizer was built on this model.")
        for var, average in zip(trainable_variables, averages):
            if average is not None:
                var.assign(ops.copy(average))

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov,
                      weight_decay=self.l2_weight_decay,
                      weight_decay_exclude=list(self.weight_decay_exclude))
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `base_learning_rate`, then cosine to `end`.

        lr(t) = base * t / warmup_steps                      t < warmup_steps
        lr(t) = end + (base - end) * 0.5 * (1 + cos(pi * p)) otherwise,
                p = (t - warmup_steps) / (total_steps - warmup_steps)

    `t` is the optimizer's iteration count (0 on the first step), as
    DeepMind's `global_step`. After `total_steps` it stays at `end`.

    Example:
    >>> lr = WarmupCosineDecay(0.1 * 1024 / 256, warmup_steps=5 * 1251,
    ...                        total_steps=360 * 1251)
    """

    def __init__(self, base_learning_rate, warmup_steps, total_steps,
                 end_learning_rate=0.0, name="warmup_cosine_decay"):
        super().__init__()
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must exceed warmup_steps "
                f"({warmup_steps}).")
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.end_learning_rate = float(end_learning_rate)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        base, end = self.base_learning_rate, self.end_learning_rate
        warmup = base * step / float(max(self.warmup_steps, 1))
        progress = ops.clip(
            (step - self.warmup_steps) / float(self.total_steps -
                                               self.warmup_steps), 0.0, 1.0)
        cosine = end + (base - end) * 0.5 * (1.0 + ops.cos(math.pi *
                                                           progress))
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate,
                "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps,
                "end_learning_rate": self.end_learning_rate,
                "name": self.name}


def nfnet_optimizer(batch_size, steps_per_epoch, epochs, base_lr=0.1,
                    warmup_epochs=5, momentum=0.9, nesterov=True,
                    weight_decay=2e-5, clipping=0.01, eps=1e-3,
                    exclude=("linear/kernel",), use_ema=True,
                    ema_momentum=0.99999):
    """DeepMind's NFNet training recipe as one optimizer.

    SGD, Nesterov momentum 0.9, coupled weight decay 2e-5 (none on gains,
    biases, skip gains), learning rate `base_lr * batch_size / 256` with
    `warmup_epochs` of linear warmup then cosine decay to zero, an EMA of the
    weights (decay 0.99999, warmed up), and adaptive gradient clipping
    (`clipping`, `eps`) on every variable except `exclude` (the classifier
    weight). Returns `AGC(NFNetSGD(...))`.

    Example:
    ```python
    model = keras_nfnets.NFNetF0(weights=None)
    model.compile(optimizer=keras_nfnets.nfnet_optimizer(
                      batch_size=4096, steps_per_epoch=312, epochs=360),
                  loss=keras.losses.CategoricalCrossentropy(
                      label_smoothing=0.1))  # an AGC optimizer: not rewrapped
    model.fit(train_ds, epochs=360,
              callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True)])
    ```
    """
    schedule = WarmupCosineDecay(
        base_lr * batch_size / 256.0,
        warmup_steps=int(warmup_epochs * steps_per_epoch),
        total_steps=int(epochs * steps_per_epoch))
    sgd = NFNetSGD(schedule, momentum=momentum, nesterov=nesterov,
                   weight_decay=weight_decay, use_ema=use_ema,
                   ema_momentum=ema_momentum)
    return AGC(sgd, clipping=clipping, eps=eps, exclude=exclude)
