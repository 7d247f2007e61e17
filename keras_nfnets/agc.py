"""Adaptive gradient clipping (AGC), exactly as DeepMind's `SGD_AGC`.

AGC (Brock et al., 2021, section 4) clips each *unit* of a gradient (the
slice that feeds one output unit) by the ratio of its norm to the norm of
the matching unit of the weights:

    ||G_i|| > clipping * max(||W_i||, eps)
        =>  G_i <- G_i * clipping * max(||W_i||, eps) / max(||G_i||, 1e-6)

* `unitwise_norm` and `adaptive_clip_grads` are the pure functions
  (`keras.ops` only, any backend).
* `AGC(optimizer, ...)` gives an optimizer that clips inside any Keras
  optimizer, per variable, on the *reduced* (global-batch) gradient. It is
  what `NFNetModel.compile(agc_clipping=...)` installs, and what a user puts
  around their own optimizer for their own model around an NFNet backbone.

Design: a class derived at wrap time, on Keras's public `update_step`
--------------------------------------------------------------------
`AGC(keras.optimizers.SGD(0.1))` returns an instance of `AGCSGD`, a class
made once per optimizer class by `type("AGCSGD", (AGC, SGD), {})`, built
from the given optimizer's `get_config()` (so: wrap before training; the
given instance itself is not used). Its `update_step(gradient, variable,
learning_rate)` clips and then calls `SGD.update_step`. `update_step` is
Keras's documented extension point for optimizers ("implement your
optimizer's variable updating logic"), and it is where every backend hands
over the gradient that the update uses:

* TensorFlow: `apply()` all-reduces the replicas' gradients, then calls
  `update_step` per variable inside `distribution.extended.update`. So the
  clip sees the sum of the replicas' `1/num_replicas`-scaled gradients, the
  global-batch mean, once, computed identically on every replica from the
  mirrored weights. (Clipping in `apply()` or in a `train_step` would clip
  each replica's share: not DeepMind's algorithm.)
* JAX: gradients are global arrays (under `keras.distribution` too).
* PyTorch: Keras's fused `torch._foreach` SGD/Adam/... classes do not call
  `update_step`; AGC derives from the public class (`keras.optimizers.SGD`),
  whose update runs `update_step` per variable.
* `LossScaleOptimizer` (what `compile` puts around the optimizer under
  `mixed_float16`) unscales before it calls the wrapped `apply()`;
  gradient accumulation averages before `update_step`; the EMA and weight
  decay of the base optimizer are untouched. Under `mixed_bfloat16`
  variables and gradients are float32; 16-bit gradients are clipped in
  float32.

Why not the alternatives: a wrapper holding an inner optimizer has no public
place after the all-reduce (the old design overwrote the private
`_distributed_tf_update_step` / `_backend_update_step`, which a Keras
release can rename without any error); replacing `update_step` on an
instance is monkey-patching. Subclassing is what Keras documents.

It cannot switch off silently: `update_step` counts its calls, and the first
`apply()` (trace) that updates variables without calling it raises
`compat.CompatError` naming the Keras version. The only private Keras API
used (the index of a variable, to find whether it is excluded) goes through
`keras_nfnets.compat`, behind a check.

Non-finite steps: a step whose gradients are not all finite on *any*
replica is skipped on all of them (the flag is all-reduced: `merge_call`
and `reduce` where the strategy needs merge calls, `all_reduce` in the
replica context otherwise): no weight, slot, EMA or iteration update, and
`skipped_steps` counts it once.
"""

import warnings

import keras
from keras import ops

from keras_nfnets import compat

_PACKAGE = "keras_nfnets"

#: DeepMind's guard on the gradient norm in the divisor.
GRAD_NORM_FLOOR = 1e-6


class _SGDTunedDefault(float):
    """0.01, DeepMind's threshold for SGD at batch 4096; a distinct object
    so that AGC can tell "left at the default" from an explicit 0.01."""


#: The default threshold: DeepMind's lambda for NFNets trained with SGD.
DEFAULT_CLIPPING = _SGDTunedDefault(0.01)

#: `compile()`'s default per family, as DeepMind trained them (their
#: deepmind-research/nfnets experiment configs): NFNets with `SGD_AGC`
#: (clipping 0.01, eps 1e-3, the classifier weight unclipped); NF-ResNets
#: (`experiment.py`) and NF-RegNets (`experiment_nf_regnets.py`) with plain
#: SGD (Nesterov momentum 0.9), i.e. no AGC.
FAMILY_DEFAULTS = {"NFNetConfig": DEFAULT_CLIPPING, "NFResNetConfig": None,
                   "NFRegNetConfig": None}

_ADAPTIVE = ("Adam", "AdamW", "Adamax", "Nadam", "Adagrad", "Adadelta",
             "RMSprop", "Adafactor", "Lion", "Lamb", "Ftrl", "Muon")


class AdaptiveOptimizerWarning(UserWarning):
    """AGC's SGD-tuned default threshold used with an adaptive optimizer."""


def default_clipping_for(config):
    """`compile()`'s default AGC threshold for a model of `config`'s family
    (an `NFNetConfig`, `NFResNetConfig` or `NFRegNetConfig`); see
    `FAMILY_DEFAULTS`."""
    return FAMILY_DEFAULTS.get(type(config).__name__, DEFAULT_CLIPPING)


def is_adaptive(optimizer):
    """Whether `optimizer` is one of Keras's adaptive optimizers."""
    classes = tuple(c for c in (getattr(keras.optimizers, n, None)
                                for n in _ADAPTIVE) if c is not None)
    return isinstance(optimizer, classes)


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
    """AGC for one gradient/parameter pair (see `adaptive_clip_grads`).

    16-bit gradients are clipped in float32 and returned in their dtype."""
    if grad is None:
        return None
    grad = ops.convert_to_tensor(grad)
    dtype = keras.backend.standardize_dtype(grad.dtype)
    if dtype in ("float16", "bfloat16"):
        return ops.cast(clip_gradient(ops.cast(grad, "float32"), param,
                                      clipping, eps), dtype)
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




class _Untracked:
    """Holds Python objects on an optimizer without Keras tracking them
    (a list of model variables as an attribute would be added to the
    optimizer's own variables)."""

    def __init__(self, value):
        self.value = value


def _public_base(cls):
    """The class AGC derives from: `cls`, or for Keras's backend-specific
    classes (PyTorch's fused `torch._foreach` SGD, Adam, ..., which bypass
    `update_step`; Keras returns them for `keras.optimizers.SGD(...)`) the
    public class of the same name that they specialise."""
    public = getattr(keras.optimizers, cls.__name__, None)
    if (isinstance(public, type) and public is not cls
            and issubclass(cls, public)):
        return public
    return cls


_DERIVED = {}


def _derived_class(base):
    derived = _DERIVED.get(base)
    if derived is None:
        derived = type(f"AGC{base.__name__}", (AGC, base),
                       {"__module__": __name__, "base_class": base,
                        "__doc__": f"`{base.__name__}` with adaptive "
                                   "gradient clipping (see `AGC`)."})
        # Serialised as "keras_nfnets>AGC" (its from_config rebuilds it)...
        keras.saving.register_keras_serializable(_PACKAGE, "AGC")(derived)
        _DERIVED[base] = derived
        # Importable by name (pickle, copy) unless another base took it.
        globals().setdefault(derived.__name__, derived)
    # ... while that name keeps resolving to AGC itself.
    keras.saving.register_keras_serializable(_PACKAGE, "AGC")(AGC)
    return derived


def _resolve(optimizer):
    """`keras.optimizers.get`, refusing what AGC cannot derive from."""
    optimizer = keras.optimizers.get(optimizer)
    if isinstance(optimizer, AGC):
        raise ValueError("AGC: this optimizer already clips with AGC "
                         f"(clipping={optimizer.clipping}).")
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "Wrap the LossScaleOptimizer around AGC, not AGC around it "
            "(Keras's compile does this for you under mixed_float16), so "
            "AGC sees unscaled gradients: "
            "LossScaleOptimizer(AGC(SGD(...))).")
    multi = getattr(keras.optimizers, "MultiOptimizer", None)
    if multi is not None and isinstance(optimizer, multi):
        raise ValueError(
            "AGC cannot wrap a MultiOptimizer (it dispatches variables to "
            "other optimizers and never updates one itself). Put AGC inside "
            "it instead, around each optimizer whose variables should be "
            "clipped: MultiOptimizer(OptimizerMap(AGC(SGD(...)), "
            "{'head/.*': Adam(...)})); with NFNetModel.compile pass "
            "agc_clipping=None.")
    for attribute in ("inner_optimizer", "optimizers"):
        if hasattr(optimizer, attribute):
            raise ValueError(
                f"AGC cannot wrap {type(optimizer).__name__}: it wraps other "
                f"optimizers (`{attribute}`) and its own update_step is "
                "not where they update. Put AGC around the optimizer(s) "
                "inside it.")
    return optimizer


def _bad(grads):
    """0 when every gradient is finite, else 1 (int32)."""
    finite = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
    if not finite:
        return ops.convert_to_tensor(0, "int32")
    return 1 - ops.cast(ops.all(ops.stack(finite)), "int32")


def _count_skipped(opt):
    opt.skipped_steps.assign_add(1)


def _apply_checked(opt, grads, trainable_variables):
    """The base optimizer's `apply`, then the check that it called AGC's
    `update_step` (once per trace)."""
    expected = any(g is not None for g in grads)
    if (keras.backend.backend() == "torch" and opt.gradient_accumulation_steps
            and int(ops.convert_to_numpy(opt.iterations) + 1)
            % opt.gradient_accumulation_steps):
        expected = False  # an accumulation step: no update on eager torch
    before = opt.agc_update_calls
    super(AGC, opt).apply(grads, trainable_variables)
    if expected and opt.agc_update_calls == before:
        raise compat.CompatError(
            f"AGC: {compat.versions()} updated the variables without calling "
            f"{type(opt).base_class.__name__}.update_step, so AGC could not "
            "clip. keras_nfnets refuses to train unclipped; please report "
            "this Keras version.")


def _tf_apply(opt, grads, trainable_variables):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    if tf.distribute.in_cross_replica_context():
        raise ValueError("apply() must be called in a replica context.")
    context = tf.distribute.get_replica_context()
    if compat.strategy_uses_merge_call():
        def cross_replica(distribution, grads, trainable_variables):
            bad = distribution.extended.call_for_each_replica(
                _bad, args=(grads,))
            # All replicas agree: skip if any replica saw inf/nan (the
            # all-reduced gradient would carry it to every replica).
            finite = ops.equal(distribution.reduce(
                tf.distribute.ReduceOp.SUM, bad, axis=None), 0)

            def apply_fn():
                distribution.extended.call_for_each_replica(
                    _apply_checked, args=(opt, grads, trainable_variables))

            ops.cond(finite, apply_fn, lambda: _count_skipped(opt))

        # A cond in the replica context whose branch calls merge_call (as
        # apply does) is not allowed, hence the cross-replica function.
        context.merge_call(cross_replica, args=(grads, trainable_variables))
        return
    bad = _bad(grads)
    if context.num_replicas_in_sync > 1:
        bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    ops.cond(ops.equal(bad, 0),
             lambda: _apply_checked(opt, grads, trainable_variables),
             lambda: _count_skipped(opt))


def _select_apply(opt, grads, trainable_variables):
    """JAX: skip a non-finite step without a stateful `cond` (JAX cannot
    assign variables inside `lax.cond`): apply, then keep the old values of
    every weight and optimizer variable where the gradient was not finite.
    Works eagerly and inside Keras's stateless JAX train step."""
    finite = ops.equal(_bad(grads), 0)
    if trainable_variables is None:  # Keras's stateless JAX train step
        trainable_variables = opt.agc_built_on.value
    state = list(trainable_variables) + list(opt.variables)
    old = [v.value for v in state]
    _apply_checked(opt, grads, trainable_variables)
    for v, before in zip(state, old):
        v.assign(ops.where(finite, v.value, before))
    opt.skipped_steps.assign_add(
        1 - ops.cast(finite, opt.skipped_steps.dtype))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AGC(keras.optimizers.Optimizer):
    """Adaptive gradient clipping inside any Keras optimizer.

    `AGC(optimizer, ...)` returns a new optimizer of a class derived from
    `type(optimizer)` (`AGCSGD`, `AGCNFNetSGD`, ...) with the same
    configuration, whose `update_step` clips each variable's reduced
    (global-batch) gradient and then calls the base class's `update_step`;
    under `tf.distribute` it is the cross-replica mean gradient that is
    clipped, once, as in DeepMind's code (see the module docstring). So the
    result *is* an `SGD` (or whatever you passed) and an `AGC`. Wrap before
    training: a built optimizer is refused. A step whose gradients are not
    all finite is skipped (no weight, slot, EMA or iteration update) and
    counted in `skipped_steps`.

    Args:
        optimizer: the optimizer to clip inside (instance, name or config).
            Not a `LossScaleOptimizer` (it goes around AGC) or a
            `MultiOptimizer` (put AGC around the optimizers in it).
        clipping: the AGC threshold lambda. `None` or 0 disables clipping
            (the non-finite-step guard stays). The default, 0.01, is
            DeepMind's for SGD at batch size 4096; with an adaptive
            optimizer (Adam and friends) AGC warns that you should choose
            it for that optimizer.
        eps: floor of the unit-wise parameter norm.
        exclude: variables that are not clipped, given by variable path
            (`"linear/kernel"`) or by layer path (`"linear"`, `"head"`: all
            variables of that layer). DeepMind does not clip the classifier
            weight (`linear/w`) but does clip its bias, which is the
            default `("linear/kernel",)`. For your own head, pass its name,
            e.g. `exclude=("predictions/kernel",)` or `exclude="predictions"`.
            A pattern that matches no variable triggers a warning.
        skip_nonfinite: skip steps with inf/nan gradients (default True).
        name: the optimizer name (default: the given optimizer's).

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

    #: the optimizer class AGC derives from (set on each derived class).
    base_class = None
    #: calls of `update_step` so far (a Python count, made while tracing).
    agc_update_calls = 0

    def __new__(cls, optimizer="sgd", *args, **kwargs):
        del args, kwargs
        if cls is AGC:
            cls = _derived_class(_public_base(type(_resolve(optimizer))))
        return super(AGC, cls).__new__(cls)

    def __init__(self, optimizer="sgd", clipping=DEFAULT_CLIPPING, eps=1e-3,
                 exclude=("linear/kernel",), skip_nonfinite=True, name=None,
                 **kwargs):
        if kwargs:
            raise ValueError(
                "AGC does not take the base optimizer arguments "
                f"{sorted(kwargs)}; set them on the optimizer you pass.")
        optimizer = _resolve(optimizer)
        if optimizer.built:
            raise ValueError(
                "AGC(optimizer): this optimizer is already built (it has "
                "trained or been built on variables). AGC makes a new "
                "optimizer from its config; wrap it before training.")
        config = optimizer.get_config()
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = keras.saving.deserialize_keras_object(
                config["learning_rate"])
        if name is not None:
            config["name"] = name
        try:
            super().__init__(**config)
        except TypeError as e:
            raise TypeError(
                f"AGC rebuilds {type(self).base_class.__name__} from its "
                f"get_config(), which failed: {e}") from e
        if clipping is DEFAULT_CLIPPING and is_adaptive(optimizer):
            warnings.warn(
                f"AGC around {type(optimizer).__name__} with the default "
                "threshold clipping=0.01, which DeepMind tuned for SGD with "
                "momentum at batch size 4096. Adaptive optimizers rescale "
                "the gradient after the clip, so choose clipping for this "
                "optimizer (pass it explicitly to silence this warning).",
                AdaptiveOptimizerWarning, stacklevel=3)
        if clipping is not None and not 0 <= float(clipping) < float("inf"):
            raise ValueError(f"AGC clipping={clipping!r}: must be a finite "
                             "number >= 0 (0 or None turns clipping off).")
        self.clipping = None if not clipping else float(clipping)
        self.eps = float(eps)
        self.exclude = _normalize_exclude(exclude)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.clip_mask = []

    # ------------------------------------------------------------------ build
    def build(self, var_list):
        if self.built:
            return
        var_list = list(var_list)
        super().build(var_list)
        self.skipped_steps = self.add_variable(
            shape=(), dtype="int", initializer="zeros", aggregation="none",
            name="skipped_steps")
        self.agc_built_on = _Untracked(var_list)
        mask, matched = [], set()
        for v in var_list:
            path = getattr(v, "path", v.name)
            hits = [p for p in self.exclude if _matches(path, (p,))]
            matched.update(hits)
            mask.append(not hits)
        self.clip_mask = mask
        unmatched = [p for p in self.exclude if p not in matched]
        if unmatched:
            warnings.warn(
                f"AGC: exclude patterns {unmatched} match no trainable "
                "variable; those variables are clipped. Variable paths look "
                f"like {[getattr(v, 'path', v.name) for v in var_list[-2:]]}.",
                stacklevel=2)

    def should_clip(self, variable):
        """Whether AGC clips `variable` (a variable it was built with)."""
        return bool(self.clipping) and self.clip_mask[
            compat.variable_index(self, variable)]

    def clip(self, grads, variables):
        """Clips `grads` of `variables` (variables this optimizer was built
        with) with AGC, leaving excluded variables and `None` gradients
        alone: what `update_step` does to each reduced gradient."""
        return [g if g is None or not self.should_clip(v)
                else clip_gradient(g, v, self.clipping, self.eps)
                for g, v in zip(grads, variables)]

    # ------------------------------------------------------------------ step
    def update_step(self, gradient, variable, learning_rate):
        """Clips the reduced gradient of `variable`, then the base class's
        `update_step`."""
        self.agc_update_calls += 1
        if gradient is not None and self.should_clip(variable):
            gradient = clip_gradient(gradient, variable, self.clipping,
                                     self.eps)
        return super().update_step(gradient, variable, learning_rate)

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
                self.built = True
        if not grads:
            return
        if not self.skip_nonfinite:
            _apply_checked(self, grads, trainable_variables)
        elif keras.backend.backend() == "tensorflow":
            _tf_apply(self, grads, trainable_variables)
        elif keras.backend.backend() == "jax":
            _select_apply(self, grads, trainable_variables)
        else:
            ops.cond(ops.equal(_bad(grads), 0),
                     lambda: _apply_checked(self, grads, trainable_variables),
                     lambda: _count_skipped(self))

    # -------------------------------------------------------------- saving
    def get_config(self):
        base = type(self).base_class
        return {
            "optimizer": {"class_name": keras.saving.get_registered_name(base),
                          "config": super().get_config()},
            "clipping": self.clipping,
            "eps": self.eps,
            "exclude": list(self.exclude),
            "skip_nonfinite": self.skip_nonfinite,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.optimizers.deserialize(
            config.pop("optimizer"), custom_objects=custom_objects)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AdaptiveOptimizerWarning)
            return AGC(optimizer, **config)
