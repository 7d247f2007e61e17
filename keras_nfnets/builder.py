"""The one builder: config -> stem -> stages of blocks -> head -> model.

Every normalizer-free family goes through `build_nfnet`: NFNets
(`NFNetConfig`), NF-ResNets (`NFResNetConfig`) and NF-RegNets
(`NFRegNetConfig`). A family differs only in its `architecture` (stem layers,
block switches, block name, final conv, classifier init). Layer names follow
DeepMind's haiku module names (`stem_conv0` or `initial_conv`, `nf_block`,
`nf_block_1`, ... or `nf_res_block`, ..., `final_conv`, `linear`), which
makes the checkpoint mapping a rule.
"""

import dataclasses
import warnings

import keras

from keras_nfnets import features as nf_features
from keras_nfnets import layers as nf_layers
from keras_nfnets import runtime
from keras_nfnets import variants
from keras_nfnets.model import NFNetModel

# Every layer computes in channels_last, whatever
# `keras.config.image_data_format()` says (a channels_first model transposes
# at its boundary: `features.data_format_boundary`).
NHWC = "channels_last"
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def block_schedule(config, stochdepth_rate):
    """An NFNet's per-block placement: channels, stride, beta, stochastic
    depth, and the per-stage spec fields (expansion, group width, big
    width) under `spec_fields`.

    beta is 1 / expected_std of the block's input: the expected std is reset
    to 1 after each stage's first block (its shortcut is a fresh projection)
    and then grows by alpha**2 in variance per block, as in DeepMind's code.
    """
    return stage_schedule(
        config.width[0] // 2, config.width, config.depth, config.strides,
        config.alpha, stochdepth_rate, expansion=config.expansion,
        group_width=config.group_width, big_width=config.big_width)


def stage_schedule(in_channels, widths, depths, strides, alpha,
                   stochdepth_rate, **per_stage):
    """The block schedule of any family: one dict per block with its
    placement (`in_channels`, `out_channels`, `strides`, `beta`,
    `stochdepth_rate`), its `stage`, and `spec_fields`: the `BlockSpec`
    fields that vary per stage (`per_stage` maps each to one value per
    stage)."""
    blocks = []
    expected_std = 1.0
    ch = in_channels
    index = 0
    num_blocks = sum(depths)
    for stage, (width, depth, stride) in enumerate(
            zip(widths, depths, strides)):
        for block_index in range(depth):
            blocks.append(dict(
                in_channels=ch, out_channels=int(width),
                strides=stride if block_index == 0 else 1,
                beta=1.0 / expected_std,
                stochdepth_rate=stochdepth_rate * index / num_blocks,
                stage=stage,
                spec_fields={k: v[stage] for k, v in per_stage.items()}))
            ch = int(width)
            index += 1
            if block_index == 0:
                expected_std = 1.0
            expected_std = (expected_std ** 2 + alpha ** 2) ** 0.5
    return blocks


def block_name(index, prefix="nf_block"):
    """haiku's naming of repeated modules: nf_block, nf_block_1, ..."""
    return prefix if index == 0 else f"{prefix}_{index}"


def numerics_options(config, activation):
    """The config's `Numerics` (see `variants.NUMERICS`) as the layers'
    keyword arguments: `(conv_options, activation_options)` for every
    `WSConv2D` and every scaled activation."""
    numerics = variants.NUMERICS[getattr(config, "numerics", "deepmind")]
    gamma_in_conv = numerics.gamma_on == "conv"
    conv = dict(eps=numerics.ws_eps, eps_mode=numerics.ws_eps_mode,
                gamma=nf_layers.GAMMAS[activation] if gamma_in_conv else 1.0,
                padding=numerics.padding)
    act = dict(gamma=1.0 if gamma_in_conv else None, gelu=numerics.gelu)
    return conv, act


def block_spec(config, activation=None):
    """The `BlockSpec` of a config's blocks (NFNet, NF-ResNet, NF-RegNet;
    DeepMind's or timm's numerics): the family switches, `alpha`, the
    activation (default: the config's) and the numerics. Fields that vary
    per stage come from `architecture(...)["blocks"]`.

    Example:
    >>> spec = block_spec(keras_nfnets.get_config("F0"))
    >>> spec.group_width, spec.attention
    (128, 'se')
    """
    activation = activation or config.activation
    conv, act = numerics_options(config, activation)
    common = dict(alpha=config.alpha, activation=activation,
                  skip_gain=config.skip_gain, conv_options=conv,
                  activation_options=act)
    if isinstance(config, variants.NFResNetConfig):
        return nf_layers.BlockSpec(
            expansion=config.bottleneck_ratio, group_width=None,
            use_two_convs=False, strided_shortcut=config.strided_shortcut,
            se_position="output" if config.use_se else None,
            se_ratio=config.se_ratio, **common)
    if isinstance(config, variants.NFRegNetConfig):
        return nf_layers.BlockSpec(
            expansion=config.expansion, big_width=False,
            group_width=config.group_size, use_two_convs=False,
            se_position="bottleneck", se_ratio=config.se_ratio,
            width_divisor=config.ch_div, se_divisor=config.ch_div, **common)
    return nf_layers.BlockSpec(
        se_ratio=config.se_ratio, use_two_convs=config.use_two_convs,
        attention=config.attention, se_divisor=config.se_divisor,
        width_divisor=config.ch_div, **common)


def _fc_init(stddev):
    return (keras.initializers.RandomNormal(0.0, stddev) if stddev
            else keras.initializers.Zeros())


def architecture(config, stochdepth_rate, activation=None):
    """A family's layout: `stem` (a list of `("conv", name, filters, kernel,
    stride)`, `("act", name)` or `("max_pool", name, size, stride)`),
    `blocks` (from `stage_schedule`, each with its `spec`: `block_spec`
    with the block's per-stage fields), `block_prefix`, `final_conv`
    channels (or None) and `fc_stddev` (0: zero-initialised classifier)."""
    spec = block_spec(config, activation)
    if isinstance(config, variants.NFResNetConfig):
        ch = int(16 * config.width)
        arch = dict(
            stem=[("conv", "initial_conv", ch, 7, 2),
                  ("max_pool", "stem_pool", 3, 2)],
            blocks=stage_schedule(ch, config.stage_widths, config.depth,
                                  config.strides, config.alpha,
                                  stochdepth_rate),
            block_prefix="nf_res_block", final_conv=None, fc_stddev=0.01)
    elif isinstance(config, variants.NFRegNetConfig):
        widths = config.stage_widths
        blocks = stage_schedule(widths[0], widths, config.depth,
                                (2,) * len(widths), config.alpha,
                                stochdepth_rate)
        blocks[0]["spec_fields"]["expansion"] = 1  # EfficientNet-style
        arch = dict(
            stem=[("conv", "initial_conv", widths[0], 3, 2)],
            blocks=blocks, block_prefix="nf_block",
            final_conv=config.final_conv_width, fc_stddev=0.0)
    else:
        stem_ch = [(16, 2), (32, 1), (64, 1), (config.width[0] // 2, 2)]
        if config.stem_width:  # timm's "deep_quad" stem
            w = config.stem_width
            stem_ch = [(w // 8, 2), (w // 4, 1), (w // 2, 1), (w, 2)]
        stem = []
        for i, (filters, stride) in enumerate(stem_ch):
            stem.append(("conv", f"stem_conv{i}", filters, 3, stride))
            if i < len(stem_ch) - 1:
                stem.append(("act", f"stem_act{i}"))
        blocks = block_schedule(config, stochdepth_rate)
        if config.stem_width:
            blocks[0]["in_channels"] = config.stem_width
        arch = dict(
            stem=stem, blocks=blocks, block_prefix="nf_block",
            final_conv=(int(config.final_conv_mult * config.width[-1])
                        if config.final_conv_mult is not None else
                        config.final_conv_ch),
            fc_stddev=0.01)
    arch["spec"] = spec
    for block in arch["blocks"]:
        block["spec"] = (dataclasses.replace(spec, **block["spec_fields"])
                         if block["spec_fields"] else spec)
    return arch


def resolve_remat(remat):
    """Deprecated: use `keras_nfnets.runtime.resolve_remat`."""
    warnings.warn("keras_nfnets.builder.resolve_remat is deprecated; use "
                  "keras_nfnets.runtime.resolve_remat.", DeprecationWarning,
                  stacklevel=2)
    return runtime.resolve_remat(remat)


def _preprocessing(channels):
    if channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:  # no per-channel statistics: use the averaged ones on every channel
        mean = (sum(IMAGENET_MEAN) / 3,) * channels
        std = (sum(IMAGENET_STD) / 3,) * channels
    return keras.layers.Normalization(
        mean=list(mean), variance=[s * s for s in std], name="preprocessing")


def _head_dtype():
    """float32 for the classifier under a float16/bfloat16 policy; the
    global policy otherwise (float32, or float64 if a user asks for it)."""
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype in ("float16",
                                                 "bfloat16") else None


@nf_features.data_format_boundary
def build_nfnet(config, *, include_top=True, input_tensor=None,
                input_shape=None, pooling=None, classes=1000,
                classifier_activation="softmax", include_preprocessing=True,
                drop_rate=None, stochdepth_rate=None, activation=None,
                seed=None, remat="auto", feature_extractor=False,
                name="nfnet"):
    """Builds a `keras.Model` from an `NFNetConfig`, `NFResNetConfig` or
    `NFRegNetConfig` (no weights).

    See `keras_nfnets.NFNet` for the arguments.
    """
    activation = activation or config.activation
    nf_layers.check_activation(activation)
    remat = runtime.check_remat(remat)  # "auto" resolves at trace time
    drop_rate = config.drop_rate if drop_rate is None else drop_rate
    stochdepth_rate = (config.stochdepth_rate if stochdepth_rate is None
                       else stochdepth_rate)

    if input_tensor is not None and not keras.backend.is_keras_tensor(
            input_tensor):
        inputs = keras.Input(tensor=input_tensor, shape=input_shape)
    elif input_tensor is not None:
        inputs = input_tensor
    else:
        inputs = keras.Input(shape=input_shape)
    x = inputs
    if include_preprocessing:
        x = _preprocessing(inputs.shape[-1])(x)

    arch = architecture(config, stochdepth_rate, activation)
    # The stem and head take the blocks' numerics.
    conv_options = arch["spec"].conv_options
    act_options = arch["spec"].activation_options

    def act(name):
        return nf_layers.ScaledActivation(activation, name=name,
                                          **act_options)

    pyramid = nf_features.Pyramid()
    for kind, layer_name, *args in arch["stem"]:
        if kind == "conv":
            filters, kernel, stride = args
            x = nf_layers.WSConv2D(filters, kernel, strides=stride,
                                   data_format=NHWC, name=layer_name,
                                   **conv_options)(x)
        elif kind == "act":
            x = act(layer_name)(x)
        elif conv_options["padding"] == "symmetric":  # PyTorch's max pool
            size, stride = args
            x = nf_layers.SymmetricMaxPooling2D(size, stride, size // 2,
                                                name=layer_name)(x)
        else:
            size, stride = args
            x = keras.layers.MaxPooling2D(size, strides=stride,
                                          padding="same", data_format=NHWC,
                                          name=layer_name)(x)
        pyramid.add(x, nf_features.stem_stride(kind, args))

    for i, block in enumerate(arch["blocks"]):
        x = nf_layers.NFBlock(
            block["in_channels"], block["out_channels"], block["spec"],
            strides=block["strides"], beta=block["beta"],
            stochdepth_rate=block["stochdepth_rate"],
            seed=None if seed is None else seed + i,
            remat=remat, name=block_name(i, arch["block_prefix"]))(x)
        pyramid.add(x, block["strides"])

    if arch["final_conv"] is not None:
        x = nf_layers.WSConv2D(arch["final_conv"], 1, data_format=NHWC,
                               name="final_conv", **conv_options)(x)
    x = act("final_act")(x)
    pyramid.add(x)

    if feature_extractor:
        x = pyramid.outputs
    elif include_top:
        x = keras.layers.GlobalAveragePooling2D(data_format=NHWC,
                                                name="avg_pool")(x)
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, seed=seed,
                                     name="top_dropout")(x)
        x = keras.layers.Dense(
            classes, activation=classifier_activation,
            kernel_initializer=_fc_init(arch["fc_stddev"]),
            # Logits leave the model in float32 under every mixed policy
            # (top-k and losses need it), as in Keras applications.
            dtype=_head_dtype(), name="linear")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(data_format=NHWC,
                                                name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(data_format=NHWC,
                                            name="max_pool")(x)

    if input_tensor is not None:
        model_inputs = keras.utils.get_source_inputs(input_tensor)
    else:
        model_inputs = inputs
    return NFNetModel(model_inputs, x, name=name)
