"""`NFNetImageClassifier`: KerasHub's `ImageClassifier` over an
`NFNetBackbone`, compiled by default with the family's recipe and AGC."""

import keras
import keras_hub

from keras_nfnets.hub.nfnet_backbone import NFNetBackbone
from keras_nfnets.hub.nfnet_image_classifier_preprocessor import (
    NFNetImageClassifierPreprocessor)
from keras_nfnets import model as nf_model
from keras_nfnets.optim import agc as nf_agc
from keras_nfnets.optim import recipe

#: KerasHub's classifier layer (`keras_hub.models.ImageClassifier.output_dense`), whose
#: kernel AGC leaves alone as DeepMind left its `linear/w`.
HEAD_LAYER = "predictions"


@keras.saving.register_keras_serializable(package="keras_nfnets")
class NFNetImageClassifier(keras_hub.models.ImageClassifier):
    """An NFNet image classifier in KerasHub's form (pooling, dropout and
    the `predictions` dense layer over `NFNetBackbone`).

    `compile()` defaults to DeepMind's recipe instead of KerasHub's
    `Adam(5e-5)`: `keras_nfnets.NFNetSGD` (Nesterov momentum 0.9, weight
    decay 2e-5 off gains and biases, learning rate 0.1) inside
    adaptive gradient clipping at the family's threshold (0.01 for NFNets;
    NF-ResNets and NF-RegNets train without AGC), the classifier kernel
    excluded.

    Example:
    ```python
    backbone = keras_nfnets.hub.NFNetBackbone("F0")
    classifier = keras_nfnets.hub.NFNetImageClassifier(
        backbone, num_classes=10,
        preprocessor=keras_nfnets.hub.NFNetImageClassifierPreprocessor(
            keras_nfnets.hub.NFNetImageConverter.for_variant("F0")))
    classifier.compile()          # NFNetSGD inside AGC(0.01)
    classifier.fit(images, labels)
    ```
    """

    backbone_cls = NFNetBackbone
    preprocessor_cls = NFNetImageClassifierPreprocessor

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto",
                agc_clipping="default", agc_eps=1e-3, agc_exclude=None,
                **kwargs):
        """`keras_hub.models.ImageClassifier.compile` with the NFNet recipe as `"auto"`.

        Args:
            optimizer: `"auto"` (`NFNetSGD()`, DeepMind's recipe without
                its schedule; give `keras_nfnets.nfnet_optimizer(...)` for
                the full one) or any optimizer.
            agc_clipping: the AGC threshold; `"default"`: the backbone
                family's; None: no AGC.
            agc_eps: the unit-wise norm floor.
            agc_exclude: variable paths or layer names not clipped
                (default: the `predictions` kernel).
            loss, metrics, **kwargs: as `keras_hub.models.ImageClassifier.compile`.
        """
        if isinstance(optimizer, str) and optimizer == "auto":
            optimizer = recipe.NFNetSGD()
        if agc_clipping == "default":
            agc_clipping = getattr(self.backbone, "default_agc_clipping",
                                   nf_agc.DEFAULT_CLIPPING)
        optimizer = keras.optimizers.get(optimizer)
        if agc_clipping and not isinstance(optimizer, nf_agc.AGC):
            if agc_exclude is None:
                agc_exclude = (self.output_dense.kernel.path,)
            optimizer = nf_agc.AGC(optimizer, clipping=agc_clipping,
                                   eps=agc_eps, exclude=agc_exclude)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        **kwargs)

    def make_train_function(self, force=False):
        nf_model.build_optimizer_first(self)
        return super().make_train_function(force=force)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """`keras_hub.models.ImageClassifier.from_preset`, plus the names
        of `keras_nfnets.hub.backbone_presets` (`"nfnet_f0_imagenet"`):
        built from the original verified file on first use and cached."""
        from keras_nfnets.hub import nfnet_presets  # pylint: disable=import-outside-toplevel
        preset = nfnet_presets.resolve(preset)
        return super().from_preset(preset, load_weights=load_weights,
                                   **kwargs)
