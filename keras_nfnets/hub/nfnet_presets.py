"""KerasHub presets of the published NFNet weights: one per row of
`keras_nfnets.presets.PRESETS` (no second table), named on KerasHub's
pattern (`nfnet_f0_imagenet`, `eca_nfnet_l0_imagenet`, ...).

Nobody hosts Keras-format NFNet presets, so the first
`NFNetBackbone.from_preset(name)` / `NFNetImageClassifier.from_preset(name)`
builds the preset from the original verified file, through the one weights
dispatcher (`keras_nfnets.weights.load_weights`), and caches it as a
KerasHub preset directory (`~/.keras/models/hub/<name>`, `$KERAS_HOME`
respected); later calls read that directory.
"""

import os
import shutil
import tempfile

from keras_nfnets import presets
from keras_nfnets.weights import download

#: The classifier of a cached preset (ImageNet's 1000 classes).
IMAGENET_CLASSES = 1000


def preset_name(variant):
    """The KerasHub preset name of a row of `presets.PRESETS`.

    Example:
    >>> preset_name("F0"), preset_name("ECA-L0")
    ('nfnet_f0_imagenet', 'eca_nfnet_l0_imagenet')
    """
    row = presets.PRESETS[variant]
    if row["source"] == "deepmind":
        return f"nfnet_{variant.lower()}_imagenet"
    return f"{row['timm_name']}_imagenet"


def backbone_params(variant):
    """The parameter count of the preset's backbone (KerasHub's `params`:
    without the classifier), from the table's count of the published model
    less its 1000-way classifier; no model is built.

    Example:
    >>> backbone_params("ECA-L0")
    21838924
    """
    # pylint: disable=import-outside-toplevel
    from keras_nfnets import features
    from keras_nfnets.hub.nfnet_backbone import resolve_config
    row = presets.PRESETS[variant]
    width = features.pyramid_channels(resolve_config(variant))["P5"]
    return row["params"] - (width + 1) * IMAGENET_CLASSES


def _metadata(variant):
    row = presets.PRESETS[variant]
    source = ("DeepMind's published Haiku checkpoint" if row["source"] ==
              "deepmind" else f"timm's `{row['hub_id']}`")
    return {
        "description": (
            f"{row['constructor']} trained on ImageNet-1k at "
            f"{row['train_size']}x{row['train_size']}, evaluated at "
            f"{row['test_size']}x{row['test_size']}; from {source}."),
        "params": backbone_params(variant),
        "classifier_params": row["params"],
        "path": "nfnet",
        "variant": variant,
        "source": row["source"],
        "source_url": presets.BASE_URLS[row["source"]] + (
            row["hub_id"] if row["source"] == "timm" else row["path"]),
        "file": row["file"],
        "license": row["license"],
        "published_top1": row["top1"],
        "image_size": row["test_size"],
    }


#: `{preset name: {"metadata": ..., "variant": ...}}`, KerasHub's layout.
backbone_presets = {preset_name(v): {"metadata": _metadata(v), "variant": v}
                    for v in presets.PRESETS}


def preset_variant(name):
    """The variant of a preset name (`"nfnet_f0_imagenet"` -> `"F0"`)."""
    if name not in backbone_presets:
        raise ValueError(
            f"Unknown NFNet preset {name!r}: expected one of "
            f"{sorted(backbone_presets)}, a preset directory or a handle.")
    return backbone_presets[name]["variant"]


def preset_dir(name, cache_dir=None):
    """Where the KerasHub preset directory of `name` is cached."""
    preset_variant(name)
    return os.path.join(download.cache_folder(cache_dir), "hub", name)


def build_preset(name, directory, weights="imagenet"):
    """Builds the classifier of preset `name` with `weights` (through
    `keras_nfnets.weights.load_weights`) and saves it as a KerasHub preset
    in `directory` (written whole, then moved into place)."""
    # pylint: disable=import-outside-toplevel
    from keras_nfnets import builder
    from keras_nfnets.hub.nfnet_backbone import NFNetBackbone, resolve_config
    from keras_nfnets.hub.nfnet_image_classifier import NFNetImageClassifier
    from keras_nfnets.hub.nfnet_image_classifier_preprocessor import (
        NFNetImageClassifierPreprocessor)
    from keras_nfnets.hub.nfnet_image_converter import NFNetImageConverter
    from keras_nfnets.weights import load_weights

    variant = preset_variant(name)
    config = resolve_config(variant)
    size = presets.PRESETS[variant]["test_size"]
    # The package's own model receives the file through the dispatcher...
    source = builder.build_nfnet(config, input_shape=(size, size, 3),
                                 classes=IMAGENET_CLASSES,
                                 classifier_activation="softmax",
                                 name="source")
    load_weights(source, weights, variant=variant)
    # ...and the KerasHub model takes its values layer by layer (same names).
    backbone = NFNetBackbone(variant)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    classifier = NFNetImageClassifier(
        backbone, num_classes=IMAGENET_CLASSES, activation="softmax",
        preprocessor=NFNetImageClassifierPreprocessor(
            NFNetImageConverter.for_variant(variant)))
    classifier.output_dense.set_weights(
        source.get_layer("linear").get_weights())
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
    try:
        classifier.save_to_preset(staging)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def resolve(preset, cache_dir=None):
    """A preset argument for KerasHub's `from_preset`: a name of
    `backbone_presets` becomes its cached directory (built on first use);
    anything else (a directory, `hf://`, `kaggle://`) is returned as is."""
    if not isinstance(preset, str) or preset not in backbone_presets:
        return preset
    directory = preset_dir(preset, cache_dir)
    if not os.path.isfile(os.path.join(directory, "task.json")):
        folder = os.path.dirname(directory)
        os.makedirs(folder, exist_ok=True)
        with download.file_lock(folder, preset):
            if not os.path.isfile(os.path.join(directory, "task.json")):
                build_preset(preset, directory)
    return directory
