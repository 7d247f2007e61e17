"""keras_nfnets: DeepMind's NFNets for Keras 3."""

from keras_nfnets.applications import (NFNet, NFNetF0, NFNetF0Plus, NFNetF1,
                                       NFNetF1Plus, NFNetF2, NFNetF2Plus,
                                       NFNetF3, NFNetF3Plus, NFNetF4,
                                       NFNetF4Plus, NFNetF5, NFNetF5Plus,
                                       NFNetF6, NFNetF6Plus, NFNetF7,
                                       NFNetF7Plus)
from keras_nfnets.applications import (NFRegNet, NFRegNetB0, NFRegNetB1,
                                       NFRegNetB2, NFRegNetB3, NFRegNetB4,
                                       NFRegNetB5, NFRegNetB6, NFRegNetB7,
                                       NFRegNetB8, NFResNet, NFResNet50,
                                       NFResNet101, NFResNet152, NFResNet200,
                                       NFResNet288, NFResNet600)
from keras_nfnets.applications import (ECANFNetL0, ECANFNetL1, ECANFNetL2,
                                       ECANFNetL3, NFNetL0, NFRegNetB1Timm,
                                       NFResNet50Timm)
from keras_nfnets.layers import (NFBlock, ScaledActivation, SqueezeExcite,
                                 StochasticDepth, WSConv2D,
                                 set_grouped_conv_mode)
from keras_nfnets.runtime import set_elementwise_fusion
from keras_nfnets.layers import (EfficientChannelAttention,
                                 SymmetricMaxPooling2D)
from keras_nfnets.optim import (AGC, AdaptiveOptimizerWarning,
                                adaptive_clip_grads, unitwise_norm)
from keras_nfnets.memory import use_lean_cpu_allocator
from keras_nfnets.export import export_quantized, fold_weight_standardization
from keras_nfnets.features import pyramid_channels
from keras_nfnets.model import NFNetModel
from keras_nfnets.optim import (NFNetSGD, WarmupCosineDecay,
                                nfnet_optimizer)
from keras_nfnets.variants import NFNET_VARIANTS, NFNetConfig, get_config
from keras_nfnets.variants import (NF_REGNET_VARIANTS, NF_RESNET_VARIANTS,
                                   NFRegNetConfig, NFResNetConfig)
from keras_nfnets.weights import (CheckpointError, load_deepmind_checkpoint,
                                  load_timm_weights, load_weights)
from keras_nfnets.variants import NUMERICS, Numerics
from keras_nfnets.imagenet import (decode_predictions, preprocess_for_eval,
                                   preprocess_input)
from keras_nfnets.preprocessing import NFNetImagePreprocessing, default_preprocessing
from keras_nfnets.optim import (AGCMonitor, LayerDecay, SKIP_GAINS,
                                plot_clip_fraction)
from keras_nfnets.finetune import freeze_stages, unfreeze_stages

__version__ = "0.1.0"


def __getattr__(name):
    # The SPP functions are imported on first use, so that
    # `python -m keras_nfnets.spp` does not find the module already imported.
    if name in ("signal_propagation", "plot_signal_propagation"):
        from keras_nfnets import spp  # pylint: disable=import-outside-toplevel
        return getattr(spp, name)
    raise AttributeError(f"module 'keras_nfnets' has no attribute {name!r}")


def list_models(pattern=None, pretrained=False):
    """The names of the model constructors, as timm's and kimm's
    `list_models`.

    Args:
        pattern: a shell-style pattern (`fnmatch`, case-insensitive) the
            names must match, e.g. `"*ECA*"`.
        pretrained: only the constructors with published ImageNet weights
            (`weights="imagenet"`; the rows of `keras_nfnets.presets`).

    Returns:
        A sorted list of names of `keras_nfnets` constructors.

    Example:
    >>> keras_nfnets.list_models("ECA*", pretrained=True)
    ['ECANFNetL0', 'ECANFNetL1', 'ECANFNetL2']
    """
    # pylint: disable=import-outside-toplevel
    import fnmatch
    import re

    from keras_nfnets import applications as _applications
    from keras_nfnets import presets as _presets
    names = [name for name, value in vars(_applications).items()
             if callable(value) and getattr(value, "__name__", None) == name
             and re.fullmatch(r"(ECA)?NF(Net|ResNet|RegNet)[A-Z0-9]\w*",
                              name)]
    if pretrained:
        published = {row["constructor"] for row in _presets.PRESETS.values()}
        names = [name for name in names if name in published]
    if pattern is not None:
        names = [name for name in names
                 if fnmatch.fnmatch(name.lower(), pattern.lower())]
    return sorted(names)


def _register_with_keras_hub():
    """Makes `keras_hub.models.Backbone.from_preset(dir)` /
    `ImageClassifier.from_preset(dir)` know the NFNet classes after a plain
    `import keras_nfnets`, without importing keras_hub here.

    KerasHub resolves a preset's class by its registered Keras name only
    (`keras_hub/src/utils/preset_utils.py`, `check_config_class` calls
    `keras.saving.get_registered_object`; it imports no module, and Keras's
    own deserialization imports a config's `module` only for keras and
    keras_hub), so `keras_nfnets.hub` must be imported before the preset is
    read. When keras_hub is already imported that happens now; otherwise
    right after keras_hub's own import (a standard `sys.meta_path` finder
    that wraps keras_hub's loader once, then removes itself).
    """
    # pylint: disable=import-outside-toplevel
    import importlib
    import importlib.util
    import sys
    import warnings

    def register():
        try:
            importlib.import_module("keras_nfnets.hub")
        except Exception as e:  # pylint: disable=broad-except
            warnings.warn(
                f"keras_nfnets.hub could not be imported with the installed "
                f"keras_hub ({type(e).__name__}: {e}); KerasHub will not "
                "resolve NFNet presets.", stacklevel=2)

    if "keras_hub" in sys.modules:
        register()
        return

    class Loader:
        """keras_hub's own loader, then `register()`."""

        def __init__(self, loader):
            self._loader = loader

        def __getattr__(self, name):
            return getattr(self._loader, name)

        def create_module(self, spec):
            return self._loader.create_module(spec)

        def exec_module(self, module):
            self._loader.exec_module(module)
            register()

    class Finder:
        """Finds keras_hub as usual, once, and wraps its loader."""

        @staticmethod
        def find_spec(name, path=None, target=None):
            del path, target
            if name != "keras_hub":
                return None
            if FINDER in sys.meta_path:
                sys.meta_path.remove(FINDER)
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.loader is not None and hasattr(
                    spec.loader, "exec_module"):
                spec.loader = Loader(spec.loader)
            return spec

    FINDER = Finder()
    sys.meta_path.insert(0, FINDER)


_register_with_keras_hub()
