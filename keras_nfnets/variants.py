"""The variant table: DeepMind's `nfnet_params`, in DeepMind's vocabulary.

Data only. `NFNetConfig` is the typed form of one row; `get_config("F0")`
returns it. A dict with the same keys (e.g. a JSON file) works everywhere a
config is accepted.
"""

import dataclasses
import json
import os
from typing import Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Numerics:
    """How a model computes, as opposed to what it is: the arithmetic of
    the code its weights were trained with.

    Every difference between DeepMind's path (`NUMERICS["deepmind"]`) and
    timm's (`NUMERICS["timm"]`) is one field here, so the layers take these
    values as arguments and hold no `if timm` of their own:

    * `ws_eps`, `ws_eps_mode`: the weight-standardization floor. DeepMind
      (`base.WSConv2D`): `rsqrt(max(fan_in * var, 1e-4))` ("floor"). timm
      (`ScaledStdConv2d`, `F.batch_norm` on the kernel):
      `rsqrt(fan_in * (var + 1e-5))` ("add": eps added to the variance).
    * `gamma_on`: where the activation's gamma constant goes. DeepMind: on
      every activation output ("activation"). timm (`gamma_in_act=False`,
      all its own NFNets): folded into every standardized kernel instead,
      `gain * gamma / sqrt(fan_in)`, activations unscaled ("conv"). The two
      differ where a convolution does not follow an activation: timm also
      scales the stem's first convolution and `final_conv` by gamma, and
      its final activation (before the classifier) is unscaled.
    * `gelu`: DeepMind's `jax.nn.gelu` default is the tanh approximation;
      timm's `gelu` is the exact (erf) one. (No timm-trained NFNet uses
      GELU; the field keeps `activation="gelu"` exact for both.)
    * `padding`: DeepMind/TF "same" (for a strided kernel on an even input,
      the extra row/column of padding goes at the bottom/right); timm's
      non-DeepMind models use PyTorch's symmetric
      `((stride - 1) + (kernel - 1)) // 2` on both sides, and its NF-ResNet
      stem max-pool pads 1 on both sides.

    Example:
    >>> NUMERICS["timm"].ws_eps
    1e-05
    """

    ws_eps: float = 1e-4
    ws_eps_mode: str = "floor"
    gamma_on: str = "activation"
    gelu: str = "tanh"
    padding: str = "same"


NUMERICS = {
    "deepmind": Numerics(),
    "timm": Numerics(ws_eps=1e-5, ws_eps_mode="add", gamma_on="conv",
                     gelu="erf", padding="symmetric"),
}


def make_divisible(value, divisor=8, round_limit=0.9):
    """timm's channel rounding (`timm.layers.make_divisible`): the nearest
    multiple of `divisor`, at least `divisor`, and not below
    `round_limit * value` (else one `divisor` more).

    Example:
    >>> make_divisible(0.75 * 104)
    80
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


@dataclasses.dataclass(frozen=True)
class NFNetConfig:
    """One NFNet architecture, with DeepMind's field names.

    Example:
    >>> cfg = NFNetConfig(width=(256, 512, 1536, 1536), depth=(1, 2, 6, 3))
    >>> cfg.num_blocks
    12
    """

    width: Sequence[int]
    depth: Sequence[int]
    # Per-stage lists; None means DeepMind's default for every stage
    # (group width 128, expansion 0.5, big width, strides 1, 2, 2, ...).
    group_width: Optional[Sequence[int]] = None
    expansion: Optional[Sequence[float]] = None
    big_width: Optional[Sequence[bool]] = None
    strides: Optional[Sequence[int]] = None
    se_ratio: float = 0.5
    alpha: float = 0.2
    activation: str = "gelu"
    final_conv_mult: Optional[float] = 2
    final_conv_ch: Optional[int] = None
    use_two_convs: bool = True
    train_imsize: int = 224
    test_imsize: int = 256
    RA_level: str = "405"  # pylint: disable=invalid-name
    drop_rate: float = 0.2
    stochdepth_rate: float = 0.1
    # timm's switches (its L-family); the defaults are DeepMind's NFNet.
    # attention: "se" (squeeze-excite) or "eca" (efficient channel
    # attention, timm's `EcaModule`). se_divisor: round the SE hidden width
    # to a multiple of it as timm does (None: DeepMind's int()). ch_div:
    # round the bottleneck width with timm's `make_divisible` (None:
    # DeepMind's floor to a multiple of the group width). skip_gain: the
    # learnable per-block scalar (DeepMind; timm's L models have none).
    # stem_width: timm's "deep_quad" stem of (w/8, w/4, w/2, w) channels
    # (None: DeepMind's (16, 32, 64, width[0] // 2)). numerics: a key of
    # `NUMERICS`.
    attention: str = "se"
    se_divisor: Optional[int] = None
    ch_div: Optional[int] = None
    skip_gain: bool = True
    stem_width: Optional[int] = None
    numerics: str = "deepmind"

    def __post_init__(self):
        if self.numerics not in NUMERICS:
            raise ValueError(
                f"NFNet config: numerics must be one of {sorted(NUMERICS)}, "
                f"got {self.numerics!r}.")
        if self.attention not in ("se", "eca"):
            raise ValueError(
                "NFNet config: attention must be 'se' or 'eca', got "
                f"{self.attention!r}.")
        n = len(self.width)
        defaults = {"group_width": (128,) * n, "expansion": (0.5,) * n,
                    "big_width": (True,) * n,
                    "strides": (1,) + (2,) * (n - 1)}
        for field, value in defaults.items():
            if getattr(self, field) is None:
                object.__setattr__(self, field, value)
        for field in ("depth", "group_width", "expansion", "big_width",
                      "strides"):
            value = tuple(getattr(self, field))
            if len(value) != n:
                raise ValueError(
                    f"NFNet config: '{field}' has {len(value)} entries but "
                    f"'width' has {n}; give one per stage.")
            object.__setattr__(self, field, value)
        object.__setattr__(self, "width", tuple(self.width))
        if self.final_conv_mult is None and self.final_conv_ch is None:
            raise ValueError(
                "NFNet config: give one of final_conv_mult or final_conv_ch.")

    @property
    def num_blocks(self):
        return sum(self.depth)

    @classmethod
    def from_dict(cls, config):
        """Builds a config from a dict in DeepMind's vocabulary."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(
                f"NFNet config: unknown key(s) {unknown}. Known keys: "
                f"{sorted(names)}.")
        missing = [k for k in ("width", "depth") if k not in config]
        if missing:
            raise ValueError(f"NFNet config: missing key(s) {missing}.")
        return cls(**config)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


_F_SERIES = {
    # name: (depth, train_imsize, test_imsize, RA_level, drop_rate)
    "F0": ((1, 2, 6, 3), 192, 256, "405", 0.2),
    "F1": ((2, 4, 12, 6), 224, 320, "410", 0.3),
    "F2": ((3, 6, 18, 9), 256, 352, "410", 0.4),
    "F3": ((4, 8, 24, 12), 320, 416, "415", 0.4),
    "F4": ((5, 10, 30, 15), 384, 512, "415", 0.5),
    "F5": ((6, 12, 36, 18), 416, 544, "415", 0.5),
    "F6": ((7, 14, 42, 21), 448, 576, "415", 0.5),
    "F7": ((8, 16, 48, 24), 480, 608, "415", 0.5),
}
_WIDTH = (256, 512, 1536, 1536)
_WIDTH_PLUS = (384, 768, 2048, 2048)

NFNET_VARIANTS = {}
for _name, (_depth, _train, _test, _ra, _drop) in _F_SERIES.items():
    for _suffix, _width in (("", _WIDTH), ("+", _WIDTH_PLUS)):
        NFNET_VARIANTS[_name + _suffix] = NFNetConfig(
            width=_width, depth=_depth, train_imsize=_train,
            test_imsize=_test, RA_level=_ra, drop_rate=_drop)

# timm's "light" NFNets (Ross Wightman's L-family, timm/models/nfnet.py
# `nfnet_l0`, `eca_nfnet_l0` ... `eca_nfnet_l3`): F-series depths and
# widths with group width 64, bottleneck 0.25, SiLU, a final conv of
# 1.5x (L0) or 2x the last width, no skip gains, and timm's numerics.
# Sizes are timm's pretrained_cfg input_size / test_input_size; the dropout
# and stochastic-depth rates are timm's model defaults (0; set them to
# fine-tune with regularisation).
_L_SERIES = {
    # name: (depth, final_conv_mult, attention, train_imsize, test_imsize)
    "L0": ((1, 2, 6, 3), 1.5, "se", 224, 288),
    "ECA-L0": ((1, 2, 6, 3), 1.5, "eca", 224, 288),
    "ECA-L1": ((2, 4, 12, 6), 2, "eca", 256, 320),
    "ECA-L2": ((3, 6, 18, 9), 2, "eca", 320, 384),
    "ECA-L3": ((4, 8, 24, 12), 2, "eca", 352, 448),
}
for _name, (_depth, _mult, _attn, _train, _test) in _L_SERIES.items():
    NFNET_VARIANTS[_name] = NFNetConfig(
        width=_WIDTH, depth=_depth, group_width=(64,) * 4,
        expansion=(0.25,) * 4, se_ratio=0.25, activation="silu",
        final_conv_mult=_mult, train_imsize=_train, test_imsize=_test,
        attention=_attn, se_divisor=8, ch_div=8, skip_gain=False,
        stem_width=128, numerics="timm", drop_rate=0.0, stochdepth_rate=0.0)


def get_config(variant):
    """Returns the `NFNetConfig` for a variant name, dict, JSON path or config.

    Example:
    >>> get_config("F0").test_imsize
    256
    """
    if isinstance(variant, NFNetConfig):
        return variant
    if isinstance(variant, dict):
        return NFNetConfig.from_dict(variant)
    if isinstance(variant, (str, os.PathLike)):
        key = str(variant).upper().replace("PLUS", "+")
        if key in NFNET_VARIANTS:
            return NFNET_VARIANTS[key]
        if os.path.isfile(variant):
            with open(variant) as f:
                return NFNetConfig.from_dict(json.load(f))
        raise ValueError(
            f"Unknown NFNet variant {variant!r}: expected one of "
            f"{sorted(NFNET_VARIANTS)}, a config dict or a JSON file path.")
    raise TypeError(f"Cannot make an NFNet config from {type(variant)}.")


# ---------------------------------------------------------------------------
# NF-ResNets and NF-RegNets, in the vocabulary of DeepMind's `NF_ResNet` and
# `NF_RegNet` constructors (nf_resnet.py, nf_regnet.py).

@dataclasses.dataclass(frozen=True)
class NFResNetConfig:
    """One NF-ResNet (DeepMind's `NF_ResNet` arguments).

    Stage widths are `(64, 128, 256, 512) * width` and the stem has
    `16 * width` channels; `width=4` is the standard ResNet width. DeepMind's
    table has no dropout rate for NF-ResNets (it must be passed); 0 here.

    Example:
    >>> NFResNetConfig(depth=(3, 4, 6, 3), width=1).stage_widths
    (64, 128, 256, 512)
    """

    depth: Sequence[int]
    width: float = 4
    alpha: float = 0.2
    stochdepth_rate: float = 0.1
    drop_rate: float = 0.0
    activation: str = "relu"
    use_se: bool = False
    se_ratio: float = 0.25
    bottleneck_ratio: float = 0.25
    strides: Sequence[int] = (1, 2, 2, 2)
    train_imsize: int = 224
    test_imsize: int = 224
    # timm's `nf_resnet50` differs from DeepMind's NF-ResNet-50 in these
    # (defaults: DeepMind's): a 2x2 average pool then 1x1 conv shortcut
    # instead of a strided 1x1 conv (strided_shortcut), no skip gains,
    # timm's numerics (see `Numerics`).
    strided_shortcut: bool = True
    skip_gain: bool = True
    numerics: str = "deepmind"

    @property
    def stage_widths(self):
        return tuple(int(c * self.width) for c in (64, 128, 256, 512))


@dataclasses.dataclass(frozen=True)
class NFRegNetConfig:
    """One NF-RegNet (a row of DeepMind's `nf_regnet_params` plus the
    `NF_RegNet` arguments; `width_multiplier` is NF_RegNet's `width`).

    Example:
    >>> NF_REGNET_VARIANTS["B0"].stage_widths
    (36, 78, 156, 330)
    """

    width: Sequence[int]
    depth: Sequence[int]
    train_imsize: int = 224
    test_imsize: int = 256
    drop_rate: float = 0.2
    width_multiplier: float = 0.75
    expansion: float = 2.25
    group_size: int = 8
    se_ratio: float = 0.5
    alpha: float = 0.2
    stochdepth_rate: float = 0.1
    activation: str = "silu"
    # timm's `nf_regnet_b*` differ from DeepMind's in these (defaults:
    # DeepMind's). ch_div: every width (stages, bottlenecks, SE hidden,
    # final conv) rounded with timm's `make_divisible(., 8)` instead of
    # truncated ("NOTE: These aren't quite the official ver", timm says);
    # no skip gains; timm's numerics.
    ch_div: Optional[int] = None
    skip_gain: bool = True
    numerics: str = "deepmind"

    @property
    def stage_widths(self):
        if self.ch_div:
            return tuple(make_divisible(c * self.width_multiplier,
                                        self.ch_div) for c in self.width)
        return tuple(int(c * self.width_multiplier) for c in self.width)

    @property
    def final_conv_width(self):
        """The head conv: 1280 * last width // 440 (EfficientNet's 1280 at
        B0's 440), on the multiplied width (DeepMind) or multiplied and
        rounded after (timm)."""
        if self.ch_div:
            return make_divisible(
                self.width_multiplier * (1280 * self.width[-1] // 440),
                self.ch_div)
        return 1280 * self.stage_widths[-1] // 440


NF_RESNET_VARIANTS = {
    "ResNet50": NFResNetConfig(depth=(3, 4, 6, 3)),
    "ResNet101": NFResNetConfig(depth=(3, 4, 23, 3)),
    "ResNet152": NFResNetConfig(depth=(3, 8, 36, 3)),
    "ResNet200": NFResNetConfig(depth=(3, 24, 36, 3)),
    "ResNet288": NFResNetConfig(depth=(24, 24, 24, 24)),
    "ResNet600": NFResNetConfig(depth=(50, 50, 50, 50)),
}

_B_SERIES = {
    # name: (width, depth, train_imsize, test_imsize, drop_rate)
    "B0": ((48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2),
    "B1": ((48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2),
    "B2": ((56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3),
    "B3": ((56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3),
    "B4": ((64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4),
    "B5": ((80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4),
    "B6": ((88, 184, 376, 792), (3, 8, 16, 16), 448, 528, 0.5),
    "B7": ((96, 208, 416, 880), (4, 10, 19, 19), 512, 600, 0.5),
    "B8": ((104, 232, 456, 968), (4, 11, 22, 22), 600, 672, 0.5),
}
NF_REGNET_VARIANTS = {
    _name: NFRegNetConfig(width=_w, depth=_d, train_imsize=_tr,
                          test_imsize=_te, drop_rate=_dr)
    for _name, (_w, _d, _tr, _te, _dr) in _B_SERIES.items()}

# timm's own layouts of the two it trained (timm/models/nfnet.py
# `nf_resnet50`, `nf_regnet_b1`; sizes from their pretrained_cfg: timm's
# B1 was trained at 256 / tested at 288, "NOT to paper spec").
NF_RESNET_VARIANTS["ResNet50-timm"] = NFResNetConfig(
    depth=(3, 4, 6, 3), strided_shortcut=False, skip_gain=False,
    numerics="timm", train_imsize=256, test_imsize=288, stochdepth_rate=0.0)
NF_REGNET_VARIANTS["B1-timm"] = NFRegNetConfig(
    width=(48, 104, 208, 440), depth=(2, 4, 7, 7), ch_div=8,
    skip_gain=False, numerics="timm", train_imsize=256, test_imsize=288,
    drop_rate=0.0, stochdepth_rate=0.0)
