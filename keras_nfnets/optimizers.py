"""Old path of `keras_nfnets.optim.recipe` (the same module object):
DeepMind's SGD, schedule and `nfnet_optimizer`."""

import sys

from keras_nfnets.optim import recipe as _recipe

sys.modules[__name__] = _recipe
