"""Keras's `SGD` update as one TensorFlow kernel per variable.

`keras.optimizers.SGD.update_step` with momentum is written as separate
full-size elementwise ops: `m <- m * momentum - g * lr`, then (Nesterov)
`w <- w + (m * momentum - g * lr)` or `w <- w + m`; without momentum
`w <- w - g * lr`. On TensorFlow each multiply, subtraction and assignment
is its own memory-bound kernel over a parameter-sized tensor (`make
bench-profile`: the optimizer's `Mul`, `Sub` and `AssignAdd` rows).
TensorFlow's training kernels `ResourceApplyKerasMomentum` (written for
Keras's momentum update) and
`ResourceApplyGradientDescent` compute the same expressions, in the same
order and precision, in one pass: the weights and momentums come out equal
bit for bit (tests/unit/test_optim_fused_sgd.py checks them against Keras's
own `update_step`).

`AGC.update_step` uses them (`applies`, `update`) where that holds by
construction: the TensorFlow backend, an optimizer whose update is Keras's
own `SGD` (not a subclass with its own `update_step`), a dense
floating-point gradient, and one replica (AGC's `_one_replica`: under a
multi-replica `tf.distribute` strategy Keras's per-variable update
stays). Everything else goes through Keras's `update_step` unchanged.
`tf.raw_ops` is TensorFlow's public API.
"""

import keras

from keras_nfnets import compat

_KERNEL_DTYPES = ("float16", "bfloat16", "float32", "float64")


def applies(optimizer, gradient, variable):
    """Whether `update` computes `optimizer`'s own update of `variable`
    (an `AGC` whose `base_class` is Keras's `SGD`) on this backend; the
    caller makes sure there is one replica.

    Example:
    >>> opt = keras_nfnets.AGC(keras.optimizers.SGD(0.1, momentum=0.9))
    >>> applies(opt, grad, variable)  # True on TensorFlow, one replica
    """
    if keras.backend.backend() != "tensorflow":
        return False
    base = getattr(type(optimizer), "base_class", None)
    if base is not keras.optimizers.SGD:
        return False
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not isinstance(gradient, tf.Tensor) or not hasattr(variable, "handle"):
        return False  # e.g. tf.IndexedSlices: Keras's scatter updates
    dtype = keras.backend.standardize_dtype(variable.dtype)
    return dtype in _KERNEL_DTYPES


def update(optimizer, gradient, variable, learning_rate):
    """Keras `SGD.update_step(gradient, variable, learning_rate)` as one
    fused TensorFlow kernel (see the module's docstring; call only where
    `applies` is true)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    dtype = variable.dtype
    learning_rate = tf.cast(learning_rate, dtype)
    gradient = tf.cast(gradient, dtype)
    if optimizer.momentum == 0:
        tf.raw_ops.ResourceApplyGradientDescent(
            var=variable.handle, alpha=learning_rate, delta=gradient)
        return
    momentum = optimizer.momentums[compat.variable_index(optimizer, variable)]
    tf.raw_ops.ResourceApplyKerasMomentum(
        var=variable.handle, accum=momentum.handle, lr=learning_rate,
        grad=gradient, momentum=tf.cast(optimizer.momentum, dtype),
        use_nesterov=bool(optimizer.nesterov))
