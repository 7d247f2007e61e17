"""Optimization for NFNets, in DeepMind's parts:

* `clip`: the unit-wise clip of AGC as pure functions (`unitwise_norm`,
  `clip_gradient`, `adaptive_clip_grads`, the exclusion patterns);
* `agc`: `AGC(optimizer)`, the clip inside any Keras optimizer's
  `update_step`, on the reduced gradient;
* `skip`: the non-finite-step skip, counted in `skipped_steps` (also for
  Keras's `LossScaleOptimizer` under `mixed_float16`);
* `fused_sgd`: Keras's `SGD` update as one TensorFlow kernel per variable
  (inside `AGC`; the same values);
* `groups`: which stage each variable sits in (stem, stage1..N, head);
* `monitor`: `AGCMonitor` and `plot_clip_fraction`, what AGC clipped;
* `layer_decay`: `LayerDecay`, layer-wise learning-rate decay;
* `recipe`: DeepMind's `NFNetSGD`, `WarmupCosineDecay` and
  `nfnet_optimizer`.
"""

from keras_nfnets.optim.agc import AGC, AdaptiveOptimizerWarning
from keras_nfnets.optim.clip import (adaptive_clip_grads, clip_gradient,
                                     unitwise_norm)
from keras_nfnets.optim.recipe import (NFNetSGD, WarmupCosineDecay,
                                       nfnet_optimizer)
from keras_nfnets.optim.skip import SkipCountingLossScaleOptimizer
from keras_nfnets.optim.groups import SKIP_GAINS
from keras_nfnets.optim.layer_decay import LayerDecay
from keras_nfnets.optim.monitor import AGCMonitor, plot_clip_fraction

__all__ = ["AGC", "AGCMonitor", "AdaptiveOptimizerWarning", "LayerDecay",
           "NFNetSGD", "SKIP_GAINS",
           "SkipCountingLossScaleOptimizer", "WarmupCosineDecay",
           "adaptive_clip_grads", "clip_gradient", "nfnet_optimizer",
           "plot_clip_fraction", "unitwise_norm"]
