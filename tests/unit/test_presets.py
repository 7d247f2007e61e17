"""`keras_nfnets.presets`: one row per published file, data only, and no
fact about a model that another table already holds differently."""

import keras_nfnets
from keras_nfnets import presets, variants
from keras_nfnets.weights import deepmind

_FIELDS = {"source", "constructor", "path", "file", "md5", "size", "sha256",
           "train_size", "test_size", "crop", "crop_fraction",
           "interpolation", "top1", "license"}


def test_every_row_has_every_field_and_a_constructor():
    for name, row in presets.PRESETS.items():
        assert _FIELDS <= set(row), name
        assert row["source"] in presets.BASE_URLS, name
        assert callable(getattr(keras_nfnets, row["constructor"])), name
        assert row["crop"] in ("resize_crop_32", "center"), name
        assert 0 < row["crop_fraction"] <= 1, name
    files = [row["file"] for row in presets.PRESETS.values()]
    assert len(set(files)) == len(files)  # one cache folder for all


def test_deepmind_rows():
    """DeepMind's F0-F6: published top-1, the md5 list, F0's size, and
    the evaluation crop squash-resize to size+32 then centre crop."""
    rows = {k: v for k, v in presets.PRESETS.items()
            if v["source"] == "deepmind"}
    assert list(rows) == [f"F{n}" for n in range(7)]
    assert [r["top1"] for r in rows.values()] == [
        83.6, 84.7, 85.1, 85.7, 85.9, 86.0, 86.5]
    assert all(len(r["md5"]) == 32 for r in rows.values())
    assert rows["F0"]["size"] == 285976842
    assert rows["F0"]["crop_fraction"] == 256 / 288


def test_sizes_agree_with_the_variant_table():
    """Train and test sizes are in both tables (the architecture's and the
    published file's): they must agree."""
    for name, row in {**presets.PRESETS, **presets.UNPUBLISHED}.items():
        table = (variants.NFNET_VARIANTS if name in variants.NFNET_VARIANTS
                 else variants.NF_RESNET_VARIANTS
                 if name in variants.NF_RESNET_VARIANTS
                 else variants.NF_REGNET_VARIANTS)
        cfg = table[name]
        assert (cfg.train_imsize, cfg.test_imsize) == (
            row["train_size"], row["test_size"]), name


def test_timm_layouts_agree_with_the_variant_table():
    for timm_name, (ctor, depths, *_) in presets.TIMM_ARCHITECTURES.items():
        rows = [k for k, v in {**presets.PRESETS,
                               **presets.UNPUBLISHED}.items()
                if v.get("timm_name") == timm_name]
        if timm_name.startswith("dm_nfnet_"):
            rows = [timm_name[-2:].upper()]
        for name in rows:
            table = {**variants.NFNET_VARIANTS,
                     **variants.NF_RESNET_VARIANTS,
                     **variants.NF_REGNET_VARIANTS}
            assert tuple(table[name].depth) == depths, (timm_name, ctor)


def test_deepmind_module_counts_of_the_published_rows():
    assert [deepmind.module_count(k) for k, v in presets.PRESETS.items()
            if v["source"] == "deepmind"] == [94, 178, 262, 346, 430, 514,
                                              598]
