"""`LayerDecay`: layer-wise learning-rate decay by depth for any Keras
optimizer (timm's `param_groups_layer_decay`), made the way `AGC` is made.

`LayerDecay(optimizer, model, decay=0.75)` returns `optimizer` itself, now
an instance of a class derived from its own (`LayerDecaySGD`), whose public
`update_step` multiplies the learning rate of each variable by
``decay ** (max_depth - depth)``: depth 0 for the stem, ``i + 1`` for the
i-th block, one more than the last block for `final_conv` and the head
(`keras_nfnets.optim.groups.layer_groups`), so the head learns at the full
rate and the stem at ``decay ** (blocks + 1)`` of it. The multipliers are
stored by variable path and saved with the optimizer (`get_config`), so a
`.keras` file keeps them. It composes with `AGC` either way round
(`AGC(LayerDecay(SGD(...), model))` clips, then scales), and with
`NFNetModel.compile`, which wraps AGC around it.

The base optimizer's decoupled weight decay (`SGD(weight_decay=...)`,
`AdamW`) is applied outside `update_step` and is not scaled.
"""

import keras

from keras_nfnets import compat
from keras_nfnets.optim import groups as nf_groups

_PACKAGE = "keras_nfnets"
_DERIVED = {}


def _public_base(cls):
    from keras_nfnets.optim.agc import _public_base as base  # pylint: disable=import-outside-toplevel
    return base(cls)


def _derived_class(base):
    derived = _DERIVED.get(base)
    if derived is None:
        derived = type(f"LayerDecay{base.__name__}", (LayerDecay, base),
                       {"__module__": __name__, "decay_base_class": base,
                        "__doc__": f"`{base.__name__}` with layer-wise "
                                   "learning-rate decay (see `LayerDecay`)."})
        keras.saving.register_keras_serializable(_PACKAGE,
                                                 "LayerDecay")(derived)
        _DERIVED[base] = derived
    keras.saving.register_keras_serializable(_PACKAGE,
                                             "LayerDecay")(LayerDecay)
    return derived


def decay_multipliers(model, decay=0.75):
    """`{variable path: learning-rate multiplier}` of `model` for
    layer-wise decay `decay` (see the module's docstring).

    Example:
    >>> m = decay_multipliers(keras_nfnets.NFNetF0(weights=None), 0.5)
    >>> m["linear/kernel"], m["stem_conv0/kernel"]
    (1.0, 5.820766091346741e-11)
    """
    if not 0 < float(decay) <= 1:
        raise ValueError(f"LayerDecay decay={decay!r}: must be in (0, 1] "
                         "(1 is no decay).")
    return {path: float(decay) ** (top - depth)
            for path, (depth, top) in nf_groups.variable_depths(model).items()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerDecay(keras.optimizers.Optimizer):
    """Layer-wise learning-rate decay inside any Keras optimizer.

    Args:
        optimizer: the optimizer (instance, name or config); not built yet.
        model: the NFNet (or a model containing one) whose depths set the
            multipliers; or give `multipliers`.
        decay: the factor per depth step (timm's `layer_decay`, e.g. 0.75).
        multipliers: `{variable path: multiplier}` instead of `model` (what
            `get_config` saves). Variables not in it keep the full rate.

    Example:
    ```python
    model = keras_nfnets.NFNetF0(weights="imagenet", classes=1000)
    opt = keras_nfnets.LayerDecay(keras.optimizers.SGD(0.01, momentum=0.9),
                                  model, decay=0.75)
    model.compile(opt, "sparse_categorical_crossentropy")  # AGC wraps it
    ```
    """

    #: the optimizer class LayerDecay derives from (on each derived class;
    #: not `base_class`, which AGC sets on its own derived classes).
    decay_base_class = None

    def __new__(cls, optimizer="sgd", *args, **kwargs):  # pylint: disable=keyword-arg-before-vararg
        if cls is not LayerDecay:
            if optimizer == "sgd" and not args and not kwargs:
                return super().__new__(cls)  # copy.copy / copy.deepcopy
            raise TypeError(
                f"{cls.__name__} is made by LayerDecay(optimizer, ...); "
                f"construct LayerDecay({cls.decay_base_class.__name__}(...)).")
        optimizer = keras.optimizers.get(optimizer)
        if isinstance(optimizer, LayerDecay):
            raise ValueError("LayerDecay: this optimizer already decays "
                             "learning rates by layer.")
        if (optimizer.built or hasattr(optimizer, "inner_optimizer")
                or hasattr(optimizer, "optimizers")):
            raise ValueError(
                "LayerDecay(optimizer): pass an optimizer that is not built "
                "and does not wrap others (put a LossScaleOptimizer around "
                f"LayerDecay); got {type(optimizer).__name__}.")
        optimizer.__class__ = _derived_class(_public_base(type(optimizer)))
        return optimizer

    def __init__(self, optimizer="sgd", model=None, decay=0.75,
                 multipliers=None):
        del optimizer
        if (model is None) == (multipliers is None):
            raise ValueError("LayerDecay: give either `model` (multipliers "
                             "from its depths) or `multipliers`.")
        if model is not None:
            multipliers = decay_multipliers(model, decay)
        multipliers = {str(k): float(v) for k, v in dict(multipliers).items()}
        bad = {k: v for k, v in multipliers.items() if not 0 <= v < float("inf")}
        if bad:
            raise ValueError(f"LayerDecay: multipliers must be finite and "
                             f">= 0; got {bad}.")
        self.decay = float(decay)
        self.lr_multipliers = multipliers
        self.variable_multipliers = []

    def build(self, var_list):
        if self.built:
            return
        var_list = list(var_list)
        super().build(var_list)
        self.variable_multipliers = [
            self.lr_multipliers.get(getattr(v, "path", v.name), 1.0)
            for v in var_list]

    def multiplier(self, variable):
        """The learning-rate multiplier of `variable` (one it was built
        with)."""
        return self.variable_multipliers[compat.variable_index(self,
                                                               variable)]

    def update_step(self, gradient, variable, learning_rate):
        """The base class's `update_step` at this variable's rate."""
        scale = self.multiplier(variable)
        if scale != 1.0:
            learning_rate = learning_rate * scale
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        base = type(self).decay_base_class
        return {
            "optimizer": {"class_name": keras.saving.get_registered_name(base),
                          "config": super().get_config()},
            "decay": self.decay,
            "multipliers": dict(self.lr_multipliers),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.optimizers.deserialize(
            config.pop("optimizer"), custom_objects=custom_objects)
        return LayerDecay(optimizer, **config)
