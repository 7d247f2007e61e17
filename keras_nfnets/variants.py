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
class NFNetConfig:
    """One NFNet architecture, with DeepMind's field names.

    Example:
    >>> cfg = NFNetConfig(width=(256, 512, 1536, 1536), depth=(1, 2, 6, 3))
    >>> cfg.num_blocks
    12
    """

    width: Sequence[int]
    depth: Sequence[int]
    group_width: Sequence[int] = (128, 128, 128, 128)
    expansion: Sequence[float] = (0.5, 0.5, 0.5, 0.5)
    big_width: Sequence[bool] = (True, True, True, True)
    strides: Sequence[int] = (1, 2, 2, 2)
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

    def __post_init__(self):
        n = len(self.width)
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
