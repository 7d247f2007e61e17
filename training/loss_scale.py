"""Moved to `keras_nfnets.optim.skip.SkipCountingLossScaleOptimizer`; this
name stays for `from .loss_scale import SkipCountingLossScaleOptimizer`.
The import is deferred so that importing the training program does not
import Keras before `--backend` is set."""


def SkipCountingLossScaleOptimizer(optimizer):  # pylint: disable=invalid-name
    """`keras_nfnets.optim.skip.SkipCountingLossScaleOptimizer(optimizer)`."""
    from keras_nfnets.optim import skip  # pylint: disable=import-outside-toplevel
    return skip.SkipCountingLossScaleOptimizer(optimizer)
