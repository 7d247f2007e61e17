"""Stochastic depth (keras_nfnets/layers/stochastic_depth.py): one draw
per example, no rescaling, identity at inference."""

import numpy as np

from keras import ops

from keras_nfnets import layers as nfl


def test_stochastic_depth_per_example_no_rescale_identity_at_inference():
    sd = nfl.StochasticDepth(0.5, seed=3)
    x = np.ones((256, 2, 2, 3), "float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(sd(x)), x)
    np.testing.assert_array_equal(ops.convert_to_numpy(sd(x, training=False)), x)
    y = ops.convert_to_numpy(sd(x, training=True))
    per_example = y.reshape(256, -1)
    # one draw per example: each example entirely kept (1, not 1/keep) or 0
    assert set(np.unique(per_example)) <= {0.0, 1.0}
    assert np.all(per_example.min(1) == per_example.max(1))
    assert 0.3 < per_example[:, 0].mean() < 0.7
    cfg = sd.get_config()
    assert nfl.StochasticDepth.from_config(cfg).rate == 0.5
