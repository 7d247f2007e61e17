"""The unit-wise clip (keras_nfnets.optim.clip): the pure functions
against DeepMind's numbers and the rule by hand."""

import keras
import numpy as np
import pytest

import keras_nfnets
from keras_nfnets.optim import clip
from conftest import AGC_NAMES, deepmind_fixture, relative_error


# ---------------------------------------------------------------- functions
def test_unitwise_norm_axes():
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 16)).astype("float32")
    np.testing.assert_allclose(
        keras_nfnets.unitwise_norm(x),
        np.sqrt((x ** 2).sum(axis=(0, 1, 2), keepdims=True)), rtol=1e-6)
    d = x[0, 0]  # dense kernel (in=8, out=16): norm over the inputs
    np.testing.assert_allclose(keras_nfnets.unitwise_norm(d),
                               np.sqrt((d ** 2).sum(0, keepdims=True)),
                               rtol=1e-6)
    for v in (x[0, 0, 0], np.float32(-3.0), x[:1, :1, :1, :]):
        # vectors, scalars, and anything that squeezes to a vector: whole
        np.testing.assert_allclose(keras_nfnets.unitwise_norm(v),
                                   np.sqrt((np.asarray(v) ** 2).sum()),
                                   rtol=1e-6)
    with pytest.raises(ValueError):
        keras_nfnets.unitwise_norm(np.ones((2, 2, 2, 2, 2)))


def test_adaptive_clip_grads_matches_deepmind():
    ref = deepmind_fixture("agc_reference.npz")
    clipped = keras_nfnets.adaptive_clip_grads(
        [ref["grad:" + n] for n in AGC_NAMES], [ref["param:" + n] for n in AGC_NAMES],
        clipping=0.01, eps=1e-3)
    for name, c in zip(AGC_NAMES, clipped):
        err = relative_error(np.asarray(c), ref["clipped:" + name])
        assert err < 1e-5, (name, err)
    # The fixture exercises both branches and the eps floor.
    assert not np.allclose(ref["grad:conv/bias"], ref["clipped:conv/bias"])
    assert np.allclose(ref["grad:conv/w"], ref["clipped:conv/w"])
    assert keras_nfnets.adaptive_clip_grads([None], [ref["param:se/w"]]) == [
        None]


def test_clip_rule_by_hand():
    w = np.array([[3.0, 0.0], [4.0, 0.0]], "float32")  # unit norms 5, 0
    g = np.array([[0.3, 0.0], [0.0, 1.0]], "float32")  # unit norms .3, 1
    out = np.asarray(keras_nfnets.adaptive_clip_grads([g], [w], 0.1, 1e-3)[0])
    # unit 0: 0.3 <= 0.1 * 5, untouched; unit 1: 1 > 0.1 * max(0, 1e-3)
    np.testing.assert_allclose(out, [[0.3, 0.0], [0.0, 1e-4]], rtol=1e-6)


def test_exclusion_patterns():
    assert clip.normalize_exclude(None) == ()
    assert clip.normalize_exclude("head") == ("head",)
    assert clip.normalize_exclude(["a", "b"]) == ("a", "b")
    assert clip.matches("linear/kernel", ("linear",))
    assert clip.matches("linear/kernel", ("linear/",))
    assert clip.matches("linear/kernel", ("linear/kernel",))
    assert not clip.matches("linear_1/kernel", ("linear",))
    assert not clip.matches("linear/bias", ("linear/kernel",))


def test_clip_gradient_keeps_16_bit_dtype():
    w = np.array([[3.0, 0.0], [4.0, 0.0]], "float32")
    g = np.array([[0.3, 0.0], [0.0, 1.0]], "float16")
    out = clip.clip_gradient(g, w, 0.1, 1e-3)
    assert str(np.asarray(out).dtype) == "float16"
    np.testing.assert_allclose(np.asarray(out, "float32"),
                               [[0.3, 0.0], [0.0, 1e-4]], rtol=1e-3)


def test_adaptive_clip_grads_is_clip_gradient_bit_for_bit():
    """The list function computes the factors of every variable whose unit
    norms have one shape together; each result is `clip_gradient`'s, bit
    for bit (same ops on each unit), for clipped and untouched units, the
    eps floor (a zero weight), a 16-bit gradient and a `None`."""
    rng = np.random.default_rng(1)
    shapes = [(3, 3, 4, 8), (3, 3, 4, 8), (1, 1, 8, 8), (8, 5), (8, 5),
              (8,), (8,), (), (2, 3, 5)]
    params = [rng.normal(size=s).astype("float32") for s in shapes]
    params[5][:] = 0.0  # eps floor
    scales = [1.0, 1e-4, 1.0, 1e-4, 1.0, 1.0, 1e-4, 1.0, 1e-4]
    grads = [(rng.normal(size=s) * k).astype("float32")
             for s, k in zip(shapes, scales)]
    grads[6] = grads[6].astype("float16")
    grads.append(None)
    params.append(params[0])
    together = clip.adaptive_clip_grads(grads, params, 0.01, 1e-3)
    assert together[-1] is None
    touched = 0
    for g, p, c in zip(grads[:-1], params[:-1], together[:-1]):
        alone = np.asarray(clip.clip_gradient(g, p, 0.01, 1e-3))
        c = np.asarray(c)
        assert c.dtype == g.dtype and c.shape == g.shape
        assert np.array_equal(c, alone)
        touched += int(not np.array_equal(c, g))
    assert 0 < touched < len(shapes)  # both branches taken


@pytest.mark.parametrize("shape,axis", [
    ((3, 3, 128, 128), (0, 1, 2)), ((3, 3, 3, 16), (0, 1, 2)),
    ((1, 1, 768, 1536), (0, 1, 2)), ((7, 5, 33, 3), (0, 1, 2)),
    ((3072, 1000), 0), ((65, 9), 0), ((1536,), None), ((1, 1, 1, 17), None),
    ((3,), None)])
def test_unit_norm_is_deepminds_formula_bit_for_bit(shape, axis):
    """The norms come from one reduction on TensorFlow
    (`reduce_euclidean_norm`): the same bits as sqrt(sum(square(x)))."""
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(sum(shape)).standard_normal(shape).astype(
            "float32"))
    formula = keras.ops.sqrt(keras.ops.sum(keras.ops.square(x), axis=axis))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(formula),
                                  keras.ops.convert_to_numpy(
                                      clip._unit_norm(x, axis)))  # pylint: disable=protected-access


def test_unit_norm_where_xla_compiles():
    """Under XLA (jit_compile, TPU) the plain formula is traced: the
    one-kernel reduction has no XLA version."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("XLA-compiled tf.function: TensorFlow only")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    x = tf.random.stateless_normal((3, 3, 8, 16), (1, 2))
    norms = tf.function(lambda x: clip._unit_norm(  # pylint: disable=protected-access
        x, (0, 1, 2)), jit_compile=True)(x)
    np.testing.assert_allclose(norms, np.sqrt(np.sum(np.square(x), (0, 1, 2))),
                               rtol=1e-6)
