"""Normalizer-free layers, numerically identical to DeepMind's reference
(and to timm's, with timm's numerics). One module per concept:

* `activations`: the gamma-scaled nonlinearities and their closed-form
  gradients (`scaled_activation`, `ScaledActivation`, `GAMMAS`);
* `ws_conv`: scaled weight standardization (`standardize_weight`,
  `WSConv2D`);
* `attention`: `SqueezeExcite`, `EfficientChannelAttention`;
* `stochastic_depth`: `StochasticDepth`;
* `pooling`: `SymmetricMaxPooling2D` (PyTorch's max pool);
* `block`: `BlockSpec` and `NFBlock`, one whole residual block as a single
  Keras layer (so even NFNet-F7's 96 blocks make a small functional graph).

Everything uses `keras.ops` only, so the layers run on the TensorFlow, JAX
and PyTorch backends alike. The device-dependent choices (remat, grouped
convolutions) live in `keras_nfnets.runtime`; their names are re-exported
here for code that imported them from `keras_nfnets.layers`.

Example:
>>> from keras_nfnets.layers import WSConv2D
>>> y = WSConv2D(64, 3)(keras.random.normal((1, 32, 32, 16)))
"""

from keras_nfnets.layers.activations import (GAMMAS, ScaledActivation,
                                             check_activation,
                                             scaled_activation)
from keras_nfnets.layers.attention import (EfficientChannelAttention,
                                           SqueezeExcite)
from keras_nfnets.layers.block import BlockSpec, NFBlock, bottleneck
from keras_nfnets.layers.pooling import SymmetricMaxPooling2D
from keras_nfnets.layers.stochastic_depth import StochasticDepth
from keras_nfnets.layers.ws_conv import WSConv2D, standardize_weight
from keras_nfnets.runtime import (check_remat, grouped_conv_mode,
                                  on_accelerator, resolve_remat,
                                  set_grouped_conv_mode)
from keras_nfnets.variants import make_divisible

__all__ = [
    "GAMMAS", "BlockSpec", "EfficientChannelAttention", "NFBlock",
    "ScaledActivation", "SqueezeExcite", "StochasticDepth",
    "SymmetricMaxPooling2D", "WSConv2D", "bottleneck", "check_activation",
    "check_remat", "grouped_conv_mode", "make_divisible", "on_accelerator",
    "resolve_remat", "scaled_activation", "set_grouped_conv_mode",
    "standardize_weight",
]
