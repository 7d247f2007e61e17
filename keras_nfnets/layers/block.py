"""The normalizer-free residual block (Brock et al. 2021, figure 6), built
from a `BlockSpec`.

A `BlockSpec` (frozen) says what kind of block it is: the family switches
(attention, its position, shortcut, group width, bottleneck expansion, two
grouped convolutions or one) and the numerics (options of every `WSConv2D`
and of the scaled activation). `NFBlock(in_channels, out_channels, spec,
strides, beta, stochdepth_rate)` places one such block in a network;
`remat` and `seed` are how it runs. `builder.block_spec(config)` derives the
spec of every family from its variant config.

`NFBlock` still accepts the spec's fields as keywords (the previous form,
`NFBlock(64, 128, group_width=8, ...)`), and `from_config` reads both the
new config (`{"spec": {...}, ...}`) and the previous flat one, so `.keras`
files saved by earlier versions load.
"""

import dataclasses
from typing import Optional

import keras
from keras import ops

from keras_nfnets import runtime
from keras_nfnets.layers.activations import check_activation, scaled_activation
from keras_nfnets.layers.attention import (EfficientChannelAttention,
                                           SqueezeExcite)
from keras_nfnets.layers.stochastic_depth import StochasticDepth
from keras_nfnets.layers.ws_conv import WSConv2D
from keras_nfnets.variants import make_divisible

_PACKAGE = "keras_nfnets"


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """What kind of normalizer-free block: everything but its place.

    Defaults are NFNet's block (DeepMind). Fields:

    * `expansion`, `big_width`: the bottleneck width is
      `int((out if big_width else in) * expansion)`, rounded down to a
      multiple of `group_width` (`None`: dense convolutions, no rounding).
    * `width_divisor`: timm's rounding (`make_divisible`, then to the group
      width) instead.
    * `kernel_size`, `use_two_convs`: the grouped kxk convolutions
      (`conv1`, and `conv1b` when two).
    * `attention` (`"se"` or `"eca"`), `se_position` (`"output"`: NFNet,
      `"bottleneck"`: NF-RegNet, `None`: none, NF-ResNet), `se_ratio`,
      `se_divisor` (timm's rounding of the SE hidden width).
    * `strided_shortcut`: NF-ResNet's strided 1x1 projection instead of a
      2x2 average pool then the projection.
    * `alpha`: the residual branch's scale; `skip_gain`: a learnable
      scalar (initialised to 0) on the branch.
    * `activation`, `conv_options`, `activation_options`: the nonlinearity
      and the numerics (keyword arguments of every `WSConv2D` and of
      `scaled_activation`; see `keras_nfnets.variants.Numerics`).

    Example:
    >>> spec = BlockSpec(group_width=8, alpha=0.2)
    >>> block = NFBlock(16, 32, spec, strides=2, name="nf_block")
    """

    expansion: float = 0.5
    big_width: bool = True
    group_width: Optional[int] = 128
    width_divisor: Optional[int] = None
    kernel_size: int = 3
    use_two_convs: bool = True
    attention: str = "se"
    se_position: Optional[str] = "output"
    se_ratio: float = 0.5
    se_divisor: Optional[int] = None
    strided_shortcut: bool = False
    alpha: float = 0.2
    skip_gain: bool = True
    activation: str = "gelu"
    conv_options: dict = dataclasses.field(default_factory=dict)
    activation_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.attention not in ("se", "eca"):
            raise ValueError(
                f"attention must be 'se' or 'eca', got {self.attention!r}")
        if self.se_position not in ("output", "bottleneck", None):
            raise ValueError(
                f"se_position must be 'output', 'bottleneck' or None, got "
                f"{self.se_position!r}")
        check_activation(self.activation)
        for name in ("conv_options", "activation_options"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise TypeError(f"BlockSpec.{name} must be a dict, got "
                                f"{type(value).__name__}")
        object.__setattr__(self, "strided_shortcut",
                           bool(self.strided_shortcut))
        object.__setattr__(self, "skip_gain", bool(self.skip_gain))

    @classmethod
    def fields(cls):
        """The spec's field names."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_config(self):
        """A JSON-ready dict (`BlockSpec(**spec.to_config()) == spec`)."""
        return {name: (dict(v) if isinstance(v, dict) else v)
                for name, v in ((n, getattr(self, n)) for n in self.fields())}


def bottleneck(spec, in_channels, out_channels):
    """`(width, groups)` of the block's grouped convolutions.

    Example:
    >>> bottleneck(BlockSpec(group_width=8), 16, 24)
    (8, 1)
    """
    base = (out_channels if spec.big_width else in_channels) * spec.expansion
    group_width = spec.group_width
    if spec.width_divisor:  # timm: rounded, then a multiple of the groups
        width = make_divisible(base, spec.width_divisor)
        groups = 1 if group_width is None else width // group_width
        if group_width and group_width % spec.width_divisor == 0:
            width = group_width * groups
    elif group_width is None:  # dense convolutions, width as computed
        return int(base), 1
    else:
        groups = int(base) // group_width
        width = group_width * groups
    if groups < 1:
        raise ValueError(
            f"bottleneck width {int(base)} is smaller than group_width "
            f"{group_width} (in_channels={in_channels}, "
            f"out_channels={out_channels}, expansion={spec.expansion}).")
    return width, groups


_PLACEMENT = ("in_channels", "out_channels", "strides", "beta",
              "stochdepth_rate", "seed", "remat")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NFBlock(keras.layers.Layer):
    """One normalizer-free residual block (DeepMind's `nfnet.NFBlock`).

        out = act(x) * beta
        shortcut = [avgpool 2x2 if strided] -> [1x1 WSConv if projecting] or x
        out = conv0 1x1 -> act -> conv1 grouped kxk (stride) -> act
              -> [conv1b grouped kxk -> act] -> conv2 1x1
        out = 2 * se(out) * out -> stochastic depth -> * skip_gain
        return out * alpha + shortcut

    The block's sub-layers are named as DeepMind's haiku modules (`conv0`,
    `conv1`, `conv1b`, `conv2`, `conv_shortcut`, `squeeze_excite` or
    `eca`), and `skip_gain` (a scalar, initialised to 0) is the block's own
    weight, so weight paths read `nf_block_3/conv1b/kernel` for haiku's
    `nf_block_3/~/conv1b` `w`.

    `call` returns the block output; `call_with_metrics` also returns the
    residual branch's average channel variance (for signal propagation).

    Args:
        in_channels, out_channels: the block's input and output channels.
        spec: a `BlockSpec` (default: NFNet's block). Its fields may be
            given as keywords instead (the previous form).
        strides: the stride of `conv1` (and of the shortcut).
        beta: the input scale, `1 / expected std` of the block's input.
        stochdepth_rate: the probability of dropping the residual branch
            (None or 0: never).
        seed: the stochastic-depth seed.
        remat: recompute the block in the backward pass: True, False or
            "auto" (see `keras_nfnets.runtime.resolve_remat`).

    The spec's fields read as attributes (`block.group_width`,
    `block.attention`, ...).

    Example:
    >>> spec = BlockSpec(expansion=0.25, group_width=None,
    ...                  use_two_convs=False, se_position=None,
    ...                  strided_shortcut=True, activation="relu")  # NF-ResNet
    >>> block = NFBlock(64, 256, spec, strides=2, name="nf_res_block")
    >>> y = block(keras.random.normal((1, 16, 16, 64)))  # (1, 8, 8, 256)
    """

    def __init__(self, in_channels, out_channels, spec=None, strides=1,
                 beta=1.0, stochdepth_rate=None, seed=None, remat=False,
                 **kwargs):
        legacy = {k: kwargs.pop(k) for k in BlockSpec.fields() if k in kwargs}
        if isinstance(spec, dict):
            spec = BlockSpec(**spec)
        if spec is None:
            spec = BlockSpec(**legacy)
        elif legacy:
            raise TypeError(
                f"NFBlock got both a spec and the spec fields {sorted(legacy)}"
                "; give one of them.")
        elif not isinstance(spec, BlockSpec):
            raise TypeError(
                f"NFBlock spec must be a BlockSpec, got {type(spec).__name__}")
        super().__init__(**kwargs)
        self.spec = spec
        self.remat = runtime.check_remat(remat)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.strides, self.beta = strides, beta
        self.stochdepth_rate, self.seed = stochdepth_rate, seed
        self.use_skip_gain = spec.skip_gain
        self._act = scaled_activation(spec.activation,
                                      **spec.activation_options)
        try:
            self.width, self.groups = bottleneck(spec, in_channels,
                                                 out_channels)
        except ValueError as err:
            raise ValueError(f"Block {self.name}: {err}") from None
        policy = self.dtype_policy

        def conv(filters, k, name, strides=1, groups=1):
            return WSConv2D(filters, k, strides=strides, groups=groups,
                            data_format="channels_last", name=name,
                            dtype=policy, **spec.conv_options)

        self.conv0 = conv(self.width, 1, "conv0")
        self.conv1 = conv(self.width, spec.kernel_size, "conv1",
                          strides=strides, groups=self.groups)
        self.conv1b = (conv(self.width, spec.kernel_size, "conv1b",
                            groups=self.groups)
                       if spec.use_two_convs else None)
        self.conv2 = conv(out_channels, 1, "conv2")
        self.use_projection = strides > 1 or in_channels != out_channels
        self.conv_shortcut = (
            conv(out_channels, 1, "conv_shortcut",
                 strides=strides if spec.strided_shortcut else 1)
            if self.use_projection else None)
        self.se = self._attention(policy)
        self.has_stochdepth = (stochdepth_rate is not None
                               and 0.0 < stochdepth_rate < 1.0)
        self.stoch_depth = (StochasticDepth(stochdepth_rate, seed=seed,
                                            name="stoch_depth", dtype=policy)
                            if self.has_stochdepth else None)
        if not self.trainable:  # a frozen block loaded from its config:
            for sub in (self.conv0, self.conv1, self.conv1b, self.conv2,
                        self.conv_shortcut, self.se, self.stoch_depth):
                if sub is not None:  # its sublayers, made above, too
                    sub.trainable = False

    def _attention(self, policy):
        spec = self.spec
        if spec.se_position is None:
            return None
        channels = (self.width if spec.se_position == "bottleneck"
                    else self.out_channels)
        if spec.attention == "eca":
            return EfficientChannelAttention(channels, name="eca",
                                             dtype=policy)
        hidden = (make_divisible(channels * spec.se_ratio, spec.se_divisor,
                                 round_limit=0.0)
                  if spec.se_divisor else None)
        return SqueezeExcite(channels, channels, spec.se_ratio,
                             hidden_channels=hidden, name="squeeze_excite",
                             dtype=policy)

    def named_sublayers(self):
        """The sub-layers that own weights, by haiku module name."""
        subs = {"conv0": self.conv0, "conv1": self.conv1,
                "conv1b": self.conv1b, "conv2": self.conv2,
                "conv_shortcut": self.conv_shortcut,
                ("eca" if self.spec.attention == "eca" else "squeeze_excite"):
                self.se}
        return {k: v for k, v in subs.items() if v is not None}

    def kept_activations(self, height, width, remat=False):
        """Elements per example this block keeps for the backward pass of
        a training step, on a `height` x `width` input: with `remat`, its
        input only; without, also what its ops keep (each activation's and
        convolution's input, the branch output and its scaled copies). An
        estimate, used by `remat="auto"` (`keras_nfnets.runtime`).

        Example:
        >>> block.kept_activations(48, 48) > block.kept_activations(
        ...     48, 48, remat=True)
        True
        """
        x = height * width * self.in_channels
        if remat:
            return x
        oh, ow = -(-height // self.strides), -(-width // self.strides)
        wide = height * width * self.width          # conv0's output
        mid = oh * ow * self.width                  # conv1 (and conv1b)
        out = oh * ow * self.out_channels
        kept = 2 * x + 2 * wide + 2 * mid + 3 * out
        if self.conv1b is not None:
            kept += 2 * mid
        if self.conv_shortcut is not None:
            kept += out
        return kept

    def build(self, input_shape):
        n, h, w, _ = input_shape
        self.conv0.build(input_shape)
        self.conv1.build((n, h, w, self.width))
        oh = None if h is None else -(-h // self.strides)
        ow = None if w is None else -(-w // self.strides)
        if self.conv1b is not None:
            self.conv1b.build((n, oh, ow, self.width))
        self.conv2.build((n, oh, ow, self.width))
        if self.conv_shortcut is not None:
            self.conv_shortcut.build(
                input_shape if self.spec.strided_shortcut
                else (n, oh, ow, self.in_channels))
        if self.se is not None:
            self.se.build((n, oh, ow, self.se.in_channels))
        if self.stoch_depth is not None:
            self.stoch_depth.build((n, oh, ow, self.out_channels))
        if self.use_skip_gain:
            self.skip_gain = self.add_weight(
                name="skip_gain", shape=(), initializer="zeros",
                trainable=True)

    def _residual_branch(self, out):
        """conv0 -> act -> conv1 -> [SE] -> act -> conv1b -> act -> conv2
        -> [SE]: deterministic, so it can be recomputed (remat)."""
        se_position = self.spec.se_position
        out = self.conv0(out)
        out = self.conv1(self._act(out))
        if se_position == "bottleneck":
            out = (self.se(out) * 2.0) * out
        if self.conv1b is not None:
            out = self.conv1b(self._act(out))
        out = self.conv2(self._act(out))
        if se_position == "output":
            out = (self.se(out) * 2.0) * out
        return out

    def call_with_metrics(self, x, training=False, return_metrics=True):
        """Returns `(output, res_avg_var)`: the block output, and the
        residual branch's average channel variance before stochastic depth
        and skip gain (None when `return_metrics=False`)."""
        mask = None
        if self.stoch_depth is not None:
            # Drawn outside the recomputed function, so recomputation in the
            # backward pass cannot change it.
            mask = self.stoch_depth.draw_mask(x, training)
        if not return_metrics and runtime.resolve_remat(self.remat):
            # The whole block is recomputed in the backward pass: only its
            # input (and the stochastic-depth mask) is kept, not act(x), the
            # branch's activations, its output or its standardized kernels.
            masks = () if mask is None else (mask,)
            return keras.remat(self._block)(x, *masks), None
        metrics = [] if return_metrics else None
        out = self._block(x, mask, metrics)
        return out, (metrics[0] if metrics else None)

    def _block(self, x, mask=None, metrics=None):
        out = self._act(x) * ops.cast(self.beta, x.dtype)
        shortcut = out
        if self.strides > 1 and not self.spec.strided_shortcut:
            shortcut = ops.average_pool(shortcut, pool_size=2, strides=2,
                                        padding="same",
                                        data_format="channels_last")
        if self.use_projection:
            shortcut = self.conv_shortcut(shortcut)
        else:
            shortcut = x
        out = self._residual_branch(out)
        if metrics is not None:
            metrics.append(ops.mean(ops.var(ops.cast(out, "float32"),
                                            axis=(0, 1, 2))))
        if mask is not None:
            out = self.stoch_depth.apply_mask(out, mask)
        if self.use_skip_gain:
            out = out * ops.cast(self.skip_gain, out.dtype)
        return out * ops.cast(self.spec.alpha, out.dtype) + shortcut

    def call(self, x, training=False):
        return self.call_with_metrics(x, training=training,
                                      return_metrics=False)[0]

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        oh = None if h is None else -(-h // self.strides)
        ow = None if w is None else -(-w // self.strides)
        return (n, oh, ow, self.out_channels)

    def get_config(self):
        return {**super().get_config(),
                "in_channels": self.in_channels,
                "out_channels": self.out_channels,
                "spec": self.spec.to_config(),
                "strides": self.strides, "beta": self.beta,
                "stochdepth_rate": self.stochdepth_rate, "seed": self.seed,
                "remat": self.remat}

    @classmethod
    def from_config(cls, config):
        """Reads this version's config and the previous flat one (the spec's
        fields as top-level keys), so older `.keras` files load."""
        config = dict(config)
        if isinstance(config.get("spec"), dict):
            config["spec"] = BlockSpec(**config["spec"])
        return cls(**config)


def _spec_property(name):
    return property(lambda self: getattr(self.spec, name),
                    doc=f"`BlockSpec.{name}` of this block.")


for _name in BlockSpec.fields():
    if _name != "skip_gain":  # the block's weight of that name
        setattr(NFBlock, _name, _spec_property(_name))
