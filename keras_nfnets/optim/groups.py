"""Where each variable of an NFNet sits: `"stem"`, `"stage1"` ...
`"stageN"`, `"head"` (and, for the skip gains, `"skip_gain"`), and its
depth for layer-wise learning-rate decay.

The groups come from the model's layers, not from name guessing: the layers
before the first `NFBlock` are the stem; a block whose shortcut is a
projection (a stride or a change of width: the transition block DeepMind
and timm start every stage with) opens a new stage; `final_conv` belongs to
the last stage (as in timm's `group_matcher`); whatever follows is the
head. Models nested in a user's model (`include_top=False` backbones) are
walked too.
"""

import fnmatch

#: A pattern for `AGC(exclude=...)` that matches every skip gain.
SKIP_GAINS = "*/skip_gain"

_LAST_STAGE_LAYERS = ("final_conv",)


def _walk(layer):
    for sub in getattr(layer, "layers", ()):
        if getattr(sub, "layers", None) and not _is_block(sub):
            yield from _walk(sub)
        else:
            yield sub


def _is_block(layer):
    # NFBlock, without importing the layers (and their backend) here.
    return type(layer).__name__ == "NFBlock"


def layer_groups(model):
    """`[(layer, stage_group, block_depth)]` for every layer of `model`
    that owns variables, in order.

    `stage_group` is `"stem"`, `"stage<k>"` (1-based) or `"head"`;
    `block_depth` is 0 for the stem, `i + 1` for the i-th block, and one
    more than the last block for `final_conv` and the head (timm's
    `param_groups_layer_decay` numbering).

    Example:
    >>> [g for _, g, _ in layer_groups(keras_nfnets.NFNetF0(weights=None))][:2]
    ['stem', 'stem']
    """
    out, stage, blocks, after = [], 0, 0, False
    for layer in _walk(model):
        if _is_block(layer):
            if stage == 0 or getattr(layer, "use_projection", False):
                stage += 1
            blocks += 1
            out.append((layer, f"stage{stage}", blocks))
            continue
        if stage and layer.name in _LAST_STAGE_LAYERS:
            out.append((layer, f"stage{stage}", blocks + 1))
            after = True
            continue
        if stage:
            after = True
        if layer.weights:
            out.append((layer, "head" if after else "stem",
                        blocks + 1 if after else 0))
    if not stage:
        raise ValueError(
            f"{model.name!r} has no NFBlock: stages, freezing and layer-wise "
            "decay need an NFNet (or a model containing one).")
    return out


def _var_path(variable):
    return getattr(variable, "path", variable.name)


def variable_groups(model, skip_gains=True):
    """`{variable path: group}` for every variable of `model`: `"stem"`,
    `"stage1"` ... `"stageN"`, `"head"`; the skip gains are `"skip_gain"`
    when `skip_gains` (else their stage's).

    Example:
    >>> groups = variable_groups(keras_nfnets.NFNetF0(weights=None))
    >>> groups["nf_block/skip_gain"], groups["linear/kernel"]
    ('skip_gain', 'head')
    """
    out = {}
    for layer, group, _ in layer_groups(model):
        for v in layer.weights:
            path = _var_path(v)
            out[path] = ("skip_gain" if skip_gains
                         and path.endswith("/skip_gain") else group)
    return out


def variable_depths(model):
    """`{variable path: (depth, max_depth)}` for layer-wise decay (see
    `layer_groups`)."""
    rows = layer_groups(model)
    top = max(d for _, _, d in rows)
    return {_var_path(v): (d, top) for layer, _, d in rows
            for v in layer.weights}


def stage_names(model):
    """The group names of `model` in order: `["stem", "stage1", ...,
    "head"]`."""
    names = []
    for _, group, _ in layer_groups(model):
        if group not in names:
            names.append(group)
    return names


def path_matches(path, pattern):
    """Whether variable path `path` is `pattern`, lies under it (a layer
    path), or matches it as a shell wildcard (`"*/skip_gain"`)."""
    if any(c in pattern for c in "*?["):
        return (fnmatch.fnmatchcase(path, pattern)
                or fnmatch.fnmatchcase(path, pattern.rstrip("/") + "/*"))
    return path == pattern or path.startswith(pattern.rstrip("/") + "/")
