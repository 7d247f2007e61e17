"""Memory-lean gradients (weight standardization, gelu/silu) equal autodiff,
and the remat / grouped-convolution switches change no numbers.

No timings here: speed is measured by benchmarks/benchmark.py."""

import numpy as np
import pytest
import tensorflow as tf

from keras_nfnets import layers as nfl

_TINY = dict(width=(16, 32, 32, 32), depth=(1, 1, 1, 1),
             group_width=(8, 8, 8, 8))


def _ws_grads(w, gain, g, lean):
    with tf.GradientTape() as tape:
        tape.watch([w, gain])
        y = nfl.standardize_weight(w, gain, 1e-4, lean_gradient=lean)
        loss = tf.reduce_sum(y * g)
    dw, dgain = tape.gradient(loss, [w, gain])
    return y.numpy(), dw.numpy(), dgain.numpy()


@pytest.mark.parametrize("shape", [(3, 3, 4, 8), (1, 1, 16, 5), (3, 3, 1, 3)])
def test_lean_weight_standardization_gradient_equals_autodiff(shape):
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape).astype("float32") * 2 + 0.3
    w[..., -1] = 0.5  # a constant channel: var * fan_in < eps, clamped
    w = tf.constant(w)
    gain = tf.constant(rng.uniform(0.5, 2, size=shape[-1:]).astype("float32"))
    g = tf.constant(rng.normal(size=shape).astype("float32"))
    lean = _ws_grads(w, gain, g, True)
    plain = _ws_grads(w, gain, g, False)
    np.testing.assert_array_equal(lean[0], plain[0])  # same forward values
    for a, b in zip(lean[1:], plain[1:]):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=1e-6)


def test_wsconv_layer_gradient_equals_autodiff():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 7, 7, 6)).astype("float32"))
    conv = nfl.WSConv2D(6, 3, groups=2)
    conv.build(x.shape)
    with tf.GradientTape() as tape:
        y = conv(x)
        loss = tf.reduce_sum(y * y)
    lean = tape.gradient(loss, [conv.kernel, conv.gain])
    with tf.GradientTape() as tape:
        w_hat = nfl.standardize_weight(tf.convert_to_tensor(conv.kernel),
                                       tf.convert_to_tensor(conv.gain),
                                       conv.eps, lean_gradient=False)
        xs = tf.split(x, 2, axis=-1)
        ws = tf.split(w_hat, 2, axis=-1)
        y2 = tf.concat([tf.nn.conv2d(a, b, 1, "SAME") for a, b in
                        zip(xs, ws)], -1) + conv.bias
        loss2 = tf.reduce_sum(y2 * y2)
    plain = tape.gradient(loss2, [conv.kernel, conv.gain])
    np.testing.assert_allclose(y.numpy(), y2.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(lean, plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_lean_activation_gradient_equals_autodiff(name):
    x = tf.constant(np.linspace(-8, 8, 2001).astype("float32"))
    out = {}
    for lean in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = nfl.scaled_activation(name, lean_gradient=lean)(x)
        out[lean] = (y.numpy(), tape.gradient(y, x).numpy())
    np.testing.assert_array_equal(out[True][0], out[False][0])
    np.testing.assert_allclose(out[True][1], out[False][1], rtol=0, atol=1e-5)


def test_remat_auto_is_on_without_accelerator_and_validated():
    from keras_nfnets import builder, layers
    assert builder.resolve_remat("auto") is (not layers.on_accelerator())
    assert builder.resolve_remat(False) is False
    with pytest.raises(ValueError, match="remat"):
        builder.resolve_remat("yes")


# -- scheduling: nothing kernel-sized is computed before it is needed --------

def _tensor_peak_bytes(fn):
    """Peak bytes of TensorFlow's CPU allocator while `fn` runs, above what
    was allocated before (deterministic: no timing)."""
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    except (ValueError, RuntimeError) as e:
        pytest.skip(f"this TensorFlow CPU allocator keeps no statistics: {e}")
    fn()
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def test_standardized_kernels_are_computed_just_in_time():
    """A stack of convolutions with large kernels and tiny activations: the
    forward + backward step holds the kernel gradients it returns, plus a
    few kernels' worth of temporaries, not every layer's standardized kernel
    (and its `w - mean`) from the start of the step. Before the kernels were
    made to depend on the layer input (`_data_dependent_zero`), this peak
    was 33 kernels for 16 layers; now it is 20."""
    import keras
    depth, width = 16, 1024
    convs = [nfl.WSConv2D(width, 1) for _ in range(depth)]
    x = tf.ones((1, 2, 2, width))
    for conv in convs:
        conv.build(x.shape)
    kernel_bytes = width * width * 4
    variables = [v.value for conv in convs for v in conv.trainable_variables]

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            h = x
            for conv in convs:
                h = keras.ops.tanh(conv(h))
            loss = tf.reduce_sum(h)
        return tape.gradient(loss, variables)

    step(x)  # trace and warm up
    peak = _tensor_peak_bytes(lambda: [g.numpy() for g in step(x)])
    # The returned gradients alone are `depth` kernels; computing every
    # standardized kernel up front holds about twice that.
    assert peak < 1.5 * depth * kernel_bytes, (
        f"peak {peak / kernel_bytes:.1f} kernels for {depth} layers")


def test_train_step_is_traced_once():
    """The optimizer is built before the first trace (NFNetModel), so
    tf.function does not trace the train step a second time because the
    first trace created the optimizer's variables."""
    import keras
    import keras_nfnets
    model = keras_nfnets.NFNet(_TINY, weights=None, input_shape=(16, 16, 3),
                               classes=3)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    traces = []
    train_step = model.train_step

    def counting_train_step(data):
        traces.append(1)
        return train_step(data)

    model.train_step = counting_train_step
    x = np.zeros((2, 16, 16, 3), "float32")
    y = np.zeros((2,), "int64")
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    assert len(traces) == 1
    assert model.optimizer.built
