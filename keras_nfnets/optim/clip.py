"""The unit-wise clip of AGC (Brock et al., 2021, section 4), as pure
functions (`keras.ops` only, any backend); DeepMind's `agc_optax.py`.

    ||G_i|| > clipping * max(||W_i||, eps)
        =>  G_i <- G_i * clipping * max(||W_i||, eps) / max(||G_i||, 1e-6)

Computed as one factor per unit, `G_i <- G_i * f_i` with `f_i = 1` for the
units left alone (an exact multiply by one), so the only operation on the
whole gradient is that multiply; everything else acts on one number per
unit. `adaptive_clip_grads` computes the factors of many variables together
(the units of every variable whose unit norms have the same shape, stacked),
so a model's clip is a few small ops per variable and a few per shape, not a
dozen per variable: the values are those of `clip_gradient` bit for bit.
"""

import keras
from keras import ops

from keras_nfnets import compat

#: DeepMind's guard on the gradient norm in the divisor.
GRAD_NORM_FLOOR = 1e-6

_16_BIT = ("float16", "bfloat16")


def unit_axes(shape):
    """The axes `unitwise_norm` sums over for a tensor of `shape`: `None`
    (the whole tensor) for scalars and vectors (at most one non-unit
    dimension), 0 for rank-2 and rank-3 tensors, `(0, 1, 2)` for rank-4
    (HWIO) kernels.

    Example:
    >>> unit_axes((3, 3, 8, 16)), unit_axes((8, 16)), unit_axes((1, 16))
    ((0, 1, 2), 0, None)
    """
    shape = tuple(shape)
    if sum(1 for d in shape if d != 1) <= 1:  # jnp.squeeze(x).ndim <= 1
        return None
    if len(shape) in (2, 3):
        return 0
    if len(shape) == 4:
        return (0, 1, 2)
    raise ValueError(
        f"unitwise_norm: got a tensor of shape {shape}; AGC supports "
        "scalars, vectors, rank-2/3 (dense) and rank-4 (HWIO conv) "
        "tensors.")


def _unit_norm(x, axis, keepdims=False):
    """`sqrt(sum(x**2))` over `axis` (DeepMind's formula). On TensorFlow
    the same values (the same reduction, the square inside it) come from
    one kernel, `tf.math.reduce_euclidean_norm`, instead of a `Square` and
    a `Sum` that write and read a parameter-sized temporary (tested bit for
    bit against the formula in tests/unit/test_optim_clip.py); not where
    XLA compiles the step (the kernel has no XLA version, and XLA fuses the
    formula itself)."""
    if len(x.shape) == 0:  # a scalar is its own sum (no reduction op)
        return ops.sqrt(ops.square(x))
    if (keras.backend.backend() == "tensorflow"
            and not compat.in_xla_compilation()):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        return tf.math.reduce_euclidean_norm(x, axis=axis, keepdims=keepdims)
    return ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=keepdims))


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
    return _unit_norm(x, unit_axes(x.shape), keepdims=True)


def _clip_factor(param_norm, grad_norm, clipping, eps):
    """Each unit's factor from its norms: `max_norm / max(||G_i||, 1e-6)`
    where ||G_i|| > max_norm = clipping * max(||W_i||, eps), else 1.
    Elementwise, so many variables' units can go through it at once."""
    max_norm = ops.multiply(ops.maximum(param_norm, eps), clipping)
    return ops.where(ops.greater(grad_norm, max_norm),
                     ops.divide(max_norm,
                                ops.maximum(grad_norm, GRAD_NORM_FLOOR)),
                     1.0)


def _prepared(grad, param):
    """`grad` as a tensor in the dtype the clip runs in (float32 for 16-bit
    gradients), `param` in that dtype, and `grad`'s own dtype."""
    grad = ops.convert_to_tensor(grad)
    dtype = keras.backend.standardize_dtype(grad.dtype)
    if dtype in _16_BIT:
        grad = ops.cast(grad, "float32")
    param = ops.cast(ops.convert_to_tensor(param), grad.dtype)
    return grad, param, dtype


def _finished(grad, factor, dtype):
    out = ops.multiply(grad, factor)
    return ops.cast(out, dtype) if dtype in _16_BIT else out


def clip_gradient(grad, param, clipping=0.01, eps=1e-3):
    """AGC for one gradient/parameter pair (see `adaptive_clip_grads`).

    16-bit gradients are clipped in float32 and returned in their dtype.

    Example:
    >>> w = keras.ops.ones((4, 2))
    >>> g = keras.ops.full((4, 2), 10.0)
    >>> clip_gradient(g, w, clipping=0.01).shape
    (4, 2)
    """
    if grad is None:
        return None
    grad, param, dtype = _prepared(grad, param)
    axis = unit_axes(grad.shape)
    factor = _clip_factor(_unit_norm(param, axis), _unit_norm(grad, axis),
                          clipping, eps)
    return _finished(grad, factor, dtype)


def adaptive_clip_grads(grads, variables, clipping=0.01, eps=1e-3):
    """Adaptive gradient clipping of a list of gradients.

    Each gradient unit `G_i` (see `unitwise_norm`) whose norm exceeds
    `clipping * max(||W_i||, eps)` is rescaled to exactly that norm (the
    divisor is floored at 1e-6); the others pass unchanged. `None` gradients
    stay `None`. The result equals `clip_gradient` of each pair, bit for
    bit; the clip factors of all variables whose unit norms have the same
    shape are computed together (a few ops per shape instead of a dozen per
    variable, which is what a traced train step is made of). This is the
    pure function; to clip inside training use `keras_nfnets.AGC` or
    `NFNetModel.compile(agc_clipping=...)`.

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
    return clip_and_norms(grads, variables, clipping, eps)[0]


def clip_and_norms(grads, variables, clipping=0.01, eps=1e-3):
    """`adaptive_clip_grads`, and the gradients' unit norms that the clip
    computed: a list of `(indices, tensor)`, the norms of the gradients at
    `indices` (one tensor per group of same-shaped unit norms; float32 for
    16-bit gradients). A norm is finite only if every element of its
    gradient is, which lets the non-finite-step skip test these small
    tensors instead of the gradients (`skip.nonfinite_flag`).

    Example:
    >>> clipped, norms = clip_and_norms([g], [w], 0.01)
    >>> [indices for indices, _ in norms]
    [(0,)]
    """
    grads, variables = list(grads), list(variables)
    if len(grads) != len(variables):
        raise ValueError(
            f"adaptive_clip_grads: got {len(grads)} gradients for "
            f"{len(variables)} variables.")
    prepared, groups, grad_norms = {}, {}, []
    for i, (g, v) in enumerate(zip(grads, variables)):
        if g is None:
            continue
        grad, param, dtype = _prepared(g, v)
        axis = unit_axes(grad.shape)
        norms = (_unit_norm(param, axis), _unit_norm(grad, axis))
        prepared[i] = (grad, dtype)
        shape = tuple(norms[0].shape)
        key = ((shape, keras.backend.standardize_dtype(grad.dtype))
               if None not in shape else i)  # a dynamic shape: its own
        groups.setdefault(key, []).append((i, norms))
    out = [None] * len(grads)
    for members in groups.values():
        if len(members) == 1:
            (i, (param_norm, grad_norm)), = members
            factors = [_clip_factor(param_norm, grad_norm, clipping, eps)]
        else:
            grad_norm = ops.stack([n[1] for _, n in members])
            factors = ops.unstack(_clip_factor(
                ops.stack([n[0] for _, n in members]), grad_norm,
                clipping, eps), num=len(members))
        grad_norms.append((tuple(i for i, _ in members), grad_norm))
        for (i, _), factor in zip(members, factors):
            grad, dtype = prepared[i]
            out[i] = _finished(grad, factor, dtype)
    return out, grad_norms


def normalize_exclude(exclude):
    """`exclude` (None, one pattern or several) as a tuple of patterns.

    Example:
    >>> normalize_exclude("head")
    ('head',)
    """
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    return tuple(exclude)


def matches(path, patterns):
    """Whether the variable path `path` is one of `patterns` (a variable
    path) or lies under one (a layer path).

    Example:
    >>> matches("linear/kernel", ("linear",))
    True
    >>> matches("linear_2/kernel", ("linear",))
    False
    >>> matches("nf_block_3/skip_gain", ("*/skip_gain",))  # a wildcard
    True
    """
    from keras_nfnets.optim.groups import path_matches  # noqa: E501 pylint: disable=import-outside-toplevel
    return any(path_matches(path, p) for p in patterns)


def clip_statistics(grad, param, clipping=0.01, eps=1e-3):
    """What `clip_gradient` does to one gradient, as `(units, clipped,
    factor_sum)`: the number of units (see `unitwise_norm`), how many it
    rescales (``||G_i|| > clipping * max(||W_i||, eps)``, the same test) and
    the sum over units of the factor each is multiplied by (1 when not
    clipped). float32 scalars; the gradient itself is not changed.

    Example:
    >>> w = keras.ops.ones((4, 2))
    >>> g = keras.ops.stack([keras.ops.full((4,), 10.0), keras.ops.zeros(4)], 1)
    >>> [float(s) for s in clip_statistics(g, w, 0.01)[:2]]
    [2.0, 1.0]
    """
    grad = ops.cast(ops.convert_to_tensor(grad), "float32")
    param = ops.cast(ops.convert_to_tensor(param), "float32")
    param_norm = ops.maximum(unitwise_norm(param), eps)
    grad_norm = unitwise_norm(grad)
    max_norm = param_norm * clipping
    trigger = ops.greater(grad_norm, max_norm)
    factor = ops.where(trigger, max_norm / ops.maximum(
        grad_norm, GRAD_NORM_FLOOR), 1.0)
    units = ops.cast(ops.size(trigger), "float32")
    return (units, ops.sum(ops.cast(trigger, "float32")), ops.sum(factor))
