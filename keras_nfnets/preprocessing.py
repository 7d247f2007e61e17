"""Evaluation preprocessing as each family's authors ran it, as a Keras
layer that is saved with the model.

Three modes, from the authors' code:

- `"resize_crop"`: DeepMind's NFNet evaluation (`eval_preproc=
  'resize_crop_32'` in `nfnets/experiment_nfnets.py`, implemented by
  `_decode_and_resize_then_crop` in `nfnets/dataset.py`): resize the whole
  image, squashed, to `(size + crop_padding)` squared (bicubic, no
  antialias), then take the centred `size` x `size`.
- `"crop_resize"`: DeepMind's default (`_decode_and_center_crop`, then a
  bicubic resize): the centred crop of `size / (size + crop_padding)` of
  the shorter side, resized to `size` x `size`. Used for DeepMind's
  NF-ResNets and NF-RegNets.
- `"center"`: timm's evaluation transform (`transforms_factory.
  transforms_imagenet_eval`, `crop_mode='center'`): resize the shorter side
  to `floor(size / crop_pct)` keeping the aspect ratio (torchvision's
  `Resize(int)`), then `CenterCrop(size)`. timm runs it on PIL images,
  whose bicubic downsampling is antialiased, so this mode antialiases by
  default.

Inputs (`NFNetImagePreprocessing.__call__`): RGB images with values 0-255,
uint8 or float, channels last; one image `(H, W, C)` or `(H, W)`, a batch
`(N, H, W, C)`, or a list of images of different sizes (each processed,
then stacked). Grayscale (1 channel or 2-D) is repeated to RGB; RGBA drops
its alpha. Images smaller than the crop are upsampled by the resize.
Refused with a `ValueError` saying what was expected: uint16 and other
integer images with values outside 0-255, float images whose values all lie
in [0, 1] (scale them by 255 first), values outside 0-255, channels-first
arrays `(3, H, W)`, empty images and non-finite values.
"""

import math

import keras
import numpy as np
from keras import ops

MODES = ("resize_crop", "crop_resize", "center")
#: timm's `DEFAULT_CROP_PCT` (timm/data/constants.py).
TIMM_DEFAULT_CROP_PCT = 0.875


def _crop_window(mode, height, width, size, crop_padding, crop_pct):
    """`(resize_to, (top, left, crop_h, crop_w))` in integer pixels, as
    the authors' code computes them; `resize_to` is the size resized to
    before the crop (None for `"crop_resize"`, which crops first)."""
    if mode == "resize_crop":
        # dataset.py: crop_pct > 1 is a number of pad pixels.
        scale = (int(size + crop_padding) if crop_pct is None
                 else int(float(size) / crop_pct))
        offset = ((scale - size) + 1) // 2
        return (scale, scale), (offset, offset, size, size)
    if mode == "crop_resize":
        # dataset.py `_decode_and_center_crop`, float32 as in TensorFlow.
        pad = np.float32(size + crop_padding)
        scale = min(np.float32(height) / pad, np.float32(width) / pad)
        crop = max(int(np.float32(scale) * np.float32(size)), 1)
        top = ((height - crop) + 1) // 2
        left = ((width - crop) + 1) // 2
        return None, (top, left, crop, crop)
    # timm: scale_size = math.floor(img_size / crop_pct); torchvision
    # Resize(int) sets the shorter side and int(size * long / short).
    scale_size = math.floor(size / crop_pct)
    if width <= height:
        new_w, new_h = scale_size, int(scale_size * height / width)
    else:
        new_h, new_w = scale_size, int(scale_size * width / height)
    # torchvision center_crop: int(round((h - crop) / 2.0)).
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return (new_h, new_w), (top, left, size, size)


def _as_image_array(images):
    """Checks one concrete image or batch; returns float32 `(..., H, W, 3)`
    NumPy. Raises `ValueError` naming what was expected."""
    x = images if isinstance(images, np.ndarray) else ops.convert_to_numpy(
        images)
    x = np.asarray(x)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer)
                               or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(
            f"Expected RGB images as uint8 or float 0-255, got dtype "
            f"{x.dtype}.")
    if x.ndim == 2:
        x = x[..., None]  # one grayscale (H, W) image
    if x.ndim not in (3, 4):
        raise ValueError(
            "Expected one image (H, W, C) or (H, W), or a batch "
            f"(N, H, W, C), channels last; got shape {x.shape}.")
    channels = x.shape[-1]
    if channels not in (1, 3, 4):
        if x.shape[-3] in (1, 3, 4):
            raise ValueError(
                f"Got shape {x.shape}, which looks channels-first; expected "
                "channels last (H, W, C) or (N, H, W, C): transpose it, e.g. "
                "np.moveaxis(x, -3, -1).")
        raise ValueError(
            f"Expected 1 (grayscale), 3 (RGB) or 4 (RGBA) channels last; "
            f"got shape {x.shape}.")
    if x.shape[-3] == 0 or x.shape[-2] == 0:
        raise ValueError(f"Got an empty image, shape {x.shape}.")
    if x.size:
        low, high = x.min(), x.max()
        if np.issubdtype(x.dtype, np.integer):
            if low < 0 or high > 255:
                raise ValueError(
                    f"Expected uint8-range values 0-255; got {x.dtype} "
                    f"values in [{low}, {high}]. For uint16 images, convert "
                    "first (e.g. (x // 257).astype('uint8')).")
        else:
            if not np.isfinite(x).all():
                raise ValueError("Got non-finite values (NaN or inf).")
            if low < 0 or high > 255:
                raise ValueError(
                    f"Expected RGB values 0-255; got values in [{low}, "
                    f"{high}].")
            if high <= 1.0 and ((x > 0) & (x < 1)).any():
                raise ValueError(
                    "Expected RGB values 0-255; got floats all in [0, 1]. "
                    "Multiply by 255 first.")
    if channels == 1:
        x = np.repeat(x, 3, axis=-1)
    elif channels == 4:
        x = x[..., :3]
    return x.astype("float32")


@keras.saving.register_keras_serializable(package="keras_nfnets")
class NFNetImagePreprocessing(keras.layers.Layer):
    """Resizes and crops images for evaluation as a family's authors did.

    Args:
        size: output height and width (positive int).
        mode: `"resize_crop"` (DeepMind's NFNets), `"crop_resize"`
            (DeepMind's NF-ResNets and NF-RegNets) or `"center"` (timm's
            models). See the module docstring.
        crop_padding: pixels added to `size` (DeepMind's `crop_pct=32`)
            in the DeepMind modes.
        crop_pct: timm's crop fraction (`"center"`; required there), or
            instead of `crop_padding` in `"resize_crop"`.
        interpolation: `"bicubic"` (the authors'), `"bilinear"` or
            `"nearest"`.
        antialias: antialias when downsampling; default False for
            DeepMind's modes (TensorFlow's resize), True for `"center"`
            (timm's PIL resize).
        mean, std: per-channel normalisation on the 0-255 scale, or None
            (the package's models normalise inside).

    Output: float32 `(N, size, size, 3)` (or `(size, size, 3)` for one
    image), not clipped (bicubic overshoots, as in the authors' code).

    Example:
    >>> layer = NFNetImagePreprocessing(256, mode="resize_crop")
    >>> tuple(layer(np.zeros((375, 500, 3), "uint8")).shape)
    (256, 256, 3)
    >>> NFNetImagePreprocessing.from_config(layer.get_config()).mode
    'resize_crop'
    """

    def __init__(self, size, mode="resize_crop", crop_padding=32,
                 crop_pct=None, interpolation="bicubic", antialias=None,
                 mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) \
                or size <= 0:
            raise ValueError(f"`size` must be a positive int; got {size!r}.")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
        if crop_pct is not None and not 0 < crop_pct <= (
                math.inf if mode == "resize_crop" else 1.0):
            raise ValueError(
                f"`crop_pct` must be in (0, 1]; got {crop_pct!r}.")
        if mode == "center" and crop_pct is None:
            raise ValueError('mode="center" needs `crop_pct` (timm\'s).')
        if crop_padding < 0:
            raise ValueError(
                f"`crop_padding` must be >= 0; got {crop_padding!r}.")
        if interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(
                "`interpolation` must be 'bicubic', 'bilinear' or "
                f"'nearest'; got {interpolation!r}.")
        if (mean is None) != (std is None):
            raise ValueError("Give both `mean` and `std`, or neither.")
        self.size = int(size)
        self.mode = mode
        self.crop_padding = int(crop_padding)
        self.crop_pct = None if crop_pct is None else float(crop_pct)
        self.interpolation = interpolation
        self.antialias = (mode == "center" if antialias is None
                          else bool(antialias))
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        if self.mean is not None and (len(self.mean) != 3
                                      or len(self.std) != 3):
            raise ValueError("`mean` and `std` need 3 values (RGB).")

    def __call__(self, images, *args, **kwargs):
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("Got an empty list of images.")
            outs = []
            for image in images:
                image = _as_image_array(image)
                if image.ndim != 3:
                    raise ValueError(
                        "A list must hold single images (H, W, C) or "
                        f"(H, W); got one of shape {image.shape}.")
                outs.append(super().__call__(image, *args, **kwargs))
            return ops.stack(outs)
        if not isinstance(images, keras.KerasTensor):
            try:
                images = _as_image_array(images)
            except (TypeError, NotImplementedError, AttributeError):
                pass  # a traced tensor: checked by shape in call()
        return super().__call__(images, *args, **kwargs)

    def call(self, images):
        x = ops.cast(images, "float32")
        single = len(x.shape) == 3
        if single:
            x = x[None]
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        if height is None or width is None:
            raise ValueError(
                "NFNetImagePreprocessing needs static image height and "
                f"width; got shape {tuple(x.shape)}.")
        if channels == 1:
            x = ops.concatenate([x, x, x], axis=-1)
        elif channels == 4:
            x = x[..., :3]
        elif channels != 3:
            raise ValueError(
                f"Expected 1, 3 or 4 channels last; got shape "
                f"{tuple(x.shape)}.")
        resize_to, (top, left, crop_h, crop_w) = _crop_window(
            self.mode, height, width, self.size, self.crop_padding,
            self.crop_pct)
        if self.mode == "crop_resize":
            x = x[:, top:top + crop_h, left:left + crop_w, :]
            x = self._resize(x, (self.size, self.size))
        else:
            x = self._resize(x, resize_to)
            x = x[:, top:top + crop_h, left:left + crop_w, :]
        if self.mean is not None:
            x = (x - np.array(self.mean, "float32")) / np.array(
                self.std, "float32")
        return x[0] if single else x

    def _resize(self, x, shape):
        if tuple(x.shape[1:3]) == tuple(shape):
            return x  # as TensorFlow, PIL and torchvision at equal size
        return ops.image.resize(x, shape, interpolation=self.interpolation,
                                antialias=self.antialias,
                                data_format="channels_last")

    def compute_output_shape(self, input_shape):
        lead = tuple(input_shape[:-3])
        return lead + (self.size, self.size, 3)

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, mode=self.mode,
                      crop_padding=self.crop_padding, crop_pct=self.crop_pct,
                      interpolation=self.interpolation,
                      antialias=self.antialias, mean=self.mean, std=self.std)
        return config


#: `presets.py`'s `crop` names to this layer's modes.
_CROP_MODES = {"resize_crop": "resize_crop", "crop_resize": "crop_resize",
               "center": "center"}


def _layer_kwargs(row, test_size):
    """`NFNetImagePreprocessing` arguments from a `presets.py` row (or a
    row-like dict `{"crop", "test_size", ...}`)."""
    crop = row["crop"]
    padding = 32  # DeepMind's `crop_pct=32` in dataset.py (crop_resize too)
    if crop.startswith("resize_crop_"):  # "resize_crop_32": the padding
        crop, padding = "resize_crop", int(crop[len("resize_crop_"):])
    mode = _CROP_MODES[crop]
    crop_pct = None
    if mode == "center":
        crop_pct = row.get("test_crop_pct", row.get("crop_fraction"))
    return dict(size=test_size, mode=mode, crop_padding=padding,
                crop_pct=crop_pct,
                interpolation=row.get("interpolation", "bicubic"))


def _preset_row(variant):
    """The `presets.py` row (published, or `UNPUBLISHED`) named by a
    variant, constructor or timm name (`dm_nfnet_f0` too); None if none."""
    from keras_nfnets import presets  # pylint: disable=import-outside-toplevel
    rows = {**presets.UNPUBLISHED, **presets.PRESETS}
    for key, row in rows.items():
        if variant in (key, row["constructor"], row.get("timm_name")):
            return row
    timm = presets.TIMM_ARCHITECTURES.get(variant)
    if timm is not None:  # dm_nfnet_f*: DeepMind's weights, DeepMind's crop
        for row in rows.values():
            if row["constructor"] == timm[0]:
                return row
    return None


def _variant_name(config):
    """The variant table's name of a config, or None for a custom one."""
    from keras_nfnets import variants  # pylint: disable=import-outside-toplevel
    for table in (variants.NFNET_VARIANTS, variants.NF_RESNET_VARIANTS,
                  variants.NF_REGNET_VARIANTS):
        for name, known in table.items():
            if known == config:
                return name
    return None


def _eval_settings(variant):
    """`NFNetImagePreprocessing` keyword arguments (size, mode,
    crop_padding, crop_pct, interpolation) for a variant, read from the one
    table of published files, `presets.PRESETS` (and `UNPUBLISHED`).
    Architectures without a row take their family's authors' crop
    (`presets.DEEPMIND_EVAL_CROP`; timm's numerics: timm's default
    `crop_pct`) at the variant table's test size."""
    from keras_nfnets import presets  # pylint: disable=import-outside-toplevel
    from keras_nfnets import variants  # pylint: disable=import-outside-toplevel
    configs = (variants.NFNetConfig, variants.NFResNetConfig,
               variants.NFRegNetConfig)
    config = None
    if isinstance(variant, configs):
        config, variant = variant, _variant_name(variant)
    elif not isinstance(variant, str):
        raise TypeError(
            "Expected a variant name, constructor name, timm name or an "
            f"NFNet/NFResNet/NFRegNet config; got {type(variant)}.")
    if variant is not None:
        row = _preset_row(variant)
        if row is not None:
            return _layer_kwargs(row, row["test_size"])
    if config is None:
        config = _config_named(variant)
    if config.numerics == "timm":
        row = dict(crop="center", crop_fraction=TIMM_DEFAULT_CROP_PCT)
    else:
        family = {variants.NFNetConfig: "NFNet",
                  variants.NFResNetConfig: "NFResNet",
                  variants.NFRegNetConfig: "NFRegNet"}[type(config)]
        row = dict(crop=presets.DEEPMIND_EVAL_CROP[family])
    return _layer_kwargs(row, config.test_imsize)


def _config_named(variant):
    """The config of a variant or constructor name; a `ValueError` naming
    what is expected otherwise."""
    from keras_nfnets import variants  # pylint: disable=import-outside-toplevel
    name = variant
    for prefix in ("NFNet", "NFResNet", "NFRegNet"):
        if name.startswith(prefix) and name != prefix:
            name = name[len(prefix):].replace("Plus", "+")
            name = "ResNet" + name if prefix == "NFResNet" else name
            break
    for table in (variants.NF_RESNET_VARIANTS, variants.NF_REGNET_VARIANTS):
        if name in table:
            return table[name]
    try:
        return variants.get_config(name)
    except ValueError:
        raise ValueError(
            f"Unknown variant {variant!r}: expected a variant name ('F0', "
            "'ECA-L0', 'ResNet50', 'B0'), a constructor name ('NFNetF0') "
            "or a timm name ('eca_nfnet_l0').") from None


def default_preprocessing(variant, size=None):
    """The evaluation preprocessing a variant's authors ran.

    NFNets F0-F7 and `+` (DeepMind): `"resize_crop"`, padding 32, at the
    variant's test size. DeepMind's NF-ResNets and NF-RegNets:
    `"crop_resize"`. timm's models (L-family, ResNet50-timm, B1-timm):
    `"center"` with timm's `test_crop_pct` at its `test_input_size`.

    Args:
        variant: a variant name (`"F0"`, `"ECA-L0"`, `"B1"`), constructor
            name (`"NFNetF0"`), timm name (`"eca_nfnet_l0"`) or a config.
        size: override the evaluation size.

    Example:
    >>> default_preprocessing("F0").get_config()["mode"]
    'resize_crop'
    >>> default_preprocessing("ECANFNetL0").size
    288
    """
    kwargs = _eval_settings(variant)
    if size is not None:
        kwargs["size"] = size
    return NFNetImagePreprocessing(**kwargs)
