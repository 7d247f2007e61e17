"""Keras Applications-style constructors: `NFNetF0()` ... `NFNetF7Plus()`,
`NFResNet50()` ... `NFResNet600()` and `NFRegNetB0()` ... `NFRegNetB8()`.

Thin wrappers over `builder.build_nfnet`, with the Keras Applications
argument handling (`include_top`, `weights`, `input_shape`, `pooling`, ...).
"""

import dataclasses
import inspect
import os

import keras

from keras_nfnets import agc
from keras_nfnets import builder
from keras_nfnets import features
from keras_nfnets import preprocessing
from keras_nfnets import presets
from keras_nfnets import variants
from keras_nfnets.weights import load as weights_load

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

Training: `model.compile(...)` applies adaptive gradient clipping by default,
as DeepMind trained the NFNets (`SGD_AGC`: clipping 0.01, eps 1e-3, every
variable but the classifier weight `linear/kernel`); `agc_clipping=` sets
another threshold, `None` turns it off. 0.01 was tuned for SGD with momentum
at batch 4096: with Adam and other adaptive optimizers `compile` warns unless
you choose `agc_clipping` yourself.

Args:
    include_top: whether to include the classifier (`avg_pool` -> dropout
        -> `linear`). Defaults to `True`.
    weights: `None` (random initialization), `"imagenet"` (DeepMind's
        published ImageNet weights, where they exist), or the path to a
        weights file: one of DeepMind's `*_haiku.npz` checkpoints (read
        safely, without dill/haiku/jax), timm's `dm_nfnet_f*`
        `model.safetensors` (DeepMind's weights; DeepMind's numerics are
        kept) or a Keras `.weights.h5` file.
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
    remat: recompute each block in the backward pass (less training
        memory, more compute). `"auto"` (default): decided by memory for
        each traced training step, from its batch and image size: on when
        the activations the step would keep would not fit, or come close
        to, the memory free on the device (host RAM on CPU), off otherwise, said
        in one line (`keras_nfnets.runtime`); the saved config keeps
        `"auto"`, so a file takes the choice of the machine it trains on.
        `True`/`False` force it. Outputs and gradients are the same either
        way.
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
            (isinstance(weights, str) and weights.startswith("hf://")) or
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
    if weights == "imagenet":  # before the build: a quick, clear error
        weights_load.check_available(variant, name)
    if input_tensor is None or input_shape is not None:
        input_shape = _input_shape(input_shape, cfg.test_imsize, include_top)
    model = builder.build_nfnet(
        cfg, include_top=include_top, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, name=name,
        **nfnet_kwargs)
    model.default_agc_clipping = agc.default_clipping_for(cfg)
    # The evaluation preprocessing of the weights' authors, saved with the
    # model (`NFNetModel.preprocessing`); input size aside, it does not
    # depend on the weights loaded.
    model.preprocessing = preprocessing.default_preprocessing(
        variant if variant is not None else cfg)
    if weights is not None:
        weights_load.load_weights(
            model, weights, variant=variant,
            skip_layers=() if include_top else ("linear",))
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
# timm's L-family: the same table and builder, timm's switches and numerics.

TIMM_DOCSTRING = """Instantiates {fullname} ({timm_name} in timm).

Reference:
- [High-Performance Large-Scale Image Recognition Without Normalization](
    https://arxiv.org/abs/2102.06171) (Brock, De, Smith, Simonyan, ICML 2021)
- timm's "light" NFNets (Ross Wightman, `timm/models/nfnet.py`): the
  F-series depths and widths with {summary}.

Numerically timm's model: it was trained with timm's arithmetic, so it
computes what timm computes (weight standardization `rsqrt(fan_in *
(var + 1e-5))`, the SiLU gamma folded into every convolution, PyTorch's
symmetric padding; see `keras_nfnets.variants.Numerics`). Default input
size {test_imsize}x{test_imsize} (trained at {train_imsize}; timm
evaluates with crop 1.0, see `keras_nfnets.preprocess_for_eval`).

Args:
    include_top, input_tensor, input_shape, pooling, classes,
    classifier_activation, include_preprocessing, name, drop_rate,
    stochdepth_rate, activation, seed, remat: as for `keras_nfnets.NFNetF0`.
    weights: `None` (random initialization), {imagenet}or the path of
        timm's `model.safetensors` for `{timm_name}` (read with the
        `safetensors` numpy API, every tensor checked), or a Keras
        `.weights.h5` file.

Returns:
    A `keras_nfnets.NFNetModel` (a functional `keras.Model`).

Example:
```python
backbone = keras_nfnets.{name}(weights={example_weights}, include_top=False,
                              pooling="avg")
```
"""

_L_SUMMARIES = {
    "L0": "group width 64, bottleneck 0.25, squeeze-excite (ratio 0.25), "
          "SiLU and a 1.5x final conv",
    "ECA-L0": "group width 64, bottleneck 0.25, efficient channel "
              "attention, SiLU and a 1.5x final conv",
}


def _timm_constructor(family, variant, fname, default_name, fullname,
                      summary, cfg):
    def build(variant, name=None, **kwargs):
        return family(variant, name=name or default_name, **kwargs)

    preset = presets.TIMM_IMAGENET.get(variant)
    timm_name = (preset or presets.TIMM_UNPUBLISHED.get(variant, {})).get(
        "timm_name", default_name)
    imagenet = (f'`"imagenet"` (timm\'s ImageNet-1k weights, '
                f'{preset["hub_id"]} on the Hugging Face hub), '
                if preset else "(timm publishes no ImageNet weights), ")
    return _thin_constructor(build, variant, fname, TIMM_DOCSTRING.format(
        name=fname, fullname=fullname, timm_name=timm_name, summary=summary,
        test_imsize=cfg.test_imsize, train_imsize=cfg.train_imsize,
        imagenet=imagenet,
        example_weights='"imagenet"' if preset else "None"))


def _l_constructor(variant, fname, default_name, fullname):
    summary = _L_SUMMARIES.get(
        variant, "group width 64, bottleneck 0.25, efficient channel "
        "attention, SiLU and a 2x final conv")
    return _timm_constructor(NFNet, variant, fname, default_name, fullname,
                             summary, variants.get_config(variant))


NFNetL0 = _l_constructor("L0", "NFNetL0", "nfnet_l0", "NFNet-L0")
ECANFNetL0 = _l_constructor("ECA-L0", "ECANFNetL0", "eca_nfnet_l0",
                            "ECA-NFNet-L0")
ECANFNetL1 = _l_constructor("ECA-L1", "ECANFNetL1", "eca_nfnet_l1",
                            "ECA-NFNet-L1")
ECANFNetL2 = _l_constructor("ECA-L2", "ECANFNetL2", "eca_nfnet_l2",
                            "ECA-NFNet-L2")
ECANFNetL3 = _l_constructor("ECA-L3", "ECANFNetL3", "eca_nfnet_l3",
                            "ECA-NFNet-L3")


# ---------------------------------------------------------------------------
# NF-ResNets and NF-RegNets: the same machinery with another config.

FAMILY_DOCSTRING = """Instantiates the {name} architecture ({family}).

Reference:
- {reference}

Numerically identical to DeepMind's `{module}` (deepmind-research/nfnets):
the same `WSConv2D`, gamma-scaled {activation}, `NFBlock` and head as the
NFNets, built by the same builder. Default input size
{test_imsize}x{test_imsize}.

Training: `model.compile(...)` applies no adaptive gradient clipping by
default, as DeepMind trained the {family}s (plain SGD with Nesterov
momentum, no AGC, in their `nfnets` experiment configs); pass
`agc_clipping=0.01` (or another threshold) to clip.

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

# The builder's keyword arguments that every family passes through
# (`drop_rate`, `stochdepth_rate`, `activation`, `seed`, `remat`, ...): read
# from its signature, so a new builder argument reaches every family. The
# rest are the Keras Applications arguments, handled by `_make_model`.
_APPLICATION_ARGS = ("include_top", "input_tensor", "input_shape", "pooling",
                     "classes", "classifier_activation",
                     "include_preprocessing", "name")
_BUILDER_KWARGS = tuple(
    p.name for p in inspect.signature(builder.build_nfnet).parameters.values()
    if p.kind is p.KEYWORD_ONLY and p.name not in _APPLICATION_ARGS)


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


# timm's own NF-ResNet-50 and NF-RegNet-B1 (the layouts of its published
# weights; see the "-timm" rows of the variant tables).
NFResNet50Timm = _timm_constructor(
    NFResNet, "ResNet50-timm", "NFResNet50Timm", "nf_resnet50_timm",
    "timm's NF-ResNet-50", "a 7x7 stem and max pool, ReLU, bottleneck "
    "0.25, an average-pool shortcut and no skip gains (DeepMind's "
    "NF-ResNet-50 is `NFResNet50`)",
    variants.NF_RESNET_VARIANTS["ResNet50-timm"])
NFRegNetB1Timm = _timm_constructor(
    NFRegNet, "B1-timm", "NFRegNetB1Timm", "nf_regnet_b1_timm",
    "timm's NF-RegNet-B1", "widths rounded to multiples of 8 (40, 80, 160, "
    "328), SiLU, squeeze-excite and no skip gains (DeepMind's NF-RegNet-B1 "
    "is `NFRegNetB1`)", variants.NF_REGNET_VARIANTS["B1-timm"])
