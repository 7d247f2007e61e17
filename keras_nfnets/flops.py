"""Counting a model's multiply-adds from its layers.

DeepMind's tables count multiply-adds (NFNet-F0: 12.38 G at 256px); FLOPs are
twice that.
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
        total += conv_macs(block.conv_shortcut, (n, oh, ow, cin))
    se = block.se
    total += se.hidden_channels * se.in_channels
    total += se.hidden_channels * se.out_channels
    return total


def count_macs(model):
    """Multiply-adds per image of a keras_nfnets model (fixed input size).

    Example:
    >>> count_macs(keras_nfnets.NFNetF0()) / 1e9   # 256px
    12.38...
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
