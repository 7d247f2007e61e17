"""Optimization for NFNets, in DeepMind's parts:

* `clip`: the unit-wise clip of AGC as pure functions (`unitwise_norm`,
  `clip_gradient`, `adaptive_clip_grads`, the exclusion patterns);
* `agc`: `AGC(optimizer)`, the clip inside any Keras optimizer's
  `update_step`, on the reduced gradient;
* `skip`: the non-finite-step skip, counted in `skipped_steps` (also for
  Keras's `LossScaleOptimizer` under `mixed_float16`);
* `recipe`: DeepMind's `NFNetSGD`, `WarmupCosineDecay` and
  `nfnet_optimizer`.
"""

from keras_nfnets.optim.agc import AGC, AdaptiveOptimizerWarning
from keras_nfnets.optim.clip import (adaptive_clip_grads, clip_gradient,
                                     unitwise_norm)
from keras_nfnets.optim.recipe import (NFNetSGD, WarmupCosineDecay,
                                       nfnet_optimizer)
from keras_nfnets.optim.skip import SkipCountingLossScaleOptimizer

__all__ = ["AGC", "AdaptiveOptimizerWarning", "NFNetSGD",
           "SkipCountingLossScaleOptimizer", "WarmupCosineDecay",
           "adaptive_clip_grads", "clip_gradient", "nfnet_optimizer",
           "unitwise_norm"]
