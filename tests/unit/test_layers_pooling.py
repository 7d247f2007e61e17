"""The symmetric max pool (keras_nfnets/layers/pooling.py): PyTorch's
padding with minus infinity."""

import numpy as np

from keras_nfnets import layers


def test_symmetric_max_pool_pads_minus_infinity():
    x = -np.abs(np.random.default_rng(2).normal(size=(1, 8, 8, 2))) - 1.0
    y = np.asarray(layers.SymmetricMaxPooling2D(3, 2, 1)(x))
    ref = np.full((1, 4, 4, 2), -np.inf)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)),
                    constant_values=-np.inf)
    for i in range(4):
        for j in range(4):
            ref[0, i, j] = padded[0, 2 * i:2 * i + 3,
                                  2 * j:2 * j + 3].max(axis=(0, 1))
    np.testing.assert_allclose(y, ref, atol=1e-6)
    assert y.max() < -1.0  # never the zero padding
