"""The unit-wise clip of AGC (Brock et al., 2021, section 4), as pure
functions (`keras.ops` only, any backend); DeepMind's `agc_optax.py`.

    ||G_i|| > clipping * max(||W_i||, eps)
        =>  G_i <- G_i * clipping * max(||W_i||, eps) / max(||G_i||, 1e-6)
"""

import keras
from keras import ops

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
