"""NFNets inside KerasHub: `NFNetBackbone`, `NFNetImageClassifier`, their
preprocessing and presets (the `[hub]` extra: keras-hub, huggingface_hub).

Importing this package registers the classes with Keras's serialization,
so `keras_hub.models.Backbone.from_preset(dir)` and
`keras_hub.models.ImageClassifier.from_preset(dir)` resolve a saved NFNet
preset to these classes. `import keras_nfnets` imports it by itself once
keras_hub is imported (never keras_hub itself).

Example:
```python
import keras_hub
import keras_nfnets.hub
classifier = keras_nfnets.hub.NFNetImageClassifier.from_preset(
    "nfnet_f0_imagenet")
classifier.save_to_preset("my_nfnet")          # a KerasHub preset directory
same = keras_hub.models.ImageClassifier.from_preset("my_nfnet")
```
"""

from keras_nfnets import optional as _optional

_optional.require("keras_hub", "keras_nfnets.hub (NFNets in KerasHub)")

# pylint: disable=wrong-import-position
from keras_nfnets.hub.nfnet_backbone import NFNetBackbone
from keras_nfnets.hub.nfnet_image_converter import NFNetImageConverter
from keras_nfnets.hub.nfnet_image_classifier_preprocessor import (
    NFNetImageClassifierPreprocessor)
from keras_nfnets.hub.nfnet_image_classifier import NFNetImageClassifier
from keras_nfnets.hub.nfnet_presets import (backbone_presets, preset_dir,
                                            preset_variant)

__all__ = ["NFNetBackbone", "NFNetImageClassifier",
           "NFNetImageClassifierPreprocessor", "NFNetImageConverter",
           "backbone_presets", "preset_dir", "preset_variant"]
