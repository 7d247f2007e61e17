"""Fine-tuning helpers in Keras idioms: freeze and unfreeze an NFNet by
stage, and layer-wise learning-rate decay (`LayerDecay`, which lives with
the optimizers in `keras_nfnets.optim.layer_decay` because it is one, made
the way `AGC` is).

Stages are named as `keras_nfnets.optim.groups` finds them in the model:
`"stem"`, `"stage1"` ... `"stageN"` (N = 4 for NFNets; `final_conv` belongs
to the last stage) and `"head"`. Freezing sets `layer.trainable = False`,
which Keras saves in `.keras` files; compile (again) after freezing.
"""

from keras_nfnets.optim.groups import layer_groups, stage_names
from keras_nfnets.optim.layer_decay import LayerDecay, decay_multipliers

__all__ = ["LayerDecay", "decay_multipliers", "freeze_stages",
           "stage_names", "unfreeze_stages"]


def _set_trainable(model, stages, trainable):
    stages = [stages] if isinstance(stages, str) else list(stages)
    names = stage_names(model)
    unknown = [s for s in stages if s not in names]
    if unknown:
        raise ValueError(f"Unknown stage(s) {unknown} for {model.name!r}; "
                         f"its stages are {names}.")
    changed = []
    for layer, group, _ in layer_groups(model):
        if group in stages:
            layer.trainable = trainable
            changed.append(layer.name)
    return changed


def freeze_stages(model, stages):
    """Freezes the layers of `stages` (e.g. `["stem", "stage1"]`) of an
    NFNet or a model containing one; returns the names of the layers
    frozen. Compile after freezing.

    Example:
    >>> model = keras_nfnets.NFNetF0(weights=None, classes=5)
    >>> frozen = freeze_stages(model, ["stem", "stage1", "stage2"])
    >>> model.compile(keras.optimizers.SGD(0.01), "mse")
    """
    return _set_trainable(model, stages, False)


def unfreeze_stages(model, stages):
    """Makes the layers of `stages` trainable again (see `freeze_stages`);
    returns their names. Compile after unfreezing.

    Example:
    >>> unfreeze_stages(model, "stage2")
    """
    return _set_trainable(model, stages, True)
