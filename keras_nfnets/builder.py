"""The one NFNet builder: config -> stem -> stages of blocks -> head -> model.

Every NFNet variant goes through `build_nfnet`. Layer names follow DeepMind's
haiku module names (`stem_conv0`, `nf_block`, `nf_block_1`, ..., `final_conv`,
`linear`), which makes the checkpoint mapping a rule.
"""

import keras

from keras_nfnets import layers as nf_layers
from keras_nfnets.model import NFNetModel

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def block_schedule(config, stochdepth_rate):
    """Per-block arguments: channels, stride, beta and stochastic depth.

    beta is 1 / expected_std of the block's input: the expected std is reset
    to 1 after each stage's first block (its shortcut is a fresh projection)
    and then grows by alpha**2 in variance per block, as in DeepMind's code.
    """
    blocks = []
    expected_std = 1.0
    ch = config.width[0] // 2
    index = 0
    num_blocks = config.num_blocks
    for stage, (width, depth, expansion, group_width, big_width,
                stride) in enumerate(zip(config.width, config.depth,
                                         config.expansion, config.group_width,
                                         config.big_width, config.strides)):
        for block_index in range(depth):
            blocks.append(dict(
                in_channels=ch, out_channels=int(width),
                expansion=expansion, group_width=group_width,
                big_width=big_width,
                strides=stride if block_index == 0 else 1,
                beta=1.0 / expected_std,
                stochdepth_rate=stochdepth_rate * index / num_blocks,
                stage=stage))
            ch = int(width)
            index += 1
            if block_index == 0:
                expected_std = 1.0
            expected_std = (expected_std ** 2 + config.alpha ** 2) ** 0.5
    return blocks


def block_name(index):
    """haiku's naming of repeated modules: nf_block, nf_block_1, ..."""
    return "nf_block" if index == 0 else f"nf_block_{index}"


def _preprocessing(channels):
    if channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:  # no per-channel statistics: use the averaged ones on every channel
        mean = (sum(IMAGENET_MEAN) / 3,) * channels
        std = (sum(IMAGENET_STD) / 3,) * channels
    return keras.layers.Normalization(
        mean=list(mean), variance=[s * s for s in std], name="preprocessing")


def build_nfnet(config, *, include_top=True, input_tensor=None,
                input_shape=None, pooling=None, classes=1000,
                classifier_activation="softmax", include_preprocessing=True,
                drop_rate=None, stochdepth_rate=None, activation=None,
                seed=None, name="nfnet"):
    """Builds an NFNet `keras.Model` from an `NFNetConfig` (no weights).

    See `keras_nfnets.NFNet` for the arguments.
    """
    activation = activation or config.activation
    nf_layers.check_activation(activation)
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

    def act(name):
        return nf_layers.ScaledActivation(activation, name=name)

    stem = [(16, 2), (32, 1), (64, 1), (config.width[0] // 2, 2)]
    for i, (filters, stride) in enumerate(stem):
        x = nf_layers.WSConv2D(filters, 3, strides=stride,
                               name=f"stem_conv{i}")(x)
        if i < len(stem) - 1:
            x = act(f"stem_act{i}")(x)

    for i, block in enumerate(block_schedule(config, stochdepth_rate)):
        block.pop("stage")
        x = nf_layers.NFBlock(
            **block, se_ratio=config.se_ratio, alpha=config.alpha,
            activation=activation, use_two_convs=config.use_two_convs,
            seed=None if seed is None else seed + i, name=block_name(i))(x)

    final_ch = (int(config.final_conv_mult * config.width[-1])
                if config.final_conv_mult is not None else
                config.final_conv_ch)
    x = nf_layers.WSConv2D(final_ch, 1, name="final_conv")(x)
    x = act("final_act")(x)

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, seed=seed,
                                     name="top_dropout")(x)
        x = keras.layers.Dense(
            classes, activation=classifier_activation,
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
            name="linear")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    if input_tensor is not None:
        model_inputs = keras.utils.get_source_inputs(input_tensor)
    else:
        model_inputs = inputs
    return NFNetModel(model_inputs, x, name=name)
