"""Scaled activations (keras_nfnets/layers/activations.py): DeepMind's
gammas give unit variance, GELU is the tanh form times 1.7015043497085571."""

import numpy as np
import pytest

from keras import ops

from keras_nfnets import layers as nfl


@pytest.mark.parametrize("name", sorted(nfl.GAMMAS))
def test_gamma_gives_unit_variance(name):
    """gamma = 1/std(f(x)) on N(0, 1): the scaled activation has unit
    variance (e.g. gelu 1.000 +- 0.002)."""
    x = np.random.default_rng(0).standard_normal((4_000, 256)).astype("float32")
    y = ops.convert_to_numpy(nfl.scaled_activation(name)(ops.convert_to_tensor(x)))
    assert abs(y.std() - 1.0) < 0.002, (name, y.std())



def test_gelu_is_tanh_approximation_times_gamma():
    x = np.linspace(-4, 4, 101).astype("float32")
    tanh_gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    y = ops.convert_to_numpy(nfl.ScaledActivation("gelu")(x))
    np.testing.assert_allclose(y, tanh_gelu * 1.7015043497085571, rtol=1e-5, atol=1e-6)



def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="'swish2'"):
        nfl.ScaledActivation("swish2")
