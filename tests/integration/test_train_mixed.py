"""Under mixed_float16 the training program's optimizer (Keras's loss
scaling around AGC) counts a skipped non-finite step in `skipped_steps`
(issue 14, item 11)."""

import keras
import numpy as np

from training import train
from training_helpers import write_config


def test_skipped_step_under_mixed_float16_is_counted(tmp_path):
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    train.FLAGS.unparse_flags()
    train.FLAGS(["train", "--model_dir=/nonexistent", "--batch_size=2",
                 "--ema_decay=0", "--jit_compile=false"])
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras_nfnets.NFNet(
            config=str(write_config(tmp_path / "c.json")), classes=3,
            input_shape=(16, 16, 3), classifier_activation=None)
        train.compile_model(model, steps_per_epoch=1, total_steps=4,
                            jit_compile="false")
        y = np.eye(3, dtype="float32")[[0, 1]]
        finite = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3))
        bad = finite.copy()
        bad[0, 0, 0, 0] = np.nan
        for x in (finite, bad, finite):
            model.train_on_batch(x.astype("float32"), y)
        agc = model.optimizer.inner_optimizer
        assert int(agc.skipped_steps.numpy()) == 1
        assert int(model.optimizer.iterations.numpy()) == 2
    finally:
        keras.config.set_dtype_policy(previous)
        train.FLAGS.unparse_flags()
