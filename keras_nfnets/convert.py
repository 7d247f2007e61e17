"""Deprecated: the converter is `python -m keras_nfnets.weights`
(`keras_nfnets/weights/__main__.py`); `python -m keras_nfnets.convert`
still runs it. This module re-exports the former names."""

import sys
import warnings

from keras_nfnets.weights.__main__ import (  # noqa: F401
    deepmind_to_keras, detect_variant, keras_to_deepmind, main,
    save_deepmind_checkpoint, timm_to_keras)

if __name__ == "__main__":
    sys.exit(main(prog="python -m keras_nfnets.convert"))
warnings.warn("keras_nfnets.convert is deprecated: use "
              "keras_nfnets.weights.__main__ (python -m keras_nfnets."
              "weights).", DeprecationWarning, stacklevel=2)
