"""Published weights, as data: one row per published weight file.

`PRESETS[variant]` says where the file lives and how its model was trained
and evaluated. No code reads a fact about a published model anywhere else;
the architecture itself is `variants.py`'s.

Fields of a row:

* `source`: `"deepmind"` or `"timm"`; `constructor`: the Keras constructor.
* `path`: the file below the source's base URL (`BASE_URLS`, or the mirror
  named by the environment variable in `URL_ENVS`); `file`: its name in the
  cache (`$KERAS_HOME/models/`).
* `md5`, `size`, `sha256`: what is known of the file (None where unknown).
  DeepMind publishes no checksums: the md5s are those listed by the
  third-party JAX loader ethanluoyc/jam
  (`src/jam/models/nfnet/checkpoints.py`), F0's size is the one DeepMind's
  demo Colab logs. Never guess one.
* `train_size`, `test_size`: training and evaluation image sizes.
* `crop`: the evaluation crop. `"resize_crop_32"` (DeepMind's NFNets):
  squash-resize to `test_size + 32`, then a centre crop of `test_size`;
  `"crop_resize"` (DeepMind's NF-RegNets and NF-ResNets): a centre crop of
  `crop_fraction` of the shorter side, resized to `test_size`; `"center"`
  (timm): a centre crop of `crop_fraction` (timm's `test_crop_pct`, else
  `crop_pct`) of the shorter side, resized to `test_size`.
* `crop_fraction`, `crop_pct` / `test_crop_pct` (timm's own numbers),
  `interpolation`.
* `top1`: the published ImageNet-1k top-1 (%), None where this package has
  no source for it; `license`.
* `params`: the parameter count of the published model (the 1000-class
  classifier included) as the built Keras model counts it
  (`count_params()`). timm's rows: timm's own counts (the Keras models
  equal them: tests/unit/test_l_family.py, test_weights_timm.py). F0-F6:
  the Keras count (DeepMind's table to 0.1 M: test_applications.py), from
  one build of the F-series widths at depths (2, 2, 2, 2), each stage's
  repeated block counted once and extended to the variant's depth (F0's
  full build gives the same count).
* timm rows: `hub_id` and `revision`, the Hugging Face repository and
  revision of the file (`weights="imagenet"` goes through
  `huggingface_hub` when it is installed and no mirror is set).

timm's rows are timm 1.0.31's `pretrained_cfg` of each tag
(`timm.models.get_pretrained_cfg(...)`), its files the Hugging Face hub's
`https://huggingface.co/<hub_id>/resolve/main/model.safetensors`.

Example:
>>> PRESETS["F0"]["test_size"], PRESETS["ECA-L0"]["source"]
(256, 'timm')
"""

#: Where each source's files live; `path` is appended.
BASE_URLS = {"deepmind": "https://storage.googleapis.com/dm-nfnets/",
             "timm": "https://huggingface.co/"}
#: Environment variables naming a mirror of each base URL (same layout).
URL_ENVS = {"deepmind": "KERAS_NFNETS_WEIGHTS_URL",
            "timm": "KERAS_NFNETS_TIMM_WEIGHTS_URL"}
#: Environment variable: the sha256 of a download to accept although it
#: does not match the row's md5 / size (the deliberate opt-out).
ACCEPT_ENV = "KERAS_NFNETS_ACCEPT_SHA256"

_DM_LICENSE = "Apache-2.0 (deepmind-research)"
_TIMM_LICENSE = "Apache-2.0 (timm model card)"


def _deepmind(n, md5, top1, train, test, params, size=None):
    return dict(
        source="deepmind", constructor=f"NFNetF{n}",
        path=f"F{n}_haiku.npz", file=f"F{n}_haiku.npz", md5=md5,
        size=size, sha256=None, train_size=train, test_size=test,
        crop="resize_crop_32", crop_fraction=test / (test + 32),
        interpolation="bicubic", top1=top1, license=_DM_LICENSE,
        params=params)


def _timm(constructor, timm_name, tag, top1, train, test, crop_pct,
          test_crop_pct, params, revision="main"):
    hub_id = f"timm/{timm_name}.{tag}"
    return dict(
        source="timm", constructor=constructor, timm_name=timm_name,
        hub_id=hub_id, revision=revision,
        path=f"{hub_id}/resolve/{revision}/model.safetensors",
        file=f"{timm_name}.{tag}.safetensors", md5=None, size=None,
        sha256=None, train_size=train, test_size=test, crop="center",
        crop_pct=crop_pct, test_crop_pct=test_crop_pct,
        crop_fraction=test_crop_pct, interpolation="bicubic", top1=top1,
        license=_TIMM_LICENSE, params=params)


#: One row per published weight file, by keras_nfnets variant name.
PRESETS = {
    "F0": _deepmind(0, "0a41039da1cb43adf47f1b7d86ddfe0f", 83.6, 192, 256,
                    71_489_284, size=285976842),
    "F1": _deepmind(1, "c9126bbfaf855f9ddb7ff3b902558781", 84.7, 224, 320,
                    132_634_256),
    "F2": _deepmind(2, "7a018d8d1498020e2f5a8719a1e7f53f", 85.1, 256, 352,
                    193_779_228),
    "F3": _deepmind(3, "d8e1e78d26db659c486150dbaccbe78a", 85.7, 320, 416,
                    254_924_200),
    "F4": _deepmind(4, "f5974a7e3388aa81b91a9f1403e759a4", 85.9, 384, 512,
                    316_069_172),
    "F5": _deepmind(5, "8639e925de951030651ac775b9f915c3", 86.0, 416, 544,
                    377_214_144),
    "F6": _deepmind(6, "b16cca40ac1ecec2bd5e3273866da0c1", 86.5, 448, 576,
                    438_359_116),
    "L0": _timm("NFNetL0", "nfnet_l0", "ra2_in1k", 82.8, 224, 288, 0.9, 1.0,
                35_074_488),
    "ECA-L0": _timm("ECANFNetL0", "eca_nfnet_l0", "ra2_in1k", 82.6, 224,
                    288, 0.9, 1.0, 24_143_924),
    "ECA-L1": _timm("ECANFNetL1", "eca_nfnet_l1", "ra2_in1k", 84.1, 256,
                    320, 0.9, 1.0, 41_407_728),
    "ECA-L2": _timm("ECANFNetL2", "eca_nfnet_l2", "ra3_in1k", 84.7, 320,
                    384, 0.9, 1.0, 56_722_348),
    "ResNet50-timm": _timm("NFResNet50Timm", "nf_resnet50", "ra2_in1k",
                           None, 256, 288, 0.94, 0.94, 25_557_032),
    "B1-timm": _timm("NFRegNetB1Timm", "nf_regnet_b1", "ra2_in1k", None,
                     256, 288, 0.9, 0.9, 10_223_984),
}

#: Evaluation settings of architectures without a published file
#: (`eca_nfnet_l3` has no pretrained tag in timm 1.0.31: timm's default
#: cfg).
UNPUBLISHED = {
    "ECA-L3": dict(
        source="timm", constructor="ECANFNetL3", timm_name="eca_nfnet_l3",
        train_size=352, test_size=448, crop="center", crop_pct=0.9,
        test_crop_pct=1.0, crop_fraction=1.0, interpolation="bicubic"),
}

#: DeepMind's evaluation crop by family (its NF-RegNets and NF-ResNets
#: have no published file here, but their evaluation is DeepMind's).
DEEPMIND_EVAL_CROP = {"NFNet": "resize_crop_32", "NFRegNet": "crop_resize",
                      "NFResNet": "crop_resize"}

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

# Views kept for the readers of the former tables (imagenet.py,
# applications.py): the same rows, not copies of their facts.
TIMM_IMAGENET = {k: v for k, v in PRESETS.items() if v["source"] == "timm"}
TIMM_UNPUBLISHED = UNPUBLISHED
TIMM_BASE_URL = BASE_URLS["timm"]
TIMM_URL_ENV = URL_ENVS["timm"]
TIMM_FILE = "model.safetensors"
