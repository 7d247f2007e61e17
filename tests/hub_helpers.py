"""Tiny configs of every family for the keras_nfnets.hub tests: a variant
name and the overrides that shrink it (1 block per stage, narrow)."""

#: variant -> overrides: DeepMind's NFNet, timm's L-family (ECA),
#: DeepMind's and timm's NF-ResNet, DeepMind's and timm's NF-RegNet.
TINY = {
    "F0": {"depth": (1, 1, 1, 1), "width": (16, 32, 64, 64),
           "group_width": (8,) * 4},
    "ECA-L0": {"depth": (1, 1, 1, 1), "width": (32, 64, 96, 128),
               "group_width": (8,) * 4, "stem_width": 16},
    "ResNet50": {"depth": (1, 1, 1, 1), "width": 0.25},
    "ResNet50-timm": {"depth": (1, 1, 1, 1), "width": 0.25},
    "B0": {"depth": (1, 1, 1, 1), "width_multiplier": 0.25},
    "B1-timm": {"depth": (1, 1, 1, 1), "width_multiplier": 0.25},
}
