"""`AGC`: adaptive gradient clipping inside any Keras optimizer.

`AGC(optimizer)` makes the optimizer you pass clip: the *same* object (its
variables, `iterations` and settings are the ones that move) becomes an
instance of a class derived from its own (`AGCSGD` for an `SGD`), whose
public `update_step` clips the variable's reduced gradient with
`keras_nfnets.optim.clip.clip_gradient` and then calls the base class's
`update_step`. `update_step` is Keras's documented extension point, and the
place where every backend hands over the gradient the update uses:

* TensorFlow: `apply()` all-reduces the replicas' gradients, then calls
  `update_step` per variable inside `distribution.extended.update`, so the
  clip sees the global-batch mean gradient once, identically on every
  replica (clipping in `apply()` or in a `train_step` would clip each
  replica's share: not DeepMind's algorithm).
* JAX: gradients are global arrays (under `keras.distribution` too).
* PyTorch: Keras's fused `torch._foreach` classes do not call
  `update_step`; AGC derives from the public class of the same name, whose
  update runs `update_step` per variable.
* `LossScaleOptimizer` (`mixed_float16`) unscales before it calls the
  wrapped `apply()`; gradient accumulation averages before `update_step`;
  weight decay and EMA of the base optimizer are untouched. 16-bit
  gradients are clipped in float32.

Where the gradients `apply()` receives are already the ones `update_step`
will get, and the weights are the ones it sees (one replica: TensorFlow
without a multi-replica strategy, JAX, PyTorch; no gradient accumulation,
no Keras `clipnorm` / `clipvalue` / `global_clipnorm`, `loss_scale_factor`
or decoupled `weight_decay`, which act between the two; no `monitor`),
`apply()` clips them all at once with
`keras_nfnets.optim.clip.adaptive_clip_grads` and `update_step` passes them
on: the same values bit for bit, but the clip factors of all variables whose
unit norms have one shape are computed together, so the traced train step
holds a few ops per clipped variable instead of a dozen (a shorter first
step: less to trace and for grappler to optimise). Otherwise each
`update_step` clips its own variable, as above.

Where the base class is Keras's `SGD` itself, on TensorFlow with one
replica, its update runs as TensorFlow's fused kernel
(`keras_nfnets.optim.fused_sgd`): the same values, one kernel per variable.

It cannot switch off silently: `update_step` counts its calls, and an
`apply()` that updates variables without calling it raises
`compat.CompatError` naming the Keras version. Non-finite steps are skipped
and counted by `keras_nfnets.optim.skip`. The derived classes are kept in a
private cache of this module (one per base class); the only private Keras
API used (a variable's index) goes through `keras_nfnets.compat`.
"""

import warnings

import keras

from keras_nfnets import compat
from keras_nfnets.optim import fused_sgd, skip
from keras_nfnets.optim import clip as _clip
# `clip_gradient` is looked up in this module at each step (so a test can
# bypass or watch it here: while it is replaced, every variable is clipped
# through it, one by one, in `update_step`); the other names are
# re-exported for `keras_nfnets.agc`.
from keras_nfnets.optim.clip import (GRAD_NORM_FLOOR,  # noqa: F401
                                     adaptive_clip_grads, clip_gradient,
                                     clip_statistics, matches, normalize_exclude,
                                     unitwise_norm)

_PACKAGE = "keras_nfnets"


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
    `FAMILY_DEFAULTS`.

    Example:
    >>> default_clipping_for(keras_nfnets.get_config("F0"))
    0.01
    """
    return FAMILY_DEFAULTS.get(type(config).__name__, DEFAULT_CLIPPING)


def is_adaptive(optimizer):
    """Whether `optimizer` is one of Keras's adaptive optimizers.

    Example:
    >>> is_adaptive(keras.optimizers.Adam())
    True
    """
    classes = tuple(c for c in (getattr(keras.optimizers, n, None)
                                for n in _ADAPTIVE) if c is not None)
    return isinstance(optimizer, classes)


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
        # Serialised as "keras_nfnets>AGC" (AGC.from_config rebuilds it)...
        keras.saving.register_keras_serializable(_PACKAGE, "AGC")(derived)
        _DERIVED[base] = derived
    # ... while that name keeps resolving to AGC itself.
    keras.saving.register_keras_serializable(_PACKAGE, "AGC")(AGC)
    return derived


def _resolve(optimizer):
    """`keras.optimizers.get`, refusing what AGC cannot clip inside."""
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
    if optimizer.built:
        raise ValueError(
            "AGC(optimizer): this optimizer is already built (it has "
            "trained or been built on variables); wrap it before training.")
    return optimizer


_AGC_ARGUMENTS = {"eps", "exclude", "skip_nonfinite", "monitor", "name"}


def _one_replica():
    """Whether the gradients `apply()` receives are the global batch's: not
    one replica's share under a `tf.distribute` strategy with several (those
    are all-reduced only inside Keras's per-variable update)."""
    if keras.backend.backend() != "tensorflow":
        return True
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.distribute.get_strategy().num_replicas_in_sync == 1


def _check_clipping(clipping):
    if clipping is not None and not 0 <= float(clipping) < float("inf"):
        raise ValueError(f"AGC clipping={clipping!r}: must be a finite "
                         "number >= 0 (0 or None turns clipping off).")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AGC(keras.optimizers.Optimizer):
    """Adaptive gradient clipping inside any Keras optimizer.

    `AGC(optimizer, ...)` returns `optimizer` itself, now an instance of a
    class derived from its own (`AGCSGD`, `AGCNFNetSGD`, ...): its
    `update_step` clips each variable's reduced (global-batch) gradient and
    then calls the base class's `update_step`; under `tf.distribute` it is
    the cross-replica mean gradient that is clipped, once, as in DeepMind's
    code. So the result *is* your `SGD` (same object, same variables and
    `iterations`) and an `AGC`. Wrap before training: a built optimizer is
    refused. A step whose gradients are not all finite is skipped (no
    weight, slot, EMA or iteration update) and counted in `skipped_steps`.

    Args:
        optimizer: the optimizer to clip inside (instance, name or config).
            Not a `LossScaleOptimizer` (it goes around AGC) or a
            `MultiOptimizer` (put AGC around the optimizers in it).
        clipping: the AGC threshold lambda. `None` or 0 disables clipping
            (the non-finite-step guard stays). The default, 0.01, is
            DeepMind's for SGD at batch size 4096; with an adaptive
            optimizer (Adam and friends) AGC warns that you should choose
            it for that optimizer. There is no measured default for them:
            the fine-tuning study (`docs/study/study_finetune_summary.csv`,
            `docs/study/REPORT.md`) found AdamW with AGC off, 0.01 and 0.1
            within its binomial error of one another.
        eps: floor of the unit-wise parameter norm.
        exclude: variables that are not clipped, given by variable path
            (`"linear/kernel"`) or by layer path (`"linear"`, `"head"`: all
            variables of that layer). DeepMind does not clip the classifier
            weight (`linear/w`) but does clip its bias, which is the
            default `("linear/kernel",)`. For your own head, pass its name,
            e.g. `exclude=("predictions/kernel",)` or `exclude="predictions"`.
            A pattern may be a shell wildcard: `"*/skip_gain"`
            (`keras_nfnets.optim.groups.SKIP_GAINS`) leaves every skip gain
            unclipped. A pattern that matches no variable triggers a warning.
        skip_nonfinite: skip steps with inf/nan gradients (default True).
        monitor: count, in the optimizer's non-trainable variables
            `agc_units`, `agc_clipped` and `agc_factor_sum` (one entry per
            variable, summed over steps), how many units AGC looked at, how
            many it clipped and the clip factors it applied; read them with
            `keras_nfnets.AGCMonitor`. Off by default (nothing is computed).
        name: a new name for the optimizer (default: keep its name).

    Example (fine-tuning an NFNet backbone with your own head):
    ```python
    backbone = keras_nfnets.NFNetF0(include_top=False, pooling="avg")
    inputs = keras.Input((192, 192, 3))
    outputs = keras.layers.Dense(5, name="head")(backbone(inputs))
    model = keras.Model(inputs, outputs)
    sgd = keras.optimizers.SGD(0.01, momentum=0.9)
    model.compile(optimizer=keras_nfnets.AGC(sgd, clipping=0.01,
                                             exclude=("head/kernel",)),
                  loss="sparse_categorical_crossentropy")
    # sgd is model.optimizer: sgd.iterations counts the steps.
    ```
    """

    #: the optimizer class AGC derives from (set on each derived class).
    base_class = None
    #: calls of `update_step` so far (a Python count, made while tracing).
    agc_update_calls = 0
    #: True while `apply` hands on gradients it has clipped already.
    _agc_clipped_ahead = False

    def __new__(cls, optimizer="sgd", clipping=DEFAULT_CLIPPING, *args,
                **kwargs):  # pylint: disable=keyword-arg-before-vararg
        if cls is not AGC:
            if optimizer == "sgd" and not args and not kwargs:
                return super().__new__(cls)  # copy.copy / copy.deepcopy
            raise TypeError(
                f"{cls.__name__} is made by AGC(optimizer); construct "
                f"AGC({cls.base_class.__name__}(...)) instead.")
        unknown = sorted(kwargs.keys() - _AGC_ARGUMENTS)
        if unknown or len(args) > 3:
            raise ValueError(
                f"AGC does not take the base optimizer arguments {unknown}"
                f"{' or ' + str(len(args) + 2) + ' positional arguments' if len(args) > 3 else ''}"
                "; set them on the optimizer you pass.")
        _check_clipping(clipping)
        optimizer = _resolve(optimizer)
        # The user's object is kept: it becomes an instance of the derived
        # class (same attributes, variables, iterations), then __init__
        # below adds AGC's settings to it.
        optimizer.__class__ = _derived_class(_public_base(type(optimizer)))
        return optimizer

    def __init__(self, optimizer="sgd", clipping=DEFAULT_CLIPPING, eps=1e-3,
                 exclude=("linear/kernel",), skip_nonfinite=True,
                 monitor=False, name=None):
        # `self` is the optimizer given (resolved by __new__); its base
        # class's __init__ has already run, so it is not called again.
        del optimizer
        if clipping is DEFAULT_CLIPPING and is_adaptive(self):
            warnings.warn(
                f"AGC around {type(self).base_class.__name__} with the "
                "default threshold clipping=0.01, which DeepMind tuned for "
                "SGD with momentum at batch size 4096. Adaptive optimizers "
                "rescale the gradient after the clip, so choose clipping "
                "for this optimizer (pass it explicitly to silence this "
                "warning; the fine-tuning study in docs/study/REPORT.md "
                "compares AdamW with AGC off, 0.01 and 0.1).",
                AdaptiveOptimizerWarning, stacklevel=2)
        if name is not None:
            self.name = name
        self.clipping = None if not clipping else float(clipping)
        self.eps = float(eps)
        self.exclude = normalize_exclude(exclude)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.monitor = bool(monitor)
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
        if self.monitor:
            for stat in ("agc_units", "agc_clipped", "agc_factor_sum"):
                setattr(self, stat, self.add_variable(
                    shape=(len(var_list),), dtype="float32",
                    initializer="zeros", aggregation="none", name=stat))
        mask, matched = [], set()
        for v in var_list:
            path = getattr(v, "path", v.name)
            hits = [p for p in self.exclude if matches(path, (p,))]
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
        alone: what `update_step` does to each reduced gradient (computed
        all at once, `adaptive_clip_grads`)."""
        return self._clip_where(grads, variables, self.should_clip)[0]

    def _clip_where(self, grads, variables, pick):
        """`grads` with those of the variables `pick`ed clipped, and the
        gradients' unit norms (`clip.clip_and_norms`, indexed into
        `grads`)."""
        grads, variables = list(grads), list(variables)
        chosen = [i for i, (g, v) in enumerate(zip(grads, variables))
                  if g is not None and pick(v)]
        clipped, norms = _clip.clip_and_norms([grads[i] for i in chosen],
                                              [variables[i] for i in chosen],
                                              self.clipping, self.eps)
        for i, g in zip(chosen, clipped):
            grads[i] = g
        return grads, [(tuple(chosen[i] for i in indices), tensor)
                       for indices, tensor in norms]

    def _clips_ahead(self):
        """Whether `apply` clips all gradients before Keras's per-variable
        update (see the module's docstring): where nothing between the two
        changes the gradients (unscaling, accumulation, Keras's clipping)
        or the weights whose norms the clip reads (Keras's decoupled weight
        decay), and `clip_gradient` is the package's own."""
        return (bool(self.clipping) and not self.monitor
                and clip_gradient is _clip.clip_gradient
                and not getattr(self, "gradient_accumulation_steps", None)
                and not getattr(self, "weight_decay", None)
                and all(getattr(self, name, None) is None for name in (
                    "clipnorm", "clipvalue", "global_clipnorm",
                    "loss_scale_factor"))
                and _one_replica())

    def _clip_ahead(self, grads, variables):
        """`grads` with every gradient AGC clips clipped, all at once, and
        their unit norms (`_clip_where`). Keras's `overwrite_with_gradient`
        variables never reach `update_step`, so they are left alone here
        too."""
        if variables is None:  # JAX's stateless step: the build order
            variables = self.agc_built_on.value
        return self._clip_where(grads, variables, lambda v: (
            self.should_clip(v)
            and not getattr(v, "overwrite_with_gradient", False)))

    # ------------------------------------------------------------------ step
    def update_step(self, gradient, variable, learning_rate):
        """Clips the reduced gradient of `variable` (unless `apply` clipped
        it already), then the base class's `update_step`."""
        self.agc_update_calls += 1
        if (gradient is not None and not self._agc_clipped_ahead
                and self.should_clip(variable)):
            if self.monitor:
                self._record(gradient, variable)
            gradient = clip_gradient(gradient, variable, self.clipping,
                                     self.eps)
        if _one_replica() and fused_sgd.applies(self, gradient, variable):
            # Keras's SGD update, the same values in one kernel.
            fused_sgd.update(self, gradient, variable, learning_rate)
            return None
        return super().update_step(gradient, variable, learning_rate)

    def _record(self, gradient, variable):
        index = compat.variable_index(self, variable)
        hot = keras.ops.one_hot(index, len(self.clip_mask), dtype="float32")
        stats = clip_statistics(gradient, variable, self.clipping, self.eps)
        for name, value in zip(("agc_units", "agc_clipped",
                                "agc_factor_sum"), stats):
            getattr(self, name).assign_add(hot * value)

    def _apply_checked(self, grads, trainable_variables, clipped=False):
        """The base optimizer's `apply`, then the check that it called
        `update_step` (once per trace). `clipped`: `grads` were clipped
        ahead, and `update_step` passes them on."""
        expected = any(g is not None for g in grads)
        if (keras.backend.backend() == "torch"
                and self.gradient_accumulation_steps
                and int(keras.ops.convert_to_numpy(self.iterations) + 1)
                % self.gradient_accumulation_steps):
            expected = False  # an accumulation step: no update on eager torch
        before = self.agc_update_calls
        self._agc_clipped_ahead = clipped
        try:
            super().apply(grads, trainable_variables)
        finally:
            self._agc_clipped_ahead = False
        if expected and self.agc_update_calls == before:
            raise compat.CompatError(
                f"AGC: {compat.versions()} updated the variables without "
                f"calling {type(self).base_class.__name__}.update_step, so "
                "AGC could not clip. keras_nfnets refuses to train "
                "unclipped; please report this Keras version.")

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
        apply_fn, norms = self._apply_checked, ()
        if self._clips_ahead():
            # Clipped here, before the skip's test (which still reads the
            # gradients as they came, through the clip's unit norms)
            # and outside its `cond`: inside it, Keras's all-reduce would
            # get tensors of two graphs.
            clipped, norms = self._clip_ahead(grads, trainable_variables)

            def apply_fn(_, variables):
                self._apply_checked(clipped, variables, clipped=True)
        if not self.skip_nonfinite:
            apply_fn(grads, trainable_variables)
            return
        built_on = getattr(self, "agc_built_on", None)
        skip.apply_or_skip(self, grads, trainable_variables, apply_fn,
                           built_on=built_on.value if built_on else (),
                           unit_norms=norms)

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
            "monitor": self.monitor,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.optimizers.deserialize(
            config.pop("optimizer"), custom_objects=custom_objects)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AdaptiveOptimizerWarning)
            return AGC(optimizer, **config)
