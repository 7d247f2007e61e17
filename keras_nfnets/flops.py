"""Counting a model's multiply-adds from its layers.

DeepMind counts multiply-adds of the convolutions, the squeeze-excite
linears and the classifier (its `count_flops`); FLOPs are twice that. Every
family is counted: NFNets, NF-ResNets (no squeeze-excite; a strided 1x1
projection shortcut, counted at its output resolution) and NF-RegNets.
"""

import math

import keras

from keras_nfnets.layers import NFBlock


def _out_hw(h, w, strides, padding="same"):
    sh, sw = strides
    if padding != "same":
        raise ValueError("only SAME-padded convolutions are counted")
    return -(-h // sh), -(-w // sw)


def conv_macs(layer, input_shape):
    """Multiply-adds of a Conv2D layer (WSConv2D included) on `input_shape`."""
    _, h, w, cin = input_shape
    oh, ow = _out_hw(h, w, layer.strides, layer.padding)
    return (oh * ow * math.prod(layer.kernel_size) * (cin // layer.groups)
            * layer.filters)


def block_macs(block, input_shape):
    """Multiply-adds of an `NFBlock` on `input_shape` (as DeepMind counts)."""
    n, h, w, cin = input_shape
    total = conv_macs(block.conv0, input_shape)
    total += conv_macs(block.conv1, (n, h, w, block.width))
    oh, ow = _out_hw(h, w, (block.strides, block.strides))
    if block.conv1b is not None:
        total += conv_macs(block.conv1b, (n, oh, ow, block.width))
    total += conv_macs(block.conv2, (n, oh, ow, block.width))
    if block.conv_shortcut is not None:
        # NFNets/NF-RegNets average-pool first, then a 1x1 conv at the output
        # size; NF-ResNets stride the 1x1 conv itself (same output size).
        shortcut_in = ((n, h, w, cin) if block.strided_shortcut
                       else (n, oh, ow, cin))
        total += conv_macs(block.conv_shortcut, shortcut_in)
    se = block.se
    if se is not None:  # on the pooled activations
        total += se.hidden_channels * se.in_channels
        total += se.hidden_channels * se.out_channels
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
