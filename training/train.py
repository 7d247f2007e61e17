"""Trains an NFNet: `python -m training.train --variant=F0 --dataset=...`.

Defaults are DeepMind's ImageNet recipe (batch 4096, lr 0.1 per 256, 5
warmup epochs then cosine, Nesterov SGD with coupled weight decay 2e-5, AGC
0.01, label smoothing 0.1, EMA 0.99999, MixUp 0.2 + CutMix, the variant's
RandAugment level, stochastic depth and dropout, bfloat16, 360 epochs).
`--demo` trains a small NFNet on the CIFAR-10 sample shipped in
training/demo_data, offline, on CPU.

This is the entry module: the flags are defined in `training.flags`, the
program (`run()`, readable top to bottom) is `training.program`, and each
step has its own module (see there). The names below stay importable from
here (`train.check_flags`, `train.UsageError`, ...).
"""

if __name__ == "__main__":  # --backend must reach keras before its import
    from . import backends as _backends
    _backends.select_from_argv()

# pylint: disable=wrong-import-position,unused-import
from absl import app

from .errors import UsageError  # noqa: F401
from .finetune import load_finetune_weights  # noqa: F401
from .finetune import weights_exist as _weights_exist  # noqa: F401
from .fitting import fit  # noqa: F401
from .flags import (DEMO_DATA, DEMO_FLAGS, FLAGS, TRAINING_FLAGS,  # noqa: F401
                    Plan, apply_demo_defaults, check_flags, check_values,
                    resolved_flags)
from .model_setup import build_model, compile_model  # noqa: F401
from .program import main, run  # noqa: F401
from .run_dir import (FLAGS_FILE, check_resume_flags, is_finished,  # noqa: F401
                      write_resume_flags)
from .strategy import check_replicas  # noqa: F401

if __name__ == "__main__":
    app.run(main)
