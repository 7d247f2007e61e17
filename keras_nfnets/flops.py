"""Counting a model's multiply-adds from its layers.

DeepMind counts multiply-adds of the convolutions, the squeeze-excite
linears and the classifier (its `count_flops`); FLOPs are twice that. Every
family is counted: NFNets, NF-ResNets (no squeeze-excite; a strided 1x1
projection shortcut, counted at its output resolution), NF-RegNets and
timm's L-family (symmetric padding; ECA's 1D convolution across channels).
"""

import math

import keras

from keras_nfnets.layers import EfficientChannelAttention, NFBlock


def _out_hw(layer, input_shape):
    """Output height and width of a convolution, from the layer itself (so
    SAME, VALID and WSConv2D's symmetric padding are all counted right)."""
    return tuple(layer.compute_output_shape(tuple(input_shape)))[1:3]


def conv_macs(layer, input_shape):
    """Multiply-adds of a Conv2D layer (WSConv2D included) on `input_shape`."""
    cin = input_shape[-1]
    oh, ow = _out_hw(layer, input_shape)
    return (oh * ow * math.prod(layer.kernel_size) * (cin // layer.groups)
            * layer.filters)


def attention_macs(attention):
    """Multiply-adds of a block's channel attention, on the pooled
    activations: squeeze-excite's two linears, or ECA's 1D convolution
    across channels."""
    if isinstance(attention, EfficientChannelAttention):
        return attention.kernel_size * attention.channels
    return (attention.hidden_channels * attention.in_channels
            + attention.hidden_channels * attention.out_channels)


def block_macs(block, input_shape):
    """Multiply-adds of an `NFBlock` on `input_shape` (as DeepMind counts)."""
    n, h, w, cin = input_shape
    total = conv_macs(block.conv0, input_shape)
    total += conv_macs(block.conv1, (n, h, w, block.width))
    oh, ow = _out_hw(block.conv1, (n, h, w, block.width))
    if block.conv1b is not None:
        total += conv_macs(block.conv1b, (n, oh, ow, block.width))
    total += conv_macs(block.conv2, (n, oh, ow, block.width))
    if block.conv_shortcut is not None:
        # NFNets/NF-RegNets average-pool first, then a 1x1 conv at the output
        # size; NF-ResNets stride the 1x1 conv itself (same output size).
        shortcut_in = ((n, h, w, cin) if block.strided_shortcut
                       else (n, oh, ow, cin))
        total += conv_macs(block.conv_shortcut, shortcut_in)
    if block.se is not None:
        total += attention_macs(block.se)
    return total


def count_macs(model):
    """Multiply-adds per image of a keras_nfnets model (fixed input size).

    Example:
    >>> macs = count_macs(keras_nfnets.NFNetF0())  # at its 256px test size
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, NFBlock):
            total += block_macs(layer, tuple(layer.input.shape))
        elif isinstance(layer, keras.layers.Conv2D):
            total += conv_macs(layer, tuple(layer.input.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def count_flops(model):
    """FLOPs per image: multiply-adds times 2."""
    return 2 * count_macs(model)
