"""Weight files into models: one flow, one dispatcher, one error hierarchy.

    file or "imagenet" -> download.py (fetch, lock, verify, cache)
        -> the format's reader: deepmind.py (restricted unpickler),
           timm.py (safetensors), keras_files.py (.weights.h5, .keras)
        -> load.py: load_weights(model, weights), the one dispatcher:
           name rule, structure check once (walk.py), assign.

Errors: `errors.py` (`CheckpointError` and its subclasses). The converter
CLI: `python -m keras_nfnets.weights SRC DST` (`__main__.py`).

Example:
>>> from keras_nfnets.weights import load_weights
>>> load_weights(model, "F0_haiku.npz")
"""

from keras_nfnets.weights.errors import (CheckpointError,
                                         CorruptCheckpointError,
                                         DownloadError, MissingTensorError,
                                         NonFiniteWeightsError,
                                         TensorShapeError,
                                         TruncatedCheckpointError,
                                         UnexpectedTensorError,
                                         WeightsHashError,
                                         WrongArchitectureError,
                                         WrongVariantError)
from keras_nfnets.weights.deepmind import (assign_deepmind_weights,
                                           haiku_module_name,
                                           is_deepmind_checkpoint,
                                           keras_to_deepmind,
                                           load_deepmind_checkpoint,
                                           named_modules, own_weights)
from keras_nfnets.weights.timm import is_safetensors, read_safetensors
from keras_nfnets.weights.walk import LoadStats
from keras_nfnets.weights.load import (check_available, fetch_and_load,
                                       load_timm_weights, load_weights)

__all__ = [
    "CheckpointError", "CorruptCheckpointError", "DownloadError",
    "LoadStats", "MissingTensorError", "NonFiniteWeightsError",
    "TensorShapeError", "TruncatedCheckpointError", "UnexpectedTensorError",
    "WeightsHashError", "WrongArchitectureError", "WrongVariantError",
    "assign_deepmind_weights", "check_available", "fetch_and_load",
    "haiku_module_name", "is_deepmind_checkpoint", "is_safetensors",
    "keras_to_deepmind", "load_deepmind_checkpoint", "load_timm_weights",
    "load_weights", "named_modules", "own_weights", "read_safetensors",
]
