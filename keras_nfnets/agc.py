"""Old path of `keras_nfnets.optim.agc` (the same module object, so that
`keras_nfnets.agc.X` and `keras_nfnets.optim.agc.X` are one thing). The
pure clip functions live in `keras_nfnets.optim.clip`, the non-finite skip
in `keras_nfnets.optim.skip`."""

import sys

from keras_nfnets.optim import agc as _agc

sys.modules[__name__] = _agc
