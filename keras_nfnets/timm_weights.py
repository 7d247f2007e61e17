"""Deprecated: timm's safetensors live in `keras_nfnets.weights.timm` (the
reader and name rule) and `keras_nfnets.weights.load` (the dispatcher).
This module re-exports the former names."""

import warnings

from keras_nfnets.weights.errors import (  # noqa: F401
    CheckpointError, CorruptCheckpointError, MissingTensorError,
    TensorShapeError, TruncatedCheckpointError, UnexpectedTensorError,
    WrongArchitectureError)
from keras_nfnets.weights.load import load_timm_weights  # noqa: F401
from keras_nfnets.weights.timm import (  # noqa: F401
    check_state, is_safetensors, read_safetensors, signature, timm_name,
    timm_targets)

warnings.warn("keras_nfnets.timm_weights is deprecated: use "
              "keras_nfnets.weights.timm and keras_nfnets.weights."
              "load_weights.", DeprecationWarning, stacklevel=2)
