"""`NFNetBackbone`: every NFNet family as a KerasHub
`FeaturePyramidBackbone`, described by its constructor arguments."""

import dataclasses

import keras
import keras_hub

from keras_nfnets import builder, variants
from keras_nfnets import model as nf_model
from keras_nfnets.optim import agc


def resolve_config(variant, overrides=None):
    """The builder's config for a variant name of any family, with
    `overrides` (fields of that family's config dataclass) applied.

    Example:
    >>> resolve_config("F0", {"depth": (1, 1, 1, 1)}).depth
    (1, 1, 1, 1)
    """
    if not isinstance(variant, str):
        raise TypeError(
            f"`variant` must be a variant name (a string), got "
            f"{type(variant).__name__}; give changes as `overrides`.")
    config = None
    for table in (variants.NF_RESNET_VARIANTS, variants.NF_REGNET_VARIANTS):
        if variant in table:
            config = table[variant]
    if config is None:
        key = variant.upper().replace("PLUS", "+")
        if key not in variants.NFNET_VARIANTS:
            known = (sorted(variants.NFNET_VARIANTS)
                     + sorted(variants.NF_RESNET_VARIANTS)
                     + sorted(variants.NF_REGNET_VARIANTS))
            raise ValueError(
                f"Unknown NFNet variant {variant!r}: expected one of {known}.")
        config = variants.NFNET_VARIANTS[key]
    overrides = dict(overrides or {})
    if overrides:
        fields = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"Unknown override(s) {unknown} for {type(config).__name__}: "
                f"expected fields among {sorted(fields)}.")
        overrides = {k: tuple(v) if isinstance(v, list) else v
                     for k, v in overrides.items()}
        try:
            config = dataclasses.replace(config, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"Bad override(s) {overrides} for variant {variant!r} "
                f"({type(config).__name__}): {e}") from e
    return config


def _permute(x, source, target, name):
    if source == target:
        return x
    dims = (2, 3, 1) if target == "channels_last" else (3, 1, 2)
    return keras.layers.Permute(dims, name=name)(x)


@keras.saving.register_keras_serializable(package="keras_nfnets")
class NFNetBackbone(keras_hub.models.FeaturePyramidBackbone):
    """A Normalizer-Free network (NFNet, NF-ResNet, NF-RegNet, timm's
    L-family) as a KerasHub feature-pyramid backbone.

    The graph is the one `keras_nfnets` builds for the variant (same layer
    names, so the same weights), without the classifier; the output is the
    final feature map (`"P5"`, after `final_act`) and `pyramid_outputs`
    holds `"P1"` ... `"P5"` (stride `2**k`).

    Args:
        variant: a variant name of any family: `"F0"` ... `"F7"`,
            `"F0+"` ..., `"L0"`, `"ECA-L0"` ... `"ECA-L3"`, `"ResNet50"` ...,
            `"ResNet50-timm"`, `"B0"` ... `"B8"`, `"B1-timm"`.
        overrides: a dict of fields of the variant's config dataclass
            (`NFNetConfig`, `NFResNetConfig`, `NFRegNetConfig`) to change,
            e.g. `{"depth": (1, 1, 1, 1)}` or `{"width": 1}`.
        image_shape: the input shape, `(height, width, 3)` channels last
            (`(3, height, width)` with `data_format="channels_first"`);
            height and width may be None.
        include_preprocessing: normalise 0-255 RGB inputs inside the model
            (ImageNet mean and std), as the package's constructors do.
        stochdepth_rate: the stochastic-depth rate (the variant's when None).
        data_format: `"channels_last"` or `"channels_first"` (the Keras
            global setting when None).
        dtype: the dtype policy of the layers (the global one when None).

    Example:
    ```python
    backbone = keras_nfnets.hub.NFNetBackbone("F0")
    model = keras.Model(backbone.input, backbone.pyramid_outputs)
    maps = model(np.zeros((1, 256, 256, 3)))   # {"P1": ..., "P5": ...}
    tiny = keras_nfnets.hub.NFNetBackbone(
        "F0", overrides={"depth": (1, 1, 1, 1)}, image_shape=(64, 64, 3))
    ```
    """

    def __init__(self, variant="F0", overrides=None,
                 image_shape=(None, None, 3), include_preprocessing=True,
                 stochdepth_rate=None, data_format=None, dtype=None,
                 **kwargs):
        config = resolve_config(variant, overrides)
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "`data_format` must be 'channels_last' or 'channels_first'; "
                f"got {data_format!r}.")
        image_shape = tuple(image_shape)
        if len(image_shape) != 3:
            raise ValueError(
                f"`image_shape` must be (height, width, channels) (channels "
                f"first: (channels, height, width)); got {image_shape!r}.")
        policy = (None if dtype is None else keras.dtype_policies.get(dtype))
        global_format = keras.config.image_data_format()
        previous = keras.config.dtype_policy()
        if policy is not None:
            # The builder's layers take the global policy; Keras has no
            # scoped one, so it is swapped for the build and restored.
            keras.config.set_dtype_policy(policy)
        try:
            inputs = keras.Input(shape=image_shape)
            x = _permute(inputs, data_format, global_format, "to_global")
            inner = builder.build_nfnet(
                config, input_tensor=x, include_top=False,
                include_preprocessing=include_preprocessing,
                stochdepth_rate=stochdepth_rate, feature_extractor=True,
                name="nfnet")
        finally:
            keras.config.set_dtype_policy(previous)
        pyramid = {
            key: _permute(value, global_format, data_format, f"out_{key}")
            for key, value in sorted(inner.output.items())}
        super().__init__(inputs=inputs, outputs=pyramid["P5"], dtype=dtype,
                         **kwargs)
        self.pyramid_outputs = pyramid
        self.variant = variant
        self.overrides = (None if not overrides else
                          {k: list(v) if isinstance(v, tuple) else v
                           for k, v in dict(overrides).items()})
        self.image_shape = image_shape
        self.include_preprocessing = include_preprocessing
        self.stochdepth_rate = stochdepth_rate
        self.data_format = data_format
        self.nfnet_config = config
        #: `compile()`'s AGC threshold for this family (DeepMind's).
        self.default_agc_clipping = agc.default_clipping_for(config)

    def call(self, inputs, training=None, mask=None, **kwargs):
        # remat="auto" decided by memory for each traced training step.
        with nf_model.step_remat_scope(self, inputs, training):
            return super().call(inputs, training=training, mask=mask,
                                **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({
            "variant": self.variant,
            "overrides": self.overrides,
            "image_shape": list(self.image_shape),
            "include_preprocessing": self.include_preprocessing,
            "stochdepth_rate": self.stochdepth_rate,
            "data_format": self.data_format,
        })
        return config

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """`keras_hub.models.Backbone.from_preset`, plus the names of
        `keras_nfnets.hub.backbone_presets` (`"nfnet_f0_imagenet"` ...):
        built from the original verified file on first use and cached as
        a KerasHub preset directory."""
        from keras_nfnets.hub import nfnet_presets  # pylint: disable=import-outside-toplevel
        preset = nfnet_presets.resolve(preset)
        return super().from_preset(preset, load_weights=load_weights,
                                   **kwargs)
