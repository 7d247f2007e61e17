"""FLOP counting against DeepMind's published multiply-add counts."""

import keras_nfnets
from keras_nfnets.flops import count_flops, count_macs


def test_f0_multiply_adds_match_deepmind_table():
    # DeepMind's table: NFNet-F0 12.38 G multiply-adds at 256px.
    model = keras_nfnets.NFNetF0()
    assert abs(count_macs(model) / 1e9 - 12.38) < 0.01
    assert count_flops(model) == 2 * count_macs(model)
