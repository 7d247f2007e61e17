"""DeepMind's published ImageNet weights (`weights="imagenet"`)."""

PUBLISHED = ("F0", "F1", "F2", "F3", "F4", "F5", "F6")


def check_available(variant):
    if variant is None or variant.upper() not in PUBLISHED:
        raise ValueError(
            f"No ImageNet weights are published for NFNet variant "
            f"{variant!r}: DeepMind released F0-F6 only (F7 and the '+' "
            "variants have none). Use weights=None or a weights file.")


def load_imagenet_weights(model, variant, skip_layers=()):
    raise NotImplementedError(
        "weights='imagenet' downloads are not available in this version; "
        "download F{n}_haiku.npz from DeepMind and pass its path as weights=.")
