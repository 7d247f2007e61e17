"""keras_nfnets.optim.fused_sgd: Keras's SGD update as one TensorFlow kernel
per variable, inside `AGC`. The reference is Keras's own
`SGD.update_step` (the installed Keras, floor and latest in CI): the
weights and momentums must come out equal bit for bit."""

import keras
import numpy as np
import pytest

import keras_nfnets
from keras_nfnets.optim import fused_sgd

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the fused kernels are TensorFlow's (other backends keep "
           "Keras's update_step)")

_SHAPES = [(3, 3, 8, 16), (16,), (), (32, 10)]


def _variables(seed):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.standard_normal(s).astype("float32"),
                           name=f"v{i}") for i, s in enumerate(_SHAPES)]


def _train(optimizer, steps=3):
    """`steps` updates with the same large gradients (some units' clip
    would matter, but AGC's clipping is off: only the update is
    compared), traced as in fit."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    variables = _variables(1)
    optimizer.build(variables)
    rng = np.random.default_rng(2)
    grads = [(10 * rng.standard_normal((steps,) + s)).astype("float32")
             for s in _SHAPES]

    @tf.function
    def step(gs):
        optimizer.apply(gs, variables)

    for k in range(steps):
        step([tf.constant(g[k]) for g in grads])
    slots = list(getattr(optimizer, "momentums", None) or [])
    return ([v.numpy() for v in variables], [m.numpy() for m in slots],
            step.get_concrete_function(
                [tf.constant(g[0]) for g in grads]).graph)


def _op_types(graph):
    types = {}
    for op in graph.get_operations():
        types[op.type] = types.get(op.type, 0) + 1
    for function in graph._functions.values():  # pylint: disable=protected-access
        for op in function.graph.get_operations():
            types[op.type] = types.get(op.type, 0) + 1
    return types


@pytest.mark.parametrize("momentum,nesterov,kernel", [
    (0.9, True, "ResourceApplyKerasMomentum"),
    (0.9, False, "ResourceApplyKerasMomentum"),
    (0.0, False, "ResourceApplyGradientDescent")])
def test_same_bits_as_keras_sgd(momentum, nesterov, kernel):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    make = lambda: keras.optimizers.SGD(  # noqa: E731
        schedule, momentum=momentum, nesterov=nesterov)
    keras_weights, keras_slots, keras_graph = _train(make())
    fused = keras_nfnets.AGC(make(), clipping=None, skip_nonfinite=False,
                             exclude=())
    weights, slots, graph = _train(fused)
    for a, b in zip(keras_weights + keras_slots, weights + slots):
        np.testing.assert_array_equal(a, b)
    assert _op_types(graph).get(kernel, 0) == len(_SHAPES)
    assert kernel not in _op_types(keras_graph)


def test_with_the_clip_and_the_skip(monkeypatch):
    """AGC's defaults (clip ahead, non-finite skip): the same bits as the
    same AGC with Keras's `update_step` (the fused path turned off)."""
    def run():
        agc = keras_nfnets.AGC(
            keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
            clipping=0.01, exclude=())
        assert agc._clips_ahead()  # pylint: disable=protected-access
        return _train(agc)

    weights, slots, graph = run()
    assert _op_types(graph).get("ResourceApplyKerasMomentum") == len(_SHAPES)
    monkeypatch.setattr(fused_sgd, "applies", lambda *args: False)
    keras_weights, keras_slots, keras_graph = run()
    assert "ResourceApplyKerasMomentum" not in _op_types(keras_graph)
    for a, b in zip(keras_weights + keras_slots, weights + slots):
        np.testing.assert_array_equal(a, b)


def test_only_where_the_update_is_keras_sgd():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    variable = keras.Variable(np.ones((4, 2), "float32"))
    grad = tf.ones((4, 2))
    sgd = keras_nfnets.AGC(keras.optimizers.SGD(0.1, momentum=0.9))
    assert fused_sgd.applies(sgd, grad, variable)
    # A subclass with its own update_step (DeepMind's recipe) keeps it.
    recipe = keras_nfnets.AGC(keras_nfnets.optim.NFNetSGD(0.1))
    assert not fused_sgd.applies(recipe, grad, variable)
    assert not fused_sgd.applies(
        keras_nfnets.AGC(keras.optimizers.Adam(0.1), clipping=0.1), grad,
        variable)
    # Sparse gradients: Keras's scatter updates.
    sparse = tf.IndexedSlices(tf.ones((1, 2)), tf.constant([0]),
                              tf.constant([4, 2]))
    assert not fused_sgd.applies(sgd, sparse, variable)
