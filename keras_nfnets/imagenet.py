"""ImageNet utilities: `preprocess_input`, `decode_predictions`, evaluation
resize and crop, as in `keras.applications`.

`decode_predictions` works offline: the class index ships with the package
(`keras_nfnets/data/imagenet_class_index.json`, the `keras.applications`
format `{"0": ["n01440764", "tench"], ...}`). Provenance: it was built
offline from two files of the tensorflow-datasets 4.9.10 package
(Apache-2.0): the WordNet ids in ILSVRC-2012 class order from
`tensorflow_datasets/datasets/imagenet2012/labels.txt`, and the class
descriptions in the same order from `IMAGENET_LABELS_LIST` in
`tensorflow_datasets/datasets/siscore/labels.py` (itself taken from the
widely used gist yrevar/942d3a0ac09ec9e5eb3a). Each name is the first
synonym of the description with spaces as underscores, the convention of
Keras' own index; that list disambiguates two classes as `crane_(bird)`
(134) and `crane_(machine)` (517), where Keras' file says `crane` twice.
"""

import functools
import json
import os

import numpy as np
from keras import ops

from keras_nfnets import builder
from keras_nfnets import presets
from keras_nfnets import variants

CLASS_INDEX_PATH = os.path.join(os.path.dirname(__file__), "data",
                                "imagenet_class_index.json")
CROP_PADDING = 32


@functools.lru_cache(maxsize=1)
def class_index():
    """`{"0": [wnid, name], ...}` for the 1000 ImageNet classes."""
    with open(CLASS_INDEX_PATH) as f:
        return json.load(f)


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions, like `keras.applications`.

    Args:
        preds: array of shape `(batch, 1000)`: probabilities or logits.
        top: how many top classes to return per sample.

    Returns:
        One list per sample of `(wnid, class_name, score)` tuples, best
        first.

    Example:
    >>> model = keras_nfnets.NFNetF0(weights="imagenet")
    >>> decode_predictions(model.predict(images), top=3)[0]
    [('n02123045', 'tabby', 0.71), ...]
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions (a 2D "
            f"array of shape (samples, 1000)). Received shape: "
            f"{preds.shape}")
    index = class_index()
    results = []
    for pred in preds:
        best = np.argsort(pred)[-top:][::-1]
        results.append([tuple(index[str(i)]) + (float(pred[i]),)
                        for i in best])
    return results


def preprocess_input(x, data_format=None, normalize=False):
    """Prepares RGB images in [0, 255] for an NFNet.

    NFNets built with the default `include_preprocessing=True` normalise
    inside the model, so this returns `x` unchanged, like
    `keras.applications.efficientnet_v2.preprocess_input`. For models
    built with `include_preprocessing=False`, pass `normalize=True` to
    apply DeepMind's ImageNet mean/std normalisation here.

    Args:
        x: images, channels last (or as `data_format` says), RGB, 0-255.
        data_format: `"channels_last"` (default) or `"channels_first"`.
        normalize: subtract the ImageNet mean and divide by its std.
    """
    if not normalize:
        return x
    if data_format not in (None, "channels_last", "channels_first"):
        raise ValueError(f"Unknown data_format {data_format!r}.")
    shape = ([3, 1, 1] if data_format == "channels_first" else [3])
    mean = np.reshape(np.array(builder.IMAGENET_MEAN, "float32"), shape)
    std = np.reshape(np.array(builder.IMAGENET_STD, "float32"), shape)
    x = ops.cast(x, "float32")
    return (x - mean) / std


def timm_eval_settings(variant):
    """timm's evaluation settings (`pretrained_cfg`: test size, test crop,
    interpolation) for a timm-trained variant, by variant name (`"ECA-L0"`),
    constructor name (`"ECANFNetL0"`) or timm name (`"eca_nfnet_l0"`);
    None for DeepMind's models."""
    tables = {**presets.TIMM_UNPUBLISHED, **presets.TIMM_IMAGENET}
    for key, preset in tables.items():
        if variant in (key, preset["constructor"], preset["timm_name"]):
            return preset
    return None


def eval_image_size(variant):
    """The evaluation resolution of a variant (F0: 256, DeepMind's; ECA-L0:
    288, timm's)."""
    preset = timm_eval_settings(variant)
    if preset is not None:
        return preset["test_size"]
    return variants.get_config(variant).test_imsize


def center_crop_and_resize(images, size, crop_padding=CROP_PADDING,
                           crop_fraction=None):
    """DeepMind's ImageNet evaluation crop.

    Takes the centred square of side `size / (size + crop_padding)` times
    the shorter image side, then resizes it to `size` x `size` with bicubic
    interpolation: for a square image, the same as resizing to
    `(size + 32)` squared and centre-cropping `size`, without distorting
    non-square images. Output is float32, values not clipped.

    Args:
        images: one image `(H, W, C)` or a batch `(N, H, W, C)`.
        size: output height and width.
        crop_fraction: the square's side as a fraction of the shorter side
            instead of `size / (size + crop_padding)` (timm's `crop_pct`:
            1.0 for the L-family keeps the whole shorter side).
    """
    x = ops.convert_to_tensor(images)
    single = len(x.shape) == 3
    if single:
        x = x[None]
    height, width = x.shape[1], x.shape[2]
    # float32 arithmetic, as in DeepMind's tf code.
    fraction = (size / (size + crop_padding) if crop_fraction is None
                else crop_fraction)
    crop = int(np.float32(fraction) * np.float32(min(height, width)))
    top = (height - crop + 1) // 2
    left = (width - crop + 1) // 2
    x = ops.cast(x[:, top:top + crop, left:left + crop, :], "float32")
    x = ops.image.resize(x, (size, size), interpolation="bicubic",
                         antialias=False, data_format="channels_last")
    return x[0] if single else x


def preprocessing_for(model_or_variant, size=None):
    """The `NFNetImagePreprocessing` for a model or a variant.

    A model carries it as `model.preprocessing` (an
    `NFNetImagePreprocessing`, or its config dict); otherwise its
    `config` attribute (a variant config) or its `variant` attribute
    names the family. Strings and configs go to `default_preprocessing`.
    """
    from keras_nfnets import preprocessing  # pylint: disable=import-outside-toplevel
    layer = getattr(model_or_variant, "preprocessing", None)
    if isinstance(layer, dict):
        layer = preprocessing.NFNetImagePreprocessing.from_config(layer)
    if isinstance(layer, preprocessing.NFNetImagePreprocessing):
        if size is not None and size != layer.size:
            config = dict(layer.get_config(), size=size)
            config.pop("name", None)
            layer = preprocessing.NFNetImagePreprocessing.from_config(config)
        return layer
    if hasattr(model_or_variant, "layers"):  # a model without its own
        for attribute in ("config", "variant"):
            found = getattr(model_or_variant, attribute, None)
            if found is not None:
                return preprocessing.default_preprocessing(found, size)
        raise ValueError(
            f"Model {getattr(model_or_variant, 'name', model_or_variant)!r} "
            "carries no `preprocessing` and no variant `config`; pass the "
            "variant name instead, e.g. preprocess_for_eval(images, 'F0').")
    return preprocessing.default_preprocessing(model_or_variant, size)


def preprocess_for_eval(images, model_or_variant="F0", size=None):
    """Resizes and crops images for evaluating a model as its weights'
    authors did (`size` defaults to the variant's test resolution: 256 for
    F0).

    DeepMind's NFNets (F0-F7, `+`): DeepMind's `resize_crop_32` (the whole
    image squashed to `size + 32` squared, then the centred `size`).
    DeepMind's NF-ResNets and NF-RegNets: the centred `size / (size + 32)`
    crop, resized. timm's (`"L0"`, `"ECA-L0"` ... `"ECA-L3"`,
    `"ResNet50-timm"`, `"B1-timm"`, or their constructor or timm names):
    timm's eval transform (shorter side to `size / crop_pct`, centre crop).
    See `keras_nfnets.preprocessing` for the inputs accepted: uint8 or
    float 0-255 RGB, grayscale, RGBA, one image, a batch or a list.

    Args:
        images: one image, a batch, or a list of images.
        model_or_variant: a model carrying `preprocessing` (or a variant
            `config`), or a variant, constructor or timm name.
        size: override the evaluation size.

    Returns float32 RGB in [0, 255]-ish range (bicubic can overshoot),
    ready for a model built with `include_preprocessing=True`.

    Example:
    >>> x = preprocess_for_eval(images, "ECA-L0")  # (N, 288, 288, 3)
    """
    return preprocessing_for(model_or_variant, size)(images)
