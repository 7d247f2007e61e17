"""Channel attention (keras_nfnets/layers/attention.py): squeeze-excite
and ECA against their formulas."""

import numpy as np

from keras import ops

from keras_nfnets import layers
from keras_nfnets import layers as nfl


def test_squeeze_excite():
    se = nfl.SqueezeExcite(10, 10, se_ratio=0.25)
    x = np.random.default_rng(2).normal(size=(3, 4, 4, 10)).astype("float32")
    gate = ops.convert_to_numpy(se(x))
    assert gate.shape == (3, 1, 1, 10)
    assert se.hidden_channels == 2  # max(1, int(10 * 0.25))
    w0, b0 = [ops.convert_to_numpy(v) for v in se.fc0.weights]
    w1, b1 = [ops.convert_to_numpy(v) for v in se.fc1.weights]
    h = np.maximum(x.mean(axis=(1, 2)) @ w0 + b0, 0) @ w1 + b1
    np.testing.assert_allclose(gate[:, 0, 0], 1 / (1 + np.exp(-h)), rtol=1e-5)
    assert nfl.SqueezeExcite(3, 3, se_ratio=0.1).hidden_channels == 1



def test_eca_kernel_size_and_gate():
    assert layers.EfficientChannelAttention(256).kernel_size == 5
    assert layers.EfficientChannelAttention(32).kernel_size == 3
    eca = layers.EfficientChannelAttention(8, kernel_size=3)
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 8)).astype("float32")
    gate = np.asarray(eca(x))
    k = np.asarray(eca.kernel)[:, 0, 0]
    m = np.pad(x.mean(axis=(1, 2)), ((0, 0), (1, 1)))
    ref = 1 / (1 + np.exp(-(k[0] * m[:, :-2] + k[1] * m[:, 1:-1]
                            + k[2] * m[:, 2:])))
    np.testing.assert_allclose(gate[:, 0, 0], ref, rtol=1e-5)
