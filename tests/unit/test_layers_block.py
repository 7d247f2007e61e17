"""The normalizer-free block (keras_nfnets/layers/block.py): structure,
the skip gain, stochastic depth, remat, `BlockSpec` and its config, and
`.keras` files saved by an earlier version (flat block configs)."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras import ops

import keras_nfnets
from conftest import REPO
from keras_nfnets import layers as nfl
from keras_nfnets import variants
from keras_nfnets.layers.block import BlockSpec

V0 = REPO / "tests" / "fixtures" / "keras_v0"  # saved by an earlier version


def _block(**kw):
    args = dict(in_channels=8, out_channels=16, expansion=0.5, group_width=4,
                strides=2, beta=0.9, alpha=0.2, stochdepth_rate=0.25)
    args.update(kw)
    return nfl.NFBlock(**args, name="nf_block_1")



def test_nfblock_structure_and_shapes():
    block = _block()
    y = block(np.zeros((2, 9, 9, 8), "float32"))
    assert tuple(y.shape) == (2, 5, 5, 16)
    assert block.width == 8 and block.groups == 2
    assert sorted(block.named_sublayers()) == [
        "conv0", "conv1", "conv1b", "conv2", "conv_shortcut", "squeeze_excite"]
    assert float(ops.convert_to_numpy(block.skip_gain)) == 0.0
    # No projection when shape is kept.
    same = nfl.NFBlock(16, 16, group_width=4, name="b")
    assert same.conv_shortcut is None
    # Bottleneck width rounds down to a multiple of the group width.
    assert nfl.NFBlock(16, 24, expansion=0.5, group_width=8).width == 8



def test_nfblock_skip_gain_zero_is_shortcut_and_config_roundtrip():
    block = nfl.NFBlock(8, 8, group_width=4, beta=0.5, name="b")
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 8)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(block(x)), x, rtol=1e-6)
    clone = nfl.NFBlock.from_config(block.get_config())
    assert clone.beta == 0.5 and clone.group_width == 4



def test_nfblock_stochastic_depth_training_only():
    block = _block(in_channels=16, strides=1, stochdepth_rate=0.5)
    x = np.random.default_rng(1).normal(size=(64, 4, 4, 16)).astype("float32")
    block(x)
    block.skip_gain.assign(1.0)
    a = ops.convert_to_numpy(block(x, training=False))
    b = ops.convert_to_numpy(block(x, training=False))
    np.testing.assert_array_equal(a, b)
    t = ops.convert_to_numpy(block(x, training=True))
    # Dropped examples equal the shortcut (x here), kept ones equal inference.
    dropped = np.all(np.isclose(t, x, atol=1e-6), axis=(1, 2, 3))
    kept = np.all(np.isclose(t, a, atol=1e-5), axis=(1, 2, 3))
    assert np.all(dropped | kept) and dropped.any() and kept.any()



def test_nfblock_remat_gives_identical_outputs_and_gradients():
    """Recomputing the residual branch in the backward pass (remat) changes
    memory, not numbers; stochastic depth draws stay outside it."""
    import tensorflow as tf
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(4, 8, 8, 16)).astype("float32"))
    results = []
    for remat in (False, True):
        block = nfl.NFBlock(16, 32, group_width=8, strides=2, beta=0.8,
                            remat=remat, name="nf_block_2")
        block.build(x.shape)
        for v in block.weights:  # same weights for both
            v.assign(np.random.default_rng(len(v.path)).normal(
                size=v.shape).astype("float32") * 0.3)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = block(x, training=True)
            loss = tf.reduce_sum(y * y)
        grads = tape.gradient(loss, [x] + block.trainable_weights)
        results.append([y.numpy()] + [g.numpy() for g in grads])
        assert nfl.NFBlock.from_config(block.get_config()).remat == remat
    # The same float32 sums, recomputed in another order: a weight
    # gradient sums hundreds of products with cancellation, so its small
    # elements carry rounding relative to the array's scale (seen where
    # TensorFlow runs oneDNN's kernels), not to themselves.
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5,
                                   atol=1e-5 * np.abs(b).max())



def test_timm_numerics_model_saves_and_loads(tmp_path):
    cfg = variants.NFNetConfig(
        width=(16, 32, 32, 64), depth=(1, 1, 1, 1), group_width=(8,) * 4,
        expansion=(0.5,) * 4, activation="silu", attention="eca",
        ch_div=8, se_divisor=8, skip_gain=False, stem_width=16,
        numerics="timm", final_conv_mult=1.5)
    model = keras_nfnets.NFNet(config=cfg, classes=3,
                               input_shape=(32, 32, 3))
    x = np.random.default_rng(4).uniform(0, 255, (1, 32, 32, 3))
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)),
                               atol=1e-6)
    assert again.get_layer("nf_block").conv_options["eps_mode"] == "add"


def test_block_spec_round_trips_through_its_config():
    spec = BlockSpec(expansion=0.5, big_width=False, group_width=8,
                     attention="eca", se_position="bottleneck",
                     strided_shortcut=True, alpha=0.5, skip_gain=False,
                     activation="silu",
                     conv_options={"eps": 1e-5, "eps_mode": "add"},
                     activation_options={"gamma": 1.7})
    assert BlockSpec(**spec.to_config()) == spec
    block = nfl.NFBlock(16, 32, spec, strides=2, beta=0.7, name="b")
    clone = nfl.NFBlock.from_config(block.get_config())
    assert clone.spec == spec and clone.beta == 0.7 and clone.strides == 2
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 16)).astype("float32")
    y = block(x)
    clone.build(x.shape)
    clone.set_weights(block.get_weights())
    np.testing.assert_array_equal(ops.convert_to_numpy(clone(x)),
                                  ops.convert_to_numpy(y))


def test_block_keywords_and_flat_configs_still_build_the_same_block():
    """The previous form: the spec's fields as keywords, and the flat
    config earlier versions saved."""
    old = nfl.NFBlock(8, 16, group_width=4, alpha=0.3, attention="eca",
                      name="b")
    assert old.spec == BlockSpec(group_width=4, alpha=0.3, attention="eca")
    flat = {**{k: v for k, v in old.get_config().items() if k != "spec"},
            **old.spec.to_config()}
    assert nfl.NFBlock.from_config(flat).spec == old.spec


def test_block_spec_refuses_bad_fields_by_name():
    with pytest.raises(ValueError, match="attention must be 'se' or 'eca'"):
        BlockSpec(attention="cbam")
    with pytest.raises(ValueError, match="se_position"):
        BlockSpec(se_position="input")
    with pytest.raises(TypeError, match="conv_options must be a dict"):
        BlockSpec(conv_options=[("eps", 1e-5)])
    with pytest.raises(TypeError, match="both a spec and the spec fields"):
        nfl.NFBlock(8, 8, BlockSpec(), group_width=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        BlockSpec().alpha = 0.5


def _keras_version():
    return tuple(int(p) for p in keras.version().split(".")[:2])


@pytest.mark.skipif(
    _keras_version() < (3, 15),
    reason="the files were written by Keras 3.15, whose initializer configs "
           "(VarianceScaling input_axes) older Keras cannot read; the check "
           "is of this package's old NFBlock configs, run on Keras >= 3.15")
@pytest.mark.parametrize("name", ["nfnet_tiny", "eca_tiny_timm"])
def test_keras_files_saved_by_an_earlier_version_load(name):
    """Files written before the redesign (flat NFBlock configs) load and
    give the logits that version computed (tests/fixtures/keras_v0)."""
    saved = np.load(V0 / "outputs.npz")
    model = keras.saving.load_model(V0 / f"{name}.keras")
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(saved["x"])), saved[name],
        rtol=1e-5, atol=1e-5)
