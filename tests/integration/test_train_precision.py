"""The README's default training command (bfloat16) and float16 run: logits
leave the model in float32 under every policy, so the top-5 metric, the loss
and evaluation work (issue 14, item 1)."""

import json

import keras
import numpy as np
import pytest

import keras_nfnets
from training_helpers import FAST_XLA, make_folder, run_train, write_config


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16",
                                    "bfloat16", "float16"])
def test_logits_are_float32_under_every_policy(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = keras_nfnets.NFNet(
            config=str(write_config_tmp()), classes=5, input_shape=(16, 16, 3),
            classifier_activation=None)
        out = model(np.zeros((1, 16, 16, 3), "float32"))
    finally:
        keras.config.set_dtype_policy(previous)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert model.output.dtype == "float32"


def write_config_tmp():
    import tempfile  # pylint: disable=import-outside-toplevel
    return write_config(tempfile.mkstemp(suffix=".json")[1])


# The README's default command (`python -m training.train --variant=F0
# --dataset=imagenet2012 ... --mixed_precision=bfloat16`, every other flag
# at its default: RandAugment, MixUp + CutMix, EMA, XLA 'auto'), shrunk to a
# tiny model and image folder, 2 steps.
# Cheap XLA compiles on CPU: training_helpers.FAST_XLA.


@pytest.mark.parametrize("backend,precision", [
    ("tensorflow", "bfloat16"),
    # CI time: the default policy (bfloat16 on TF) runs in `make test`;
    # these two run in `make test-all`.
    pytest.param("tensorflow", "float16", marks=pytest.mark.slow),
    pytest.param("jax", "bfloat16", marks=pytest.mark.slow)])
def test_default_training_command_runs_two_steps(tmp_path, backend,
                                                 precision):
    root = make_folder(tmp_path / "imgs", classes=3, train=4, test=3)
    config = write_config(tmp_path / "c.json")
    args = [f"--variant={config}", f"--dataset=folder:{root}",
            f"--model_dir={tmp_path}/run", "--batch_size=4",
            "--train_steps=2", "--image_size=16", "--eval_image_size=16",
            "--eval_batch_size=4", f"--backend={backend}",
            f"--mixed_precision={precision}"]
    out = run_train(args, timeout=600, KERAS_BACKEND=backend,
                    JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_XLA)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["eval_examples"] == 9
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
