"""`NFNetImageClassifierPreprocessor`: KerasHub's image-classifier
preprocessor with the NFNet's evaluation preprocessing."""

import keras
import keras_hub

from keras_nfnets.hub.nfnet_backbone import NFNetBackbone
from keras_nfnets.hub.nfnet_image_converter import NFNetImageConverter


@keras.saving.register_keras_serializable(package="keras_nfnets")
class NFNetImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """`keras_hub.models.ImageClassifierPreprocessor` whose
    `image_converter` is an `NFNetImageConverter`.

    Example:
    ```python
    preprocessor = keras_nfnets.hub.NFNetImageClassifierPreprocessor(
        keras_nfnets.hub.NFNetImageConverter.for_variant("ECA-L0"))
    x = preprocessor(np.zeros((1, 320, 400, 3), "uint8"))  # (1, 288, 288, 3)
    ```
    """

    backbone_cls = NFNetBackbone
    image_converter_cls = NFNetImageConverter
