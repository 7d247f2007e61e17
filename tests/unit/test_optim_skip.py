"""The non-finite-step skip (keras_nfnets.optim.skip): a skipped step moves
nothing and is counted once in `skipped_steps`, by AGC itself and by Keras's
`LossScaleOptimizer` under mixed_float16 when compiled through
`NFNetModel.compile` (no training program)."""

import keras
import numpy as np
import pytest

import keras_nfnets
from keras_nfnets.optim import skip


def test_nonfinite_flag():
    ones = keras.ops.ones((2, 2))
    assert int(skip.nonfinite_flag([ones, None])) == 0
    assert int(skip.nonfinite_flag([ones, ones * np.inf])) == 1
    assert int(skip.nonfinite_flag([None])) == 0


_BIG = 1e20  # finite, but its square overflows float32


@pytest.mark.parametrize("values,expected", [
    ((0.5, 0.5, 0.5), 0), ((np.nan, 0.5, 0.5), 1), ((np.inf, 0.5, 0.5), 1),
    ((-np.inf, 0.5, 0.5), 1), ((_BIG, 0.5, 0.5), 0),
    ((_BIG, np.nan, 0.5), 1), ((_BIG, 0.5, np.inf), 1)])
@pytest.mark.parametrize("in_function", [False, True])
def test_nonfinite_flag_through_the_clips_norms(values, expected,
                                                in_function):
    """The skip tests AGC's unit norms instead of the gradients: the same
    flag, also where a finite gradient's squares overflow (then the
    gradients themselves are tested). The third gradient is not clipped."""
    from keras_nfnets.optim import clip  # pylint: disable=import-outside-toplevel
    shapes = [(3, 3, 2, 4), (4,), (5, 4)]
    grads, weights = [], []
    for shape, value in zip(shapes, values):
        g = np.full(shape, 0.25, "float32")
        g.flat[len(g.flat) // 2] = value
        grads.append(keras.ops.convert_to_tensor(g))
        weights.append(keras.ops.ones(shape))

    def flags(grads):
        _, norms = clip.clip_and_norms(grads[:2], weights[:2], 0.01)
        return (skip.nonfinite_flag(grads),
                skip.nonfinite_flag(grads, norms))

    if in_function and keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        flags = tf.function(flags)
    plain, through_norms = flags(grads)
    assert int(plain) == int(through_norms) == expected


def test_huge_finite_gradients_are_applied():
    """A step whose gradient squares overflow (finite elements) is not
    skipped: AGC's norms are inf, the exact test decides."""
    w = keras.Variable(np.ones((3, 2), "float32"), name="kernel")
    opt = keras_nfnets.AGC(keras.optimizers.SGD(0.1, momentum=0.9),
                           exclude=())
    opt.build([w])
    assert opt._clips_ahead()  # pylint: disable=protected-access
    opt.apply([np.full((3, 2), _BIG, "float32")], [w])
    assert int(opt.skipped_steps.numpy()) == 0
    assert int(opt.iterations.numpy()) == 1


@pytest.mark.parametrize("in_function", [False, True])
def test_nonfinite_gradients_skip_the_step(in_function):
    if in_function and keras.backend.backend() != "tensorflow":
        pytest.skip("the step traced by tf.function: TensorFlow only")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    w = keras.Variable(np.ones((3, 2), "float32"), name="kernel")
    b = keras.Variable(np.ones((2,), "float32"), name="bias")
    opt = keras_nfnets.AGC(
        keras_nfnets.NFNetSGD(0.1, use_ema=True), exclude=())

    def step(gw, gb):
        opt.apply_gradients([(gw, w), (gb, b)])

    if in_function:
        step = tf.function(step)
    good = np.full((3, 2), 0.1, "float32"), np.full((2,), 0.1, "float32")
    step(*good)
    state = [v.numpy() for v in [w, b] + opt.variables]
    for bad in (np.inf, np.nan):
        gw = good[0].copy()
        gw[1, 1] = bad
        step(gw, good[1])
        assert all(np.array_equal(s, v.numpy(), equal_nan=True) for s, v in
                   zip(state[:2], [w, b]))
    assert int(opt.skipped_steps.numpy()) == 2
    assert int(opt.iterations.numpy()) == 1
    step(*good)
    assert int(opt.iterations.numpy()) == 2 and not np.array_equal(
        state[0], w.numpy())

def _tiny_nfnet_model(policy):
    """A two-layer `NFNetModel` built under `policy`."""
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3, name="hidden")(inputs)
        outputs = keras.layers.Dense(2, name="linear")(hidden)
        return keras_nfnets.NFNetModel(inputs, outputs)
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("run_eagerly", [False, True])
def test_mixed_float16_skip_through_compile_is_counted(run_eagerly):
    """`fit` with a batch whose (scaled) gradients overflow: Keras's loss
    scaling skips it without calling AGC; compile's optimizer counts it."""
    model = _tiny_nfnet_model("mixed_float16")
    sgd = keras.optimizers.SGD(0.1)
    model.compile(optimizer=sgd, loss="mse", agc_clipping=0.01,
                  run_eagerly=run_eagerly)
    assert isinstance(model.optimizer, skip.SkipCountingLossScaleOptimizer)
    assert model.optimizer.inner_optimizer is sgd  # the user's, kept
    x = np.ones((4, 4), "float32")
    x[:2] = 6e4  # the first batch overflows float16: inf/nan gradients
    y = np.zeros((4, 2), "float32")
    before = [v.numpy() for v in model.trainable_variables]
    model.fit(x[:2], y[:2], batch_size=2, shuffle=False, verbose=0)
    assert int(sgd.skipped_steps.numpy()) == 1
    assert int(sgd.iterations.numpy()) == 0
    assert all(np.array_equal(b, v.numpy())
               for b, v in zip(before, model.trainable_variables))
    model.fit(x[2:], y[2:], batch_size=2, shuffle=False, verbose=0)
    assert int(sgd.skipped_steps.numpy()) == 1
    assert int(sgd.iterations.numpy()) == 1


def test_compile_without_agc_keeps_keras_loss_scaling():
    model = _tiny_nfnet_model("mixed_float16")
    model.compile(optimizer="sgd", loss="mse", agc_clipping=None)
    assert type(model.optimizer) is keras.optimizers.LossScaleOptimizer


def test_mixed_float16_compiled_model_saves_and_loads(tmp_path):
    """The skip-counting optimizer goes through `.keras` and recompiles."""
    model = _tiny_nfnet_model("mixed_float16")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                  agc_clipping=0.01)
    model.fit(np.ones((2, 4)), np.zeros((2, 2)), verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, skip.SkipCountingLossScaleOptimizer)
    assert isinstance(loaded.optimizer.inner_optimizer, keras_nfnets.AGC)
    assert loaded.optimizer.inner_optimizer.clipping == 0.01


def test_auto_scale_loss_false_is_respected():
    model = _tiny_nfnet_model("mixed_float16")
    model.compile(optimizer="sgd", loss="mse", agc_clipping=0.01,
                  auto_scale_loss=False)
    assert isinstance(model.optimizer, keras_nfnets.AGC)
