"""The variant table (keras_nfnets/variants.py): one row per architecture,
every family's facts as DeepMind's and timm's code give them."""

import keras_nfnets
from keras_nfnets import variants


def test_variant_tables():
    assert sorted(k for k in variants.NF_REGNET_VARIANTS
                  if not k.endswith("-timm")) == [f"B{i}" for i in range(9)]
    assert variants.NF_REGNET_VARIANTS["B8"].stage_widths == (78, 174, 342,
                                                              726)
    assert variants.NF_RESNET_VARIANTS["ResNet200"].depth == (3, 24, 36, 3)
    assert keras_nfnets.NFRegNetB5.__doc__.count("456x456") == 1


def test_variant_table():
    table = variants.NFNET_VARIANTS
    assert len(table) == 21  # F0-F7, F0+-F7+ and timm's L0, ECA-L0-L3
    f3 = table["F3"]
    assert f3.depth == (4, 8, 24, 12) and f3.train_imsize == 320
    assert f3.RA_level == "415" and f3.drop_rate == 0.4
    assert table["F0"].test_imsize == 256 and table["F7"].depth == (8, 16, 48, 24)


def test_l_variants_are_rows_of_the_one_table():
    cfg = keras_nfnets.get_config("ECA-L1")
    assert cfg.numerics == "timm" and cfg.attention == "eca"
    assert cfg.depth == keras_nfnets.get_config("F1").depth
    assert cfg.group_width == (64,) * 4 and cfg.expansion == (0.25,) * 4
    assert keras_nfnets.get_config("F1").numerics == "deepmind"
    assert keras_nfnets.NUMERICS["timm"].ws_eps_mode == "add"
