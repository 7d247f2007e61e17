"""The non-finite-step skip: a step whose gradients are not all finite is
skipped (no weight, slot, EMA or iteration update) and counted once in the
optimizer's `skipped_steps` variable, on every path:

* `apply_or_skip` (what `AGC.apply` calls): TensorFlow on one device; under
  `tf.distribute` the flag is all-reduced so that every replica agrees
  (`merge_call` and `reduce` where the strategy needs merge calls,
  `all_reduce` in the replica context otherwise); JAX, eagerly and in
  Keras's stateless train step (apply, then keep the old values where the
  step was not finite: JAX cannot assign variables in a `lax.cond`);
  PyTorch (`ops.cond`).
* `SkipCountingLossScaleOptimizer`: Keras's `LossScaleOptimizer`
  (`mixed_float16`) skips non-finite (scaled) steps itself, halving the loss
  scale, without calling the optimizer it wraps; this subclass counts those
  skips in the wrapped optimizer's `skipped_steps`.
  `NFNetModel.compile(agc_clipping=...)` installs it under `mixed_float16`.

The skip sits beside the clip (`keras_nfnets.optim.clip`), not inside it.
"""

import keras
from keras import ops

from keras_nfnets import compat


def _all_finite(tensors):
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in tensors]))


def nonfinite_flag(grads, unit_norms=()):
    """0 when every gradient in `grads` is finite, else 1 (int32); `None`
    gradients are ignored.

    `unit_norms`: `(indices, tensor)` pairs, unit norms of the gradients at
    `indices` that were computed anyway (AGC's, `clip.clip_and_norms`).
    Those gradients are tested through these small tensors: a norm
    `sqrt(sum(g**2))` is finite only if every element is (inf and nan
    propagate, squares do not cancel). Only where a norm is not finite (a
    nan or inf, or squares that overflow) are the gradients themselves
    tested, so the flag is the same as without them.

    Example:
    >>> int(nonfinite_flag([keras.ops.ones(2), None]))
    0
    """
    normed = {i for indices, _ in unit_norms for i in indices}
    finite = [ops.all(ops.isfinite(g)) for i, g in enumerate(grads)
              if g is not None and i not in normed]
    if normed:
        quick = _all_finite([t for _, t in unit_norms])
        finite.append(ops.cond(
            quick, lambda: quick,
            lambda: _all_finite([grads[i] for i in sorted(normed)])))
    if not finite:
        return ops.convert_to_tensor(0, "int32")
    return 1 - ops.cast(ops.all(ops.stack(finite)), "int32")


def _count_skipped(optimizer):
    optimizer.skipped_steps.assign_add(1)


def _tf_apply_or_skip(optimizer, grads, trainable_variables, apply_fn,
                      unit_norms=()):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if tf.distribute.in_cross_replica_context():
        raise ValueError("apply() must be called in a replica context.")
    context = tf.distribute.get_replica_context()
    if compat.strategy_uses_merge_call():
        def cross_replica(distribution, grads, trainable_variables):
            bad = distribution.extended.call_for_each_replica(
                nonfinite_flag, args=(grads,))
            # All replicas agree: skip if any replica saw inf/nan (the
            # all-reduced gradient would carry it to every replica).
            finite = ops.equal(distribution.reduce(
                tf.distribute.ReduceOp.SUM, bad, axis=None), 0)

            def apply_all():
                distribution.extended.call_for_each_replica(
                    apply_fn, args=(grads, trainable_variables))

            ops.cond(finite, apply_all, lambda: _count_skipped(optimizer))

        # A cond in the replica context whose branch calls merge_call (as
        # apply does) is not allowed, hence the cross-replica function.
        context.merge_call(cross_replica, args=(grads, trainable_variables))
        return
    bad = nonfinite_flag(grads, unit_norms)
    if context.num_replicas_in_sync > 1:
        bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    ops.cond(ops.equal(bad, 0),
             lambda: apply_fn(grads, trainable_variables),
             lambda: _count_skipped(optimizer))


def _select_apply_or_skip(optimizer, grads, trainable_variables, apply_fn,
                          built_on, unit_norms=()):
    """JAX: apply, then keep the old values of every weight and optimizer
    variable where the gradient was not finite. Works eagerly and inside
    Keras's stateless JAX train step."""
    finite = ops.equal(nonfinite_flag(grads, unit_norms), 0)
    if trainable_variables is None:  # Keras's stateless JAX train step
        trainable_variables = built_on
    state = list(trainable_variables) + list(optimizer.variables)
    old = [v.value for v in state]
    apply_fn(grads, trainable_variables)
    for v, before in zip(state, old):
        v.assign(ops.where(finite, v.value, before))
    optimizer.skipped_steps.assign_add(
        1 - ops.cast(finite, optimizer.skipped_steps.dtype))


def apply_or_skip(optimizer, grads, trainable_variables, apply_fn,
                  built_on=(), unit_norms=()):
    """Runs `apply_fn(grads, trainable_variables)` when every gradient is
    finite (on every replica), else counts the step in
    `optimizer.skipped_steps`.

    Args:
        optimizer: a built optimizer with an int `skipped_steps` variable.
        grads, trainable_variables: as passed to `Optimizer.apply`
            (`trainable_variables` is `None` in JAX's stateless step).
        apply_fn: the update, `apply_fn(grads, trainable_variables)`.
        built_on: the variables `optimizer` was built with (JAX's stateless
            step, where `trainable_variables` is `None`).
        unit_norms: unit norms of some of `grads`, computed anyway (see
            `nonfinite_flag`); not used where a multi-replica strategy
            tests each replica's gradients in a merge call.

    Example (what `AGC.apply` does):
    ```python
    apply_or_skip(self, grads, variables, self._apply_checked,
                  built_on=self.agc_built_on.value)
    ```
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        _tf_apply_or_skip(optimizer, grads, trainable_variables, apply_fn,
                          unit_norms)
    elif backend == "jax":
        _select_apply_or_skip(optimizer, grads, trainable_variables,
                              apply_fn, built_on, unit_norms)
    else:
        ops.cond(ops.equal(nonfinite_flag(grads, unit_norms), 0),
                 lambda: apply_fn(grads, trainable_variables),
                 lambda: _count_skipped(optimizer))


# The training program registered it under this package; kept so that its
# saved optimizers load, then re-registered under keras_nfnets.
@keras.saving.register_keras_serializable(package="keras_nfnets")
@keras.saving.register_keras_serializable(package="keras_nfnets_training")
class SkipCountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """`LossScaleOptimizer` (`mixed_float16`) that counts the steps it skips
    in the wrapped optimizer's `skipped_steps` (an `AGC`'s): with non-finite
    (scaled) gradients it halves the loss scale and never calls the wrapped
    optimizer, so the wrapped optimizer's own count would miss them.

    Example:
    ```python
    opt = SkipCountingLossScaleOptimizer(keras_nfnets.AGC(SGD(0.1)))
    ```
    """

    def __init__(self, inner_optimizer, name="loss_scale_optimizer",
                 **kwargs):
        super().__init__(inner_optimizer, name=name, **kwargs)

    def _counter(self):
        return getattr(self.inner_optimizer, "skipped_steps", None)

    def apply(self, grads, trainable_variables=None):
        super().apply(grads, trainable_variables)
        counter = self._counter()
        if counter is None:
            return
        if keras.backend.backend() != "tensorflow":
            counter.assign_add(1 - ops.cast(self.check_finite(grads),
                                            counter.dtype))
            return
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        def count(distribution, finite):
            # The first replica's verdict, as LossScaleOptimizer's.
            finite = distribution.experimental_local_results(finite)[0]
            counter.assign_add(1 - ops.cast(finite, counter.dtype))

        tf.distribute.get_replica_context().merge_call(
            count, args=(self.check_finite(grads),))

    def stateless_apply(self, optimizer_variables, grads,
                        trainable_variables):
        new_trainable, new_optimizer = super().stateless_apply(
            optimizer_variables, grads, trainable_variables)
        counter = self._counter()
        if counter is None:
            return new_trainable, new_optimizer
        mapping = list(zip(self.variables, new_optimizer))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            counter.assign_add(1 - ops.cast(self.check_finite(grads),
                                            counter.dtype))
            value = scope.get_current_value(counter)
        new_optimizer = [value if v is counter else n
                         for v, n in zip(self.variables, new_optimizer)]
        return new_trainable, new_optimizer
