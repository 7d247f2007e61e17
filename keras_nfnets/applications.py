"""Keras Applications-style constructors: `NFNetF0()` ... `NFNetF7Plus()`,
`NFResNet50()` ... `NFResNet600()` and `NFRegNetB0()` ... `NFRegNetB8()`.

Thin wrappers over `builder.build_nfnet`, with the Keras Applications
argument handling (`include_top`, `weights`, `input_shape`, `pooling`, ...).
"""

import dataclasses
import os

import keras

from keras_nfnets import builder
from keras_nfnets import features
from keras_nfnets import variants
from keras_nfnets import weights as nf_weights

BASE_DOCSTRING = """Instantiates the {name} architecture.

Reference:
- [High-Performance Large-Scale Image Recognition Without Normalization](
    https://arxiv.org/abs/2102.06171) (Brock, De, Smith, Simonyan, ICML 2021)

Numerically identical to DeepMind's official implementation: scaled weight
standardization, gamma-scaled activations, squeeze-excite, skip gains and
stochastic depth as in `deepmind-research/nfnets`. Default input size
{test_imsize}x{test_imsize} (trained at {train_imsize}).

By default the model takes RGB images with values in [0, 255] and normalises
them internally with the ImageNet mean and standard deviation
(`include_preprocessing=True`). With `include_preprocessing=False` it expects
already-normalised input.

Args:
    include_top: whether to include the classifier (`avg_pool` -> dropout
        -> `linear`). Defaults to `True`.
    weights: `None` (random initialization), `"imagenet"` (DeepMind's
        published ImageNet weights, where they exist), or the path to a
        weights file: one of DeepMind's `*_haiku.npz` checkpoints (read
        safely, without dill/haiku/jax) or a Keras `.weights.h5` file.
    input_tensor: optional Keras tensor (output of `keras.Input()`) to use as
        the image input.
    input_shape: optional shape tuple `(height, width, channels)`. Defaults to
        `({test_imsize}, {test_imsize}, 3)` with the top and
        `(None, None, 3)` without it. Any size works: the head is globally
        pooled.
    pooling: with `include_top=False`: `None` (4D feature map), `"avg"` or
        `"max"` (global pooling to 2D).
    classes: number of classes, with `include_top=True`. Defaults to 1000.
    classifier_activation: activation of the classifier (a string or
        callable); `None` returns logits. Defaults to `"softmax"`.
    include_preprocessing: normalise 0-255 RGB input inside the model.
    drop_rate: dropout before the classifier (default: the variant's).
    stochdepth_rate: final stochastic-depth rate, reached linearly over the
        blocks (default 0.1).
    activation: one of DeepMind's gamma-scaled nonlinearities (default
        `"gelu"`).
    seed: seed for dropout and stochastic depth.
    remat: recompute each block's residual branch in the backward pass
        (less training memory, a little more compute). `"auto"` (default):
        on when Keras sees no GPU/TPU, off otherwise; `True`/`False` force
        it. Outputs and gradients are the same either way.
    feature_extractor: `True` returns a backbone whose output is a dict of
        feature maps keyed by stride, `"P1"` (stride 2) ... `"P5"` (stride
        32, after `final_conv`), as keras-hub's `pyramid_outputs`; the
        classifier is left out (`include_top`, `pooling` and `classes` do
        not apply), any input size works. See `keras_nfnets.features`.
    name: the model name.

Under `keras.config.image_data_format() == "channels_first"` the model
takes `(channels, height, width)` input and returns NCHW maps, with the
same numbers as channels_last.

Returns:
    A `keras_nfnets.NFNetModel` (a functional `keras.Model`).

Example:
```python
import keras_nfnets
model = keras_nfnets.{name}(weights=None, classes=10,
                           input_shape=({train_imsize}, {train_imsize}, 3))
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
```
"""


def _input_shape(input_shape, default_size, include_top):
    channels_first = keras.config.image_data_format() == "channels_first"
    if input_shape is None:
        size = default_size if include_top else None
        return (3, size, size) if channels_first else (size, size, 3)
    input_shape = tuple(input_shape)
    layout = ("(channels, height, width)" if channels_first
              else "(height, width, channels)")
    if len(input_shape) != 3:
        raise ValueError(
            f"`input_shape` must be {layout}, got {input_shape}.")
    if channels_first:
        c, h, w = input_shape
        if w is not None and 0 < w <= 4 and (c is None or c > 4):
            raise ValueError(
                f"`input_shape` {input_shape} looks channels_last, but "
                "keras.config.image_data_format() is 'channels_first', so "
                f"it is read as {layout}. Pass (channels, height, width), "
                "e.g. (3, 224, 224), or call keras.config."
                "set_image_data_format('channels_last').")
    else:
        h, w, c = input_shape
    if c is None or c < 1:
        raise ValueError(f"`input_shape` {input_shape} ({layout}) needs a "
                         f"channel count, got {c}.")
    for size in (h, w):
        if size is not None and size < 16:
            raise ValueError(
                f"`input_shape` {input_shape} ({layout}, image data format "
                f"{keras.config.image_data_format()!r}): height and width "
                "must be at least 16 (the network downsamples by 32; 16 "
                "gives a 1x1 final map).")
    return input_shape


def _validate(weights, include_top, classes, classifier_activation, pooling):
    if not (weights in (None, "imagenet") or
            (isinstance(weights, (str, os.PathLike))
             and os.path.exists(weights))):
        raise ValueError(
            "The `weights` argument should be either `None` (random "
            "initialization), `'imagenet'` (pre-training on ImageNet), or the "
            f"path to the weights file to be loaded. Received: "
            f"weights={weights!r}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            "If using `weights='imagenet'` with `include_top=True`, "
            f"`classes` should be 1000. Received: classes={classes}")
    if (weights == "imagenet" and include_top
            and classifier_activation not in ("softmax", None)):
        raise ValueError(
            "Only `None` and `'softmax'` are allowed for "
            "`classifier_activation` with `weights='imagenet'`. Received: "
            f"classifier_activation={classifier_activation!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            f"`pooling` must be None, 'avg' or 'max'. Received: {pooling!r}")


def NFNet(config="F0", include_top=True, weights=None, input_tensor=None,
          input_shape=None, pooling=None, classes=1000,
          classifier_activation="softmax", include_preprocessing=True,
          name=None, **nfnet_kwargs):
    """Builds any NFNet from a variant name, config dict, JSON file or
    `NFNetConfig`.

    Takes the same arguments as `NFNetF0` plus `config`, a dict in DeepMind's
    vocabulary (`width`, `depth`, `group_width`, `expansion`, `big_width`,
    `strides`, `se_ratio`, `alpha`, `activation`, `final_conv_mult`,
    `use_two_convs`, `train_imsize`, `test_imsize`, `RA_level`, `drop_rate`).

    Example:
    ```python
    model = keras_nfnets.NFNet(
        config="nfnet_tiny_config.json", weights="nfnet_tiny_haiku.npz",
        classes=10, input_shape=(40, 40, 3), classifier_activation=None,
        include_preprocessing=False)
    ```
    """
    variant = config if isinstance(config, str) and not os.path.isfile(
        config) else None
    cfg = variants.get_config(config)
    if name is None:
        name = "nfnet_" + (variant or "custom").lower().replace("+", "_plus")
    return _make_model(cfg, variant, include_top=include_top, weights=weights,
                       input_tensor=input_tensor, input_shape=input_shape,
                       pooling=pooling, classes=classes,
                       classifier_activation=classifier_activation,
                       include_preprocessing=include_preprocessing, name=name,
                       **nfnet_kwargs)


def _make_model(cfg, variant, include_top, weights, input_tensor,
                input_shape, pooling, classes, classifier_activation,
                include_preprocessing, name, **nfnet_kwargs):
    """Argument checks, `builder.build_nfnet`, then the weights: shared by
    every family."""
    if nfnet_kwargs.get("feature_extractor"):
        if pooling is not None:
            raise ValueError(
                "`pooling` does not apply with `feature_extractor=True` "
                "(the output is a dict of 4D feature maps). Received: "
                f"pooling={pooling!r}")
        include_top = False
    _validate(weights, include_top, classes, classifier_activation, pooling)
    if weights == "imagenet":
        if not isinstance(cfg, variants.NFNetConfig):
            raise ValueError(
                f"No ImageNet weights are available for {name}: "
                "weights='imagenet' exists for NFNets only. Use weights=None "
                "or the path to a weights file.")
        from keras_nfnets import pretrained  # pylint: disable=import-outside-toplevel
        pretrained.check_available(variant)
    if input_tensor is None or input_shape is not None:
        input_shape = _input_shape(input_shape, cfg.test_imsize, include_top)
    model = builder.build_nfnet(
        cfg, include_top=include_top, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, name=name,
        **nfnet_kwargs)
    skip = () if include_top else ("linear",)
    if weights == "imagenet":
        from keras_nfnets import pretrained  # pylint: disable=import-outside-toplevel
        pretrained.load_imagenet_weights(model, variant, skip_layers=skip)
    elif weights is not None:
        nf_weights.load_weights(model, weights, skip_layers=skip)
    return model


def _thin_constructor(builder_fn, variant, fname, doc):
    """A Keras Applications constructor: `builder_fn(variant, ...)` with the
    standard signature, its own name and a docstring."""

    def constructor(include_top=True, weights=None, input_tensor=None,
                    input_shape=None, pooling=None, classes=1000,
                    classifier_activation="softmax",
                    include_preprocessing=True, name=None, **kwargs):
        return builder_fn(variant, include_top=include_top, weights=weights,
                          input_tensor=input_tensor, input_shape=input_shape,
                          pooling=pooling, classes=classes,
                          classifier_activation=classifier_activation,
                          include_preprocessing=include_preprocessing,
                          name=name, **kwargs)

    constructor.__name__ = constructor.__qualname__ = fname
    constructor.__doc__ = doc
    return constructor


def _constructor(variant):
    cfg = variants.get_config(variant)
    fname = "NFNet" + variant.replace("+", "Plus")
    return _thin_constructor(NFNet, variant, fname, BASE_DOCSTRING.format(
        name=fname, test_imsize=cfg.test_imsize,
        train_imsize=cfg.train_imsize) + features.feature_docstring(cfg))


NFNetF0 = _constructor("F0")
NFNetF1 = _constructor("F1")
NFNetF2 = _constructor("F2")
NFNetF3 = _constructor("F3")
NFNetF4 = _constructor("F4")
NFNetF5 = _constructor("F5")
NFNetF6 = _constructor("F6")
NFNetF7 = _constructor("F7")
NFNetF0Plus = _constructor("F0+")
NFNetF1Plus = _constructor("F1+")
NFNetF2Plus = _constructor("F2+")
NFNetF3Plus = _constructor("F3+")
NFNetF4Plus = _constructor("F4+")
NFNetF5Plus = _constructor("F5+")
NFNetF6Plus = _constructor("F6+")
NFNetF7Plus = _constructor("F7+")


# ---------------------------------------------------------------------------
# NF-ResNets and NF-RegNets: the same machinery with another config.

FAMILY_DOCSTRING = """Instantiates the {name} architecture ({family}).

Reference:
- {reference}

Numerically identical to DeepMind's `{module}` (deepmind-research/nfnets):
the same `WSConv2D`, gamma-scaled {activation}, `NFBlock` and head as the
NFNets, built by the same builder. Default input size
{test_imsize}x{test_imsize}.

Args:
    include_top, weights, input_tensor, input_shape, pooling, classes,
    classifier_activation, include_preprocessing, name: as for
        `keras_nfnets.NFNetF0` (Keras Applications conventions). `weights`
        is `None` or the path of a DeepMind `*_haiku.npz` checkpoint or a
        Keras `.weights.h5` file; `"imagenet"` is not available.
    drop_rate, stochdepth_rate, activation, seed, remat,
        feature_extractor: as for the NFNets (`feature_extractor=True`:
        a dict of stride-keyed feature maps `"P1"` ... `"P5"`).
    **config_overrides: fields of `{config_cls}` to change, e.g.
        {override_example}.

Returns:
    A `keras_nfnets.NFNetModel`.

Example:
```python
model = keras_nfnets.{name}(weights=None, classes=10,
                           input_shape=(64, 64, 3))
```
"""

_BUILDER_KWARGS = ("drop_rate", "stochdepth_rate", "activation", "seed",
                   "feature_extractor")


def _family_model(table, config, default_name, include_top, weights,
                  input_tensor, input_shape, pooling, classes,
                  classifier_activation, include_preprocessing, name,
                  kwargs):
    cfg_cls = type(next(iter(table.values())))
    if isinstance(config, str):
        if config not in table:
            raise ValueError(f"Unknown variant {config!r}: expected one of "
                             f"{sorted(table)} or a {cfg_cls.__name__}.")
        variant, cfg = config, table[config]
    elif isinstance(config, cfg_cls):
        variant, cfg = None, config
    else:
        raise TypeError(f"config must be a variant name or a "
                        f"{cfg_cls.__name__}, got {type(config)}.")
    overrides = {k: kwargs.pop(k) for k in list(kwargs)
                 if k not in _BUILDER_KWARGS}
    if overrides:
        fields = {f.name for f in dataclasses.fields(cfg_cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(
                f"Unknown argument(s) {unknown}: expected Keras Applications "
                f"arguments, {list(_BUILDER_KWARGS)} or {cfg_cls.__name__} "
                f"fields {sorted(fields)}.")
        cfg = dataclasses.replace(cfg, **overrides)
    return _make_model(cfg, variant, include_top=include_top, weights=weights,
                       input_tensor=input_tensor, input_shape=input_shape,
                       pooling=pooling, classes=classes,
                       classifier_activation=classifier_activation,
                       include_preprocessing=include_preprocessing,
                       name=name or default_name, **kwargs)


def NFResNet(config="ResNet50", include_top=True, weights=None,
             input_tensor=None, input_shape=None, pooling=None, classes=1000,
             classifier_activation="softmax", include_preprocessing=True,
             name=None, **kwargs):
    """Builds any NF-ResNet from a variant name (`"ResNet50"` ...) or an
    `NFResNetConfig`; takes the arguments of `NFResNet50`.

    Example (DeepMind's `NF_ResNet(variant='ResNet50', width=1)`):
    ```python
    model = keras_nfnets.NFResNet("ResNet50", width=1, classes=10,
                                  input_shape=(64, 64, 3))
    ```
    """
    default = ("nf_" + config.lower() if isinstance(config, str)
               else "nf_resnet_custom")
    return _family_model(
        variants.NF_RESNET_VARIANTS, config, default, include_top, weights,
        input_tensor, input_shape, pooling, classes, classifier_activation,
        include_preprocessing, name, kwargs)


def NFRegNet(config="B0", include_top=True, weights=None, input_tensor=None,
             input_shape=None, pooling=None, classes=1000,
             classifier_activation="softmax", include_preprocessing=True,
             name=None, **kwargs):
    """Builds any NF-RegNet from a variant name (`"B0"` ... `"B8"`) or an
    `NFRegNetConfig`; takes the arguments of `NFRegNetB0`.

    Example:
    ```python
    model = keras_nfnets.NFRegNet("B0", classes=10, input_shape=(64, 64, 3))
    ```
    """
    default = ("nf_regnet_" + config.lower() if isinstance(config, str)
               else "nf_regnet_custom")
    return _family_model(
        variants.NF_REGNET_VARIANTS, config, default, include_top, weights,
        input_tensor, input_shape, pooling, classes, classifier_activation,
        include_preprocessing, name, kwargs)


_FAMILY_DOCS = {
    NFResNet: dict(
        family="Normalizer-Free ResNet", module="nf_resnet.NF_ResNet",
        reference="[Characterizing signal propagation to close the "
        "performance gap in unnormalized ResNets](https://arxiv.org/abs/"
        "2101.08692) (Brock, De, Smith, ICLR 2021)",
        activation="ReLU", config_cls="NFResNetConfig",
        override_example="`width=1` (DeepMind's width multiplier; default 4)"
        " or `use_se=True` (squeeze-excite, ratio 0.25)"),
    NFRegNet: dict(
        family="Normalizer-Free RegNet", module="nf_regnet.NF_RegNet",
        reference="[Characterizing signal propagation to close the "
        "performance gap in unnormalized ResNets](https://arxiv.org/abs/"
        "2101.08692) (Brock, De, Smith, ICLR 2021)",
        activation="SiLU", config_cls="NFRegNetConfig",
        override_example="`width_multiplier=1.0` or `group_size=16`"),
}


def _family_constructor(family, variant, fname):
    table = (variants.NF_RESNET_VARIANTS if family is NFResNet
             else variants.NF_REGNET_VARIANTS)
    return _thin_constructor(family, variant, fname, FAMILY_DOCSTRING.format(
        name=fname, test_imsize=table[variant].test_imsize,
        **_FAMILY_DOCS[family]) + features.feature_docstring(table[variant]))


NFResNet50 = _family_constructor(NFResNet, "ResNet50", "NFResNet50")
NFResNet101 = _family_constructor(NFResNet, "ResNet101", "NFResNet101")
NFResNet152 = _family_constructor(NFResNet, "ResNet152", "NFResNet152")
NFResNet200 = _family_constructor(NFResNet, "ResNet200", "NFResNet200")
NFResNet288 = _family_constructor(NFResNet, "ResNet288", "NFResNet288")
NFResNet600 = _family_constructor(NFResNet, "ResNet600", "NFResNet600")
NFRegNetB0 = _family_constructor(NFRegNet, "B0", "NFRegNetB0")
NFRegNetB1 = _family_constructor(NFRegNet, "B1", "NFRegNetB1")
NFRegNetB2 = _family_constructor(NFRegNet, "B2", "NFRegNetB2")
NFRegNetB3 = _family_constructor(NFRegNet, "B3", "NFRegNetB3")
NFRegNetB4 = _family_constructor(NFRegNet, "B4", "NFRegNetB4")
NFRegNetB5 = _family_constructor(NFRegNet, "B5", "NFRegNetB5")
NFRegNetB6 = _family_constructor(NFRegNet, "B6", "NFRegNetB6")
NFRegNetB7 = _family_constructor(NFRegNet, "B7", "NFRegNetB7")
NFRegNetB8 = _family_constructor(NFRegNet, "B8", "NFRegNetB8")
