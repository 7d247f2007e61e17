"""Multi-scale feature maps ("P1" ... "P5") and the image data format.

Every constructor takes `feature_extractor=True` (kimm's keyword) and then
returns a model whose output is a dict keyed like keras-hub's
`backbone.pyramid_outputs`: `"P{k}"` is the feature map at stride `2**k`.
Why this pair: the keyword gives a ready model in one call (Keras
Applications style: `weights="imagenet"`, any input size, the classifier
left out), and the keras-hub keys are what FPN/U-Net heads written for
keras-hub backbones already consume, so they plug in unchanged. timm's
`features_only=True` is the same idea with list outputs.

Which tensor is `"P{k}"`: the last tensor of the network at that stride,
read off the builder's own layout (the stem's entries and every block's
stride), so any family the builder knows gets its pyramid automatically:

* `"P1"`: the end of the stem's stride-2 part (NFNets: `stem_act2`, 64
  channels; NF-ResNets and NF-RegNets: `initial_conv`);
* `"P2"`..`"P4"`: the output of the last block of the stage at stride 4, 8,
  16 (the residual sum, before the next block's activation, as timm's
  `feature_info`);
* `"P5"`: after `final_conv` and `final_act` (the map the classifier pools).

`pyramid_channels(config)` gives the channel count of each key, e.g.
NFNet-F0: P1 64, P2 256, P3 512, P4 1536, P5 3072.

Example:
```python
backbone = keras_nfnets.NFNetF0(weights="imagenet", feature_extractor=True)
maps = backbone(images)          # {"P1": (n, h/2, w/2, 64), ...}
```
"""

import functools
import math

import keras

LEVELS = ("P1", "P2", "P3", "P4", "P5")


class Pyramid:
    """Records the last tensor at each stride while the builder runs.

    `add(x, stride)` is called after every layer the builder adds, with
    that layer's stride; the tensor is kept under `"P{log2(total stride)}"`
    (a later tensor at the same stride replaces it).
    """

    def __init__(self):
        self.stride = 1
        self.outputs = {}

    def add(self, x, stride=1):
        self.stride *= int(stride)
        level = int(round(math.log2(self.stride)))
        if level >= 1 and 2 ** level == self.stride:
            self.outputs[f"P{level}"] = x


def stem_stride(kind, args):
    """The stride of one stem entry of `builder.architecture` (`("conv",
    name, filters, kernel, stride)`, `("max_pool", name, size, stride)`:
    the stride is the last argument; anything else has stride 1)."""
    return args[-1] if kind in ("conv", "max_pool") else 1


def pyramid_channels(config):
    """The channel count of each feature map of `feature_extractor=True`.

    Args:
        config: a variant name of the NFNet table (`"F0"` ...) or any config
            object the builder takes (`NFNetConfig`, `NFResNetConfig`,
            `NFRegNetConfig`, ...).

    Returns:
        A dict `{"P1": channels, ..., "P5": channels}`.

    Example:
    >>> keras_nfnets.pyramid_channels("F0")
    {'P1': 64, 'P2': 256, 'P3': 512, 'P4': 1536, 'P5': 3072}
    """
    from keras_nfnets import builder  # pylint: disable=import-outside-toplevel
    from keras_nfnets import variants  # pylint: disable=import-outside-toplevel
    if isinstance(config, (str, dict)):
        config = variants.get_config(config)
    arch = builder.architecture(config, 0.0)
    pyramid, channels = Pyramid(), None
    for kind, _, *args in arch["stem"]:
        if kind == "conv":
            channels = args[0]
        pyramid.add(channels, stem_stride(kind, args))
    for block in arch["blocks"]:
        channels = block["out_channels"]
        pyramid.add(channels, block["strides"])
    if arch.get("final_conv") is not None:
        channels = arch["final_conv"]
    pyramid.add(channels)
    return dict(sorted(pyramid.outputs.items()))


def feature_docstring(config):
    """The "Feature maps" paragraph of a constructor's docstring."""
    keys = ", ".join(f"`{k}`: {c}" for k, c in
                     pyramid_channels(config).items())
    return (
        "\nFeature maps (`feature_extractor=True`): a dict of stride-2**k "
        f"maps with these channels: {keys}.\nSee `keras_nfnets.features`.\n")


# ---------------------------------------------------------------------------
# channels_first: NCHW at the model's boundary, NHWC inside.

def data_format_boundary(build):
    """Makes a builder honour `keras.config.image_data_format()`.

    Under `"channels_first"` the model takes `(channels, height, width)`
    images and returns NCHW feature maps (pooled and classifier outputs are
    2D either way); inside, one `Permute` on the way in and one per 4D
    output on the way out, and every layer computes in channels_last (the
    builder passes `data_format="channels_last"` to each: the global
    setting is read, never changed), so
    the numbers (and the weights) are exactly those of the channels_last
    model. Keras's own backends do the same per convolution where their
    native layout differs.
    """

    @functools.wraps(build)
    def wrapper(config, *, input_tensor=None, input_shape=None, **kwargs):
        data_format = keras.config.image_data_format()
        if data_format != "channels_first":
            return build(config, input_tensor=input_tensor,
                         input_shape=input_shape, **kwargs)
        if input_tensor is None:
            inputs = keras.Input(shape=input_shape)
        elif not keras.backend.is_keras_tensor(input_tensor):
            inputs = keras.Input(tensor=input_tensor, shape=input_shape)
        else:
            inputs = input_tensor
        nhwc = keras.layers.Permute((2, 3, 1), name="to_channels_last")(
            inputs)
        # The builder gives every layer `data_format="channels_last"`, so
        # nothing here changes the global setting.
        inner = build(config, input_tensor=nhwc, input_shape=None, **kwargs)

        def to_nchw(path, x):
            if len(x.shape) != 4:
                return x
            suffix = f"_{path}" if path else ""
            return keras.layers.Permute(
                (3, 1, 2), name=f"to_channels_first{suffix}")(x)

        output = inner.output
        if isinstance(output, dict):
            output = {k: to_nchw(k, v) for k, v in output.items()}
        else:
            output = to_nchw("", output)
        return type(inner)(inner.inputs if len(inner.inputs) > 1
                           else inner.inputs[0], output, name=inner.name)

    return wrapper
