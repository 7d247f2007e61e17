"""Adaptive gradient clipping (AGC), exactly as DeepMind's `SGD_AGC`.

AGC (Brock et al., 2021, section 4) clips each *unit* of a gradient (the
slice that feeds one output unit) by the ratio of its norm to the norm of
the matching unit of the weights:

    ||G_i|| > clipping * max(||W_i||, eps)
        =>  G_i <- G_i * clipping * max(||W_i||, eps) / max(||G_i||, 1e-6)

* `unitwise_norm` and `adaptive_clip_grads` are the pure functions
  (`keras.ops` only, any backend).
* `AGC` is an optimizer wrapper that applies them inside any Keras
  optimizer, per variable, at the point where Keras hands the optimizer the
  *reduced* (global-batch, cross-replica mean) gradient. It is what
  `NFNetModel.compile(agc_clipping=...)` installs, and what a user puts
  around their own optimizer when they build their own model around an NFNet
  backbone.

Where the clip happens
----------------------
Keras's TensorFlow optimizer all-reduces the replicas' gradients inside
`apply()`, *after* the generic `clipnorm`/`clipvalue` step. Clipping in
`apply()` or in a custom `train_step` would therefore clip each replica's
share of the gradient (not DeepMind's algorithm), and reducing in the train
step as well would reduce twice. `AGC` instead hooks the wrapped optimizer's
per-variable update after the all-reduce (`_distributed_tf_update_step`) on
TensorFlow and clips inside each variable's update: the clip sees the
summed gradient of the global batch (Keras scales each replica's loss by
`1 / num_replicas`, so that sum is the global-batch mean), is computed
identically on every replica from the mirrored weights, and nothing is
reduced twice. On JAX (gradients are already global arrays under
`keras.distribution`) and PyTorch it hooks `_backend_update_step`, which
receives the gradients that go into `update_step`. Either way the clipped
gradient is the one the wrapped optimizer's `update_step` uses, after its
own loss-scale unscaling and gradient accumulation.

Mixed precision: under `mixed_float16`, Keras wraps the compiled optimizer in
a `LossScaleOptimizer` (outermost), which unscales before it calls `AGC`, so
AGC always sees unscaled gradients. Under `mixed_bfloat16` (and float16)
variables are float32, so gradients, norms and clipping are float32.
"""

import warnings

import keras
from keras import ops
from keras.src.utils import tracking

_PACKAGE = "keras_nfnets"

#: DeepMind's guard on the gradient norm in the divisor.
GRAD_NORM_FLOOR = 1e-6


def unitwise_norm(x):
    """The unit-wise L2 norm used by AGC (DeepMind's `unitwise_norm`).

    * scalars and vectors (any tensor with at most one non-unit dimension):
      the norm of the whole tensor;
    * rank-2 and rank-3 tensors (dense kernels `(in, out)`, multi-head
      linears): the norm over axis 0 (the inputs) of each output unit, shape
      `(1, out)` / `(1, ...)`;
    * rank-4 tensors (HWIO conv kernels): the norm over H, W and I of each
      output channel, shape `(1, 1, 1, out)`.

    The result broadcasts against `x`.

    Example:
    >>> w = keras.ops.ones((3, 3, 8, 16))
    >>> unitwise_norm(w).shape          # sqrt(3 * 3 * 8) per output channel
    (1, 1, 1, 16)
    """
    x = ops.convert_to_tensor(x)
    shape = tuple(x.shape)
    if sum(1 for d in shape if d != 1) <= 1:  # jnp.squeeze(x).ndim <= 1
        return ops.sqrt(ops.sum(ops.square(x)))
    if len(shape) in (2, 3):
        axis = 0
    elif len(shape) == 4:
        axis = (0, 1, 2)
    else:
        raise ValueError(
            f"unitwise_norm: got a tensor of shape {shape}; AGC supports "
            "scalars, vectors, rank-2/3 (dense) and rank-4 (HWIO conv) "
            "tensors.")
    return ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))


def clip_gradient(grad, param, clipping=0.01, eps=1e-3):
    """AGC for one gradient/parameter pair (see `adaptive_clip_grads`)."""
    if grad is None:
        return None
    grad = ops.convert_to_tensor(grad)
    param = ops.cast(ops.convert_to_tensor(param), grad.dtype)
    param_norm = ops.maximum(unitwise_norm(param),
                             ops.cast(eps, grad.dtype))
    grad_norm = unitwise_norm(grad)
    max_norm = param_norm * ops.cast(clipping, grad.dtype)
    trigger = ops.greater(grad_norm, max_norm)
    clipped = grad * (max_norm / ops.maximum(
        grad_norm, ops.cast(GRAD_NORM_FLOOR, grad.dtype)))
    return ops.where(trigger, clipped, grad)


def adaptive_clip_grads(grads, variables, clipping=0.01, eps=1e-3):
    """Adaptive gradient clipping of a list of gradients.

    Each gradient unit `G_i` (see `unitwise_norm`) whose norm exceeds
    `clipping * max(||W_i||, eps)` is rescaled to exactly that norm (the
    divisor is floored at 1e-6); the others pass unchanged. `None` gradients
    stay `None`. This is the pure function; to clip inside training use
    `keras_nfnets.AGC` or `NFNetModel.compile(agc_clipping=...)`.

    Args:
        grads: list of gradients.
        variables: the matching list of parameters (variables or tensors).
        clipping: the clipping threshold lambda (DeepMind: 0.01 for NFNets at
            batch size 4096; larger for smaller batches).
        eps: floor of the parameter norm, so zero-initialised weights can
            still move (DeepMind: 1e-3).

    Returns:
        The list of clipped gradients.

    Example:
    >>> grads = tape.gradient(loss, model.trainable_variables)
    >>> grads = adaptive_clip_grads(grads, model.trainable_variables, 0.01)
    """
    grads, variables = list(grads), list(variables)
    if len(grads) != len(variables):
        raise ValueError(
            f"adaptive_clip_grads: got {len(grads)} gradients for "
            f"{len(variables)} variables.")
    return [clip_gradient(g, v, clipping, eps)
            for g, v in zip(grads, variables)]


def _matches(path, patterns):
    return any(path == p or path.startswith(p.rstrip("/") + "/")
               for p in patterns)


def _normalize_exclude(exclude):
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    return tuple(exclude)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AGC(keras.optimizers.Optimizer):
    """Wraps any Keras optimizer with adaptive gradient clipping.

    The clip is applied per variable to the reduced (global-batch) gradient,
    right before the wrapped optimizer's `update_step`; under `tf.distribute`
    it is the cross-replica mean gradient that is clipped, once, as in
    DeepMind's code (see the module docstring). A step whose gradients are
    not all finite is skipped (no weight, slot, EMA or iteration update) and
    counted in `skipped_steps`.

    Args:
        optimizer: the optimizer to wrap (instance, name or config).
        clipping: the AGC threshold lambda. `None` or 0 disables clipping
            (the non-finite-step guard stays).
        eps: floor of the unit-wise parameter norm.
        exclude: variables that are not clipped, given by variable path
            (`"linear/kernel"`) or by layer path (`"linear"`, `"head"`: all
            variables of that layer). DeepMind does not clip the classifier
            weight (`linear/w`) but does clip its bias, which is the
            default `("linear/kernel",)`. For your own head, pass its name,
            e.g. `exclude=("predictions/kernel",)` or `exclude="predictions"`.
            A pattern that matches no variable triggers a warning.
        skip_nonfinite: skip steps with inf/nan gradients (default True).
        name: the optimizer name.

    Example (fine-tuning an NFNet backbone with your own head):
    ```python
    backbone = keras_nfnets.NFNetF0(include_top=False, pooling="avg")
    inputs = keras.Input((192, 192, 3))
    outputs = keras.layers.Dense(5, name="head")(backbone(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras_nfnets.AGC(keras.optimizers.SGD(0.01, momentum=0.9),
                                   clipping=0.01, exclude=("head/kernel",)),
        loss="sparse_categorical_crossentropy")
    ```
    """

    def __init__(self, optimizer, clipping=0.01, eps=1e-3,
                 exclude=("linear/kernel",), skip_nonfinite=True, name=None,
                 **kwargs):
        if kwargs:
            raise ValueError(
                "AGC does not take the base optimizer arguments "
                f"{sorted(kwargs)}; set them on the wrapped optimizer.")
        super().__init__(learning_rate=0.0, name=name)
        optimizer = keras.optimizers.get(optimizer)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                "Wrap the LossScaleOptimizer around AGC, not AGC around it "
                "(Keras's compile does this for you under mixed_float16), so "
                "AGC sees unscaled gradients.")
        self.inner_optimizer = optimizer
        if clipping is not None and not 0 <= float(clipping) < float("inf"):
            raise ValueError(f"AGC clipping={clipping!r}: must be a finite "
                             "number >= 0 (0 or None turns clipping off).")
        self.clipping = None if not clipping else float(clipping)
        self.eps = float(eps)
        self.exclude = _normalize_exclude(exclude)
        self.skip_nonfinite = bool(skip_nonfinite)
        self._clip_mask = {}

    # ------------------------------------------------------------------ build
    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        self.skipped_steps = self.add_variable(
            shape=(), dtype="int", initializer="zeros", aggregation="none",
            name="skipped_steps")
        self.inner_optimizer.build(var_list)
        super().build(var_list)
        self._clip_mask = {}
        matched = set()
        for v in var_list:
            path = getattr(v, "path", v.name)
            hits = [p for p in self.exclude if _matches(path, (p,))]
            matched.update(hits)
            self._clip_mask[self.inner_optimizer._var_key(v)] = not hits
        unmatched = [p for p in self.exclude if p not in matched]
        if unmatched:
            warnings.warn(
                f"AGC: exclude patterns {unmatched} match no trainable "
                "variable; those variables are clipped. Variable paths look "
                f"like {[getattr(v, 'path', v.name) for v in var_list[-2:]]}.",
                stacklevel=2)
        self._install_hook()

    def _should_clip(self, variable):
        return self._clip_mask.get(self.inner_optimizer._var_key(variable),
                                   True)

    def clip(self, grads, variables):
        """Clips `grads` (the reduced gradients) of `variables` with AGC,
        leaving excluded variables and `None` gradients alone."""
        if not self.clipping:
            return list(grads)
        return [g if g is None or not self._should_clip(v)
                else clip_gradient(g, v, self.clipping, self.eps)
                for g, v in zip(grads, variables)]

    def _install_hook(self):
        inner = self.inner_optimizer
        # An id, not a reference: a reference back to this wrapper would make
        # a cycle that Keras's saving walks forever.
        if getattr(inner, "_agc_hook_owner", None) == id(self):
            return
        if keras.backend.backend() == "tensorflow":
            # Clip the all-reduced gradient (the sum of the replicas'
            # 1/num_replicas-scaled gradients: the global mean) per variable,
            # inside that variable's update.
            object.__setattr__(inner, "_distributed_tf_update_step",
                               self._clip_and_update_step)
        else:
            update_fn = type(inner)._backend_update_step.__get__(inner)

            def clip_then_update(grads, variables, learning_rate):
                return update_fn(self.clip(grads, variables), variables,
                                 learning_rate)

            object.__setattr__(inner, "_backend_update_step", clip_then_update)
        object.__setattr__(inner, "_agc_hook_owner", id(self))

    def _clip_and_update_step(self, distribution, grads_and_vars,
                              learning_rate):
        """TensorFlow: clip each variable's reduced gradient inside that
        variable's update (Keras's `_distributed_tf_update_step` with the
        clip added), so a clipped gradient is made right before the update
        that consumes it rather than all ~250 of them at once after the
        all-reduce."""
        inner = self.inner_optimizer

        def clip_and_update(var, grad, learning_rate):
            if self.clipping and self._should_clip(var):
                grad = clip_gradient(grad, var, self.clipping, self.eps)
            return inner.update_step(grad, var, learning_rate)

        for grad, var in grads_and_vars:
            if grad is None:
                continue
            distribution.extended.update(
                var, clip_and_update, args=(grad, learning_rate),
                group=False)

    # ------------------------------------------------------------------ apply
    def apply(self, grads, trainable_variables=None):
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        if not self.skip_nonfinite:
            self.inner_optimizer.apply(grads, trainable_variables)
            return
        if keras.backend.backend() == "tensorflow":
            self._tf_apply(grads, trainable_variables)
        else:
            self._common_apply(grads, trainable_variables)

    def check_finite(self, grads):
        finite = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
        if not finite:
            return ops.convert_to_tensor(True)
        return ops.all(ops.stack(finite))

    def _apply_finite(self, grads, trainable_variables):
        self.inner_optimizer.apply(grads, trainable_variables)

    def _count_skipped(self):
        self.skipped_steps.assign_add(1)

    def _common_apply(self, grads, trainable_variables=None):
        if keras.backend.backend() == "jax":
            self._select_apply(grads, trainable_variables)
            return
        ops.cond(self.check_finite(grads),
                 lambda: self._apply_finite(grads, trainable_variables),
                 self._count_skipped)

    def _select_apply(self, grads, trainable_variables):
        """Skip a non-finite step without a stateful `cond` (JAX cannot
        assign variables inside `lax.cond`): apply, then keep the old values
        of every weight and optimizer variable where the gradient was not
        finite. Works eagerly and inside Keras's stateless JAX train step."""
        finite = self.check_finite(grads)
        if trainable_variables is None:  # Keras's stateless JAX train step
            trainable_variables = self.inner_optimizer._trainable_variables
        trainable_variables = list(trainable_variables)
        state = trainable_variables + list(self.inner_optimizer.variables)
        old = [v.value for v in state]
        self._apply_finite(grads, trainable_variables)
        for v, before in zip(state, old):
            v.assign(ops.where(finite, v.value, before))
        self.skipped_steps.assign_add(
            1 - ops.cast(finite, self.skipped_steps.dtype))

    def _tf_apply(self, grads, trainable_variables=None):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        if tf.distribute.in_cross_replica_context():
            raise ValueError("apply() must be called in a replica context.")
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            self._common_apply(grads, trainable_variables)
            return

        def cross_replica(distribution, grads, trainable_variables):
            bad_per_replica = distribution.extended.call_for_each_replica(
                lambda g: 1 - ops.cast(self.check_finite(g), "int32"),
                args=(grads,))
            # All replicas must agree: skip if any replica saw inf/nan (the
            # all-reduced gradient would carry it to every replica).
            finite = ops.equal(distribution.reduce(
                tf.distribute.ReduceOp.SUM, bad_per_replica, axis=None), 0)

            def apply_fn():
                distribution.extended.call_for_each_replica(
                    self._apply_finite, args=(grads, trainable_variables))

            ops.cond(finite, apply_fn, self._count_skipped)

        tf.distribute.get_replica_context().merge_call(
            cross_replica, args=(grads, trainable_variables))

    # ------------------------------------------------------------ delegation
    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer),
            "clipping": self.clipping,
            "eps": self.eps,
            "exclude": list(self.exclude),
            "skip_nonfinite": self.skip_nonfinite,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)
