"""mixed_float16 in the training program: a LossScaleOptimizer that counts
the steps it skips in the wrapped AGC's `skipped_steps`."""


def _make_skip_counting_loss_scale_optimizer():
    import keras  # pylint: disable=import-outside-toplevel
    from keras import ops  # pylint: disable=import-outside-toplevel

    @keras.saving.register_keras_serializable(package="keras_nfnets_training")
    class SkipCountingLossScaleOptimizer(
            keras.optimizers.LossScaleOptimizer):
        """`LossScaleOptimizer` (mixed_float16) that counts the steps it
        skips in the wrapped `AGC`'s `skipped_steps`: with non-finite
        (scaled) gradients it halves the loss scale and never calls the
        wrapped optimizer, so AGC's own count would miss them."""

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

    return SkipCountingLossScaleOptimizer


def SkipCountingLossScaleOptimizer(optimizer):  # pylint: disable=invalid-name
    """mixed_float16: a LossScaleOptimizer around `optimizer` (an AGC) that
    counts its skipped non-finite steps in `optimizer.skipped_steps`."""
    global _SKIP_COUNTING  # pylint: disable=global-statement
    if _SKIP_COUNTING is None:
        _SKIP_COUNTING = _make_skip_counting_loss_scale_optimizer()
    return _SKIP_COUNTING(optimizer, name="loss_scale_optimizer")


_SKIP_COUNTING = None
