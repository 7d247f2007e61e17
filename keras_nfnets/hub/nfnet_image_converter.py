"""`NFNetImageConverter`: each NFNet's evaluation preprocessing
(`keras_nfnets.NFNetImagePreprocessing`) as a KerasHub `ImageConverter`."""

import keras
import keras_hub

from keras_nfnets import preprocessing as nf_preprocessing
from keras_nfnets.hub.nfnet_backbone import NFNetBackbone


@keras.saving.register_keras_serializable(package="keras_nfnets")
class NFNetImageConverter(keras_hub.layers.ImageConverter):
    """Resizes and crops 0-255 RGB images as the model's authors evaluated
    it (see `keras_nfnets.NFNetImagePreprocessing`, whose arguments it
    takes); the backbone normalises inside, so no scale or offset.

    Args:
        image_size: the output `(height, width)` (square) or an int.
        mode, crop_padding, crop_pct, interpolation, antialias: as
            `keras_nfnets.NFNetImagePreprocessing`.

    Example:
    ```python
    converter = keras_nfnets.hub.NFNetImageConverter.for_variant("F0")
    converter(np.zeros((375, 500, 3), "uint8")).shape   # (256, 256, 3)
    ```
    """

    backbone_cls = NFNetBackbone

    def __init__(self, image_size=224, mode="resize_crop", crop_padding=32,
                 crop_pct=None, interpolation="bicubic", antialias=None,
                 **kwargs):
        kwargs.pop("scale", None)
        kwargs.pop("offset", None)
        if isinstance(image_size, (list, tuple)):
            if len(image_size) != 2 or image_size[0] != image_size[1]:
                raise ValueError(
                    "NFNetImageConverter crops square images: `image_size` "
                    f"must be an int or (size, size); got {image_size!r}.")
            image_size = image_size[0]
        super().__init__(image_size=None, interpolation=interpolation,
                         **kwargs)
        self.preprocessing = nf_preprocessing.NFNetImagePreprocessing(
            image_size, mode=mode, crop_padding=crop_padding,
            crop_pct=crop_pct, interpolation=interpolation,
            antialias=antialias, dtype=self.dtype_policy,
            name="nfnet_preprocessing")

    @classmethod
    def for_variant(cls, variant, size=None, **kwargs):
        """The converter of a variant's authors' evaluation (`"F0"`,
        `"ECA-L0"`, `"B1"`, a config), as
        `keras_nfnets.default_preprocessing`."""
        pre = nf_preprocessing.default_preprocessing(variant, size=size)
        options = pre.get_config()
        return cls(image_size=options["size"], mode=options["mode"],
                   crop_padding=options["crop_padding"],
                   crop_pct=options["crop_pct"],
                   interpolation=options["interpolation"],
                   antialias=options["antialias"], **kwargs)

    @property
    def image_size(self):
        pre = getattr(self, "preprocessing", None)
        return None if pre is None else (pre.size, pre.size)

    @image_size.setter
    def image_size(self, value):
        if value is not None and getattr(self, "preprocessing", None):
            raise AttributeError(
                "Set NFNetImageConverter's size at construction "
                "(`image_size=`); its crop depends on it.")

    def call(self, inputs):
        return self.preprocessing(inputs)

    def get_config(self):
        config = super().get_config()
        for key in ("scale", "offset", "crop_to_aspect_ratio",
                    "pad_to_aspect_ratio"):
            config.pop(key, None)
        pre = self.preprocessing
        config.update({
            "image_size": pre.size, "mode": pre.mode,
            "crop_padding": pre.crop_padding, "crop_pct": pre.crop_pct,
            "interpolation": pre.interpolation, "antialias": pre.antialias,
        })
        return config
