"""The one walk over a model's weights that every name rule uses.

Keras layers are named after DeepMind's haiku modules, and an NF block
holds its convolutions as sub-layers (`named_sublayers`), so a weight's
path is its '/'-joined layer names (`nf_block_3/conv1b`) and its own name
(`kernel`). `walk` yields each layer that owns weights once, with the
weights it holds itself, leaving out the layers under `skip_layers`.

`LoadStats` counts what one load did (walks of the model, checks of each
tensor): the dispatcher returns it, so a test can see that a load walks
the model once and checks each tensor once.

Example:
>>> for path, layer, own in walk(model):
...     print(path, [v.name for v in own])
"""

import collections
import dataclasses


@dataclasses.dataclass
class LoadStats:
    """What one load did: `walks` of the model's weights, `checks` per
    tensor name, the Keras weight paths `assigned`, the layer paths
    `skipped`, and the cached file's `path` for a download."""

    walks: int = 0
    checks: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    assigned: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    path: str = None


def under(path, skip_layers):
    return any(path == p or path.startswith(p + "/") for p in skip_layers)


def walk(model, skip_layers=(), stats=None):
    """`[(keras_path, layer, own_weights)]` for every layer that owns
    weights, outside `skip_layers` (Keras layer paths such as `"linear"`;
    a skipped layer's sub-layers are skipped too)."""
    skip_layers = tuple(str(p).strip("/") for p in skip_layers)
    if stats is not None:
        stats.walks += 1
    out = []

    def visit(layer, prefix):
        path = f"{prefix}/{layer.name}" if prefix else layer.name
        subs = getattr(layer, "named_sublayers", None)
        subs = list(subs().values()) if subs else []
        inner = {id(w) for s in subs for w in s.weights}
        own = [w for w in layer.weights if id(w) not in inner]
        if under(path, skip_layers):
            if stats is not None and layer.weights:
                stats.skipped.append(path)
            return
        if (own or not subs) and layer.weights:
            out.append((path, layer, own))
        for sub in subs:
            visit(sub, path)

    for layer in model.layers:
        visit(layer, "")
    return out


def layers_under(model, skip_layers):
    """The layers at the given paths and all their sub-layers."""
    skip_layers = tuple(str(p).strip("/") for p in skip_layers)
    found, seen = [], set()

    def visit(layer, prefix, inside):
        path = f"{prefix}/{layer.name}" if prefix else layer.name
        inside = inside or path in skip_layers
        if inside and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
        subs = getattr(layer, "named_sublayers", None)
        for sub in (subs().values() if subs else ()):
            visit(sub, path, inside)

    for layer in model.layers:
        visit(layer, "", False)
    return found


def weight_name(variable):
    """A variable's own name (`kernel`), without its layer path."""
    return variable.name.split("/")[-1]
