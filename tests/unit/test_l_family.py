"""timm's L-family (NFNet-L0, ECA-NFNet-L0 ... L3): the constructors
compute what timm computes, with timm's parameter counts.

References are built by timm itself (tests/timm_reference.py, in its own
process): random weights with perturbed gains and biases, saved with
`safetensors.torch.save_file`, loaded here with `weights=path`.
"""

import numpy as np
import pytest

import keras_nfnets
from conftest import relative_error
from timm_helpers import timm_references

PARITY = {"nfnet_l0": "NFNetL0", "eca_nfnet_l0": "ECANFNetL0"}
COUNT_ONLY = {"eca_nfnet_l1": "ECANFNetL1", "eca_nfnet_l2": "ECANFNetL2",
              "eca_nfnet_l3": "ECANFNetL3"}


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    specs = [dict(key=name, name=name, seed=i, size=64)
             for i, name in enumerate(PARITY)]
    specs += [dict(key=name, name=name, meta=True) for name in COUNT_ONLY]
    return timm_references(tmp_path_factory.mktemp("timm"), specs)


@pytest.mark.parametrize("timm_name", sorted(PARITY))
def test_logits_match_timm(refs, timm_name):
    ref = refs[timm_name]
    model = getattr(keras_nfnets, PARITY[timm_name])(
        weights=str(ref["path"]), input_shape=(64, 64, 3),
        include_preprocessing=False, classifier_activation=None)
    assert model.count_params() == ref["params"]
    logits = np.asarray(model(ref["inputs"], training=False))
    err = relative_error(logits, ref["logits"])
    print(f"{timm_name}: max relative logit error {err:.2e}")
    assert err < 1e-4, err
    # Perturbed weights: the logits are far from a constant function.
    assert np.std(ref["logits"]) > 1e-3


@pytest.mark.parametrize("timm_name", sorted(COUNT_ONLY))
def test_parameter_counts_equal_timms(refs, timm_name):
    model = getattr(keras_nfnets, COUNT_ONLY[timm_name])(
        input_shape=(32, 32, 3))
    assert model.count_params() == refs[timm_name]["params"]



def test_timm_numerics_live_in_the_layers_config():
    model = keras_nfnets.ECANFNetL0(input_shape=(32, 32, 3),
                                    include_top=False)
    conv = model.get_layer("stem_conv0")
    assert conv.eps_mode == "add" and conv.eps == 1e-5
    assert conv.gamma == pytest.approx(1.7881293296813965)
    block = model.get_layer("nf_block")
    assert block.attention == "eca" and not block.use_skip_gain
    assert "eca" in block.named_sublayers()


def test_presets_are_timms_pretrained_cfg():
    from keras_nfnets import presets  # pylint: disable=import-outside-toplevel
    from timm_helpers import timm_pretrained_cfgs  # pylint: disable=import-outside-toplevel
    tables = {**presets.TIMM_IMAGENET, **presets.TIMM_UNPUBLISHED}
    names = [p.get("hub_id", "timm/" + p["timm_name"]).split("/")[-1]
             for p in tables.values()]
    cfgs = timm_pretrained_cfgs(names)
    for (variant, preset), name in zip(tables.items(), names):
        cfg = cfgs[name]
        assert cfg["input_size"][1:] == [preset["train_size"]] * 2, variant
        assert cfg["test_input_size"][1:] == [preset["test_size"]] * 2
        assert preset["crop_pct"] == cfg["crop_pct"]
        assert preset["test_crop_pct"] == (cfg.get("test_crop_pct")
                                           or cfg["crop_pct"])
        assert preset["interpolation"] == cfg["interpolation"]
        assert preset.get("hub_id") == cfg.get("hf_hub_id")
        constructor = getattr(keras_nfnets, preset["constructor"])
        assert constructor.__name__ == preset["constructor"]
    for variant in ("L0", "ECA-L0", "ECA-L1", "ECA-L2", "ECA-L3"):
        cfg = keras_nfnets.get_config(variant)
        assert (cfg.train_imsize, cfg.test_imsize) == (
            tables[variant]["train_size"], tables[variant]["test_size"])


def test_preprocess_for_eval_uses_timms_crop():
    from keras_nfnets import imagenet  # pylint: disable=import-outside-toplevel
    # 300 x 400: a centred 300 x 300 square of 100s between bands of 0s.
    image = np.zeros((300, 400, 3), "float32")
    image[:, 50:350] = 100.0
    for name in ("ECA-L0", "ECANFNetL0", "eca_nfnet_l0"):
        out = np.asarray(keras_nfnets.preprocess_for_eval(image, name))
        assert out.shape == (288, 288, 3)
        # crop 1.0: the whole shorter side, so none of the bands (timm
        # resizes before cropping: its antialiased bicubic blurs the band
        # edges into the outer two columns by under 1).
        np.testing.assert_allclose(out[:, 2:-2], 100.0, atol=1e-3)
        np.testing.assert_allclose(out, 100.0, atol=1.0)
    f0 = np.asarray(keras_nfnets.preprocess_for_eval(image, "F0"))
    assert f0.shape == (256, 256, 3)  # DeepMind's resize_crop_32
    assert imagenet.eval_image_size("ECA-L2") == 384
    assert imagenet.eval_image_size("B1-timm") == 288
