"""Keras Applications-style constructors: `NFNetF0()` ... `NFNetF7Plus()`.

Thin wrappers over `builder.build_nfnet`, with the Keras Applications
argument handling (`include_top`, `weights`, `input_shape`, `pooling`, ...).
"""

import os

from keras_nfnets import builder
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
    name: the model name.

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
    if input_shape is None:
        return ((default_size, default_size, 3) if include_top
                else (None, None, 3))
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels), got "
            f"{input_shape}.")
    h, w, c = input_shape
    if c is None or c < 1:
        raise ValueError(f"`input_shape` needs a channel count, got {c}.")
    for size in (h, w):
        if size is not None and size < 16:
            raise ValueError(
                f"`input_shape` {input_shape}: height and width must be at "
                "least 16 (the network downsamples by 32; 16 gives a 1x1 "
                "final map).")
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
    _validate(weights, include_top, classes, classifier_activation, pooling)
    if weights == "imagenet":
        from keras_nfnets import pretrained  # pylint: disable=import-outside-toplevel
        pretrained.check_available(variant)
    if input_tensor is None or input_shape is not None:
        input_shape = _input_shape(input_shape, cfg.test_imsize, include_top)
    if name is None:
        name = "nfnet_" + (variant or "custom").lower().replace("+", "_plus")
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


def _constructor(variant):
    cfg = variants.get_config(variant)
    fname = "NFNet" + variant.replace("+", "Plus")

    def constructor(include_top=True, weights=None, input_tensor=None,
                    input_shape=None, pooling=None, classes=1000,
                    classifier_activation="softmax",
                    include_preprocessing=True, name=None, **nfnet_kwargs):
        return NFNet(variant, include_top=include_top, weights=weights,
                     input_tensor=input_tensor, input_shape=input_shape,
                     pooling=pooling, classes=classes,
                     classifier_activation=classifier_activation,
                     include_preprocessing=include_preprocessing,
                     name=name, **nfnet_kwargs)

    constructor.__name__ = constructor.__qualname__ = fname
    constructor.__doc__ = BASE_DOCSTRING.format(
        name=fname, test_imsize=cfg.test_imsize, train_imsize=cfg.train_imsize)
    return constructor


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
