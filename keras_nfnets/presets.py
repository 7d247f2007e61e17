"""Published weights, as data: where each file lives and how its model was
trained and evaluated. No code: `timm_weights`, `applications` and
`imagenet` read these tables.

timm's files are its Hugging Face hub repositories' `model.safetensors`
(`https://huggingface.co/<hub_id>/resolve/main/model.safetensors`). The
sizes, crops and interpolation are timm 1.0.31's `pretrained_cfg` of each
tag (`timm.models.get_pretrained_cfg(...)`): `input_size` is the training
size, `test_input_size` the evaluation size, `test_crop_pct` (or
`crop_pct` where timm gives no test crop) the evaluation crop. `top1` is
timm's published ImageNet-1k top-1 (%) at the test size, where it is
recorded here (the L-family's, as stated in the issue that added them);
None where this package has no source for it.
"""

#: Hugging Face hub; `<hub_id>/resolve/main/model.safetensors` is appended.
TIMM_BASE_URL = "https://huggingface.co/"
#: Environment variable naming a mirror of TIMM_BASE_URL (same layout).
TIMM_URL_ENV = "KERAS_NFNETS_TIMM_WEIGHTS_URL"
TIMM_FILE = "model.safetensors"

#: `weights="imagenet"` from timm, by keras_nfnets variant name.
TIMM_IMAGENET = {
    "L0": dict(
        constructor="NFNetL0", timm_name="nfnet_l0",
        hub_id="timm/nfnet_l0.ra2_in1k", top1=82.8,
        train_size=224, test_size=288, crop_pct=0.9, test_crop_pct=1.0,
        interpolation="bicubic"),
    "ECA-L0": dict(
        constructor="ECANFNetL0", timm_name="eca_nfnet_l0",
        hub_id="timm/eca_nfnet_l0.ra2_in1k", top1=82.6,
        train_size=224, test_size=288, crop_pct=0.9, test_crop_pct=1.0,
        interpolation="bicubic"),
    "ECA-L1": dict(
        constructor="ECANFNetL1", timm_name="eca_nfnet_l1",
        hub_id="timm/eca_nfnet_l1.ra2_in1k", top1=84.1,
        train_size=256, test_size=320, crop_pct=0.9, test_crop_pct=1.0,
        interpolation="bicubic"),
    "ECA-L2": dict(
        constructor="ECANFNetL2", timm_name="eca_nfnet_l2",
        hub_id="timm/eca_nfnet_l2.ra3_in1k", top1=84.7,
        train_size=320, test_size=384, crop_pct=0.9, test_crop_pct=1.0,
        interpolation="bicubic"),
    "ResNet50-timm": dict(
        constructor="NFResNet50Timm", timm_name="nf_resnet50",
        hub_id="timm/nf_resnet50.ra2_in1k", top1=None,
        train_size=256, test_size=288, crop_pct=0.94, test_crop_pct=0.94,
        interpolation="bicubic"),
    "B1-timm": dict(
        constructor="NFRegNetB1Timm", timm_name="nf_regnet_b1",
        hub_id="timm/nf_regnet_b1.ra2_in1k", top1=None,
        train_size=256, test_size=288, crop_pct=0.9, test_crop_pct=0.9,
        interpolation="bicubic"),
}

#: Architectures without published timm weights (constructor only):
#: `eca_nfnet_l3` has no pretrained tag in timm 1.0.31. Its evaluation
#: settings are timm's default cfg.
TIMM_UNPUBLISHED = {
    "ECA-L3": dict(
        constructor="ECANFNetL3", timm_name="eca_nfnet_l3",
        train_size=352, test_size=448, crop_pct=0.9, test_crop_pct=1.0,
        interpolation="bicubic"),
}

#: timm state-dict layouts `weights=<path>.safetensors` accepts, with the
#: constructor each loads into and the layout's signature (blocks per
#: stage, attention, skip gains, stem), used to name a file given to the
#: wrong model. `dm_nfnet_f*` are DeepMind's weights converted by timm:
#: the Keras model keeps DeepMind's numerics.
TIMM_ARCHITECTURES = {
    "dm_nfnet_f0": ("NFNetF0", (1, 2, 6, 3), "se", True, "deep"),
    "dm_nfnet_f1": ("NFNetF1", (2, 4, 12, 6), "se", True, "deep"),
    "dm_nfnet_f2": ("NFNetF2", (3, 6, 18, 9), "se", True, "deep"),
    "dm_nfnet_f3": ("NFNetF3", (4, 8, 24, 12), "se", True, "deep"),
    "dm_nfnet_f4": ("NFNetF4", (5, 10, 30, 15), "se", True, "deep"),
    "dm_nfnet_f5": ("NFNetF5", (6, 12, 36, 18), "se", True, "deep"),
    "dm_nfnet_f6": ("NFNetF6", (7, 14, 42, 21), "se", True, "deep"),
    "nfnet_l0": ("NFNetL0", (1, 2, 6, 3), "se", False, "deep"),
    "eca_nfnet_l0": ("ECANFNetL0", (1, 2, 6, 3), "eca", False, "deep"),
    "eca_nfnet_l1": ("ECANFNetL1", (2, 4, 12, 6), "eca", False, "deep"),
    "eca_nfnet_l2": ("ECANFNetL2", (3, 6, 18, 9), "eca", False, "deep"),
    "eca_nfnet_l3": ("ECANFNetL3", (4, 8, 24, 12), "eca", False, "deep"),
    "nf_resnet50": ("NFResNet50Timm", (3, 4, 6, 3), None, False, "single"),
    "nf_regnet_b1": ("NFRegNetB1Timm", (2, 4, 7, 7), "se", False, "single"),
}
