"""train.py --weights (training/finetune.py): every source through the one
dispatcher, remote (tf.io.gfile) files and .keras fine-tuning.

`ram://` is TensorFlow's in-memory file system: the same tf.io.gfile code
path as gs://, which cannot be reached from here. The fine-tuning runs are
the real program (`python -m training.train`) on a 3-class folder dataset,
one step at 32 px without remat (--remat=false: nothing to save at
that size, and a shorter trace) and without EMA (--ema_decay=0: one
weight set to save and score), with --lr=1e-30 (it must be > 0) so that the saved
model holds the loaded weights (to within 1e-20); "imagenet" is served by a real HTTP server on 127.0.0.1
(the mirror variables), the file written by the test in the source's
format."""

import hashlib
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver

import keras_nfnets
from conftest import LoopbackServer, fixture_path
from keras_nfnets import presets
from keras_nfnets.weights.__main__ import save_deepmind_checkpoint
from timm_helpers import keras_state
from training import train
from training_helpers import (finish, make_folder, model_weights,
                              start_train, tiny_flags)


def _tiny(classes, seed):
    keras.utils.set_random_seed(seed)
    return keras_nfnets.NFNet(
        str(fixture_path("nfnet_tiny_config.json")), classes=classes,
        input_shape=(None, None, 3), weights=None,
        classifier_activation=None, name="nfnet")


def _check(tmp_path, **flags):
    if not train.FLAGS.is_parsed():
        train.FLAGS.mark_as_parsed()
    flags.setdefault("model_dir", str(tmp_path / "run"))
    with flagsaver.flagsaver(**flags):
        return train.check_flags()


def _to_ram(local, name):
    url = f"ram://keras_nfnets_test/{name}"
    tf.io.gfile.makedirs("ram://keras_nfnets_test")
    tf.io.gfile.copy(str(local), url, overwrite=True)
    return url


def test_remote_weights_are_checked_up_front(tmp_path):
    # Regression: --weights=gs://... passed the check and failed in open().
    with pytest.raises(train.UsageError, match="no such file"):
        _check(tmp_path, weights="ram://keras_nfnets_test/missing.keras")
    url = _to_ram(fixture_path("nfnet_tiny_haiku.npz"), "tiny_haiku.npz")
    _check(tmp_path, weights=url)  # exists: accepted


def test_remote_weights_file_is_loaded(tmp_path):
    source = _tiny(10, seed=1)
    local = tmp_path / "src.weights.h5"
    source.save_weights(local)
    url = _to_ram(local, "src.weights.h5")
    target = _tiny(5, seed=2)
    train.load_finetune_weights(target, url, "custom", num_classes=5)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(target.get_layer("stem_conv0").kernel),
        keras.ops.convert_to_numpy(source.get_layer("stem_conv0").kernel))


def test_keras_file_fine_tuning_reports_what_was_skipped(tmp_path, capsys):
    source = _tiny(10, seed=1)
    path = tmp_path / "src.keras"
    source.save(path)
    target = _tiny(5, seed=2)
    train.load_finetune_weights(target, str(path), "custom", num_classes=5)
    report = capsys.readouterr().out
    n = sum(1 for l in target.layers if l.get_weights())
    assert f"copied {n - 1} of {n} layers with weights" in report
    assert "skipped 1: linear (shapes [(256, 10), (10,)] in the file, " \
           "[(256, 5), (5,)] in the model)" in report
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(target.get_layer("nf_block").skip_gain),
        keras.ops.convert_to_numpy(source.get_layer("nf_block").skip_gain))


def test_keras_file_with_nothing_matching_is_an_error(tmp_path):
    other = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(3, name="dense")])
    path = tmp_path / "other.keras"
    other.save(path)
    with pytest.raises(train.UsageError,
                       match="no layer of the model matches"):
        train.load_finetune_weights(_tiny(5, seed=2), str(path), "custom",
                                    num_classes=5)


def test_deepmind_file_into_other_classes_skips_the_classifier(tmp_path,
                                                               capsys):
    """Issue 32: --weights=<DeepMind .npz> into a model with another number
    of classes crashed in `variable.assign`."""
    target = _tiny(5, seed=2)
    train.load_finetune_weights(target, str(fixture_path(
        "nfnet_tiny_haiku.npz")), "custom", num_classes=5)
    assert "kept the model's own linear" in capsys.readouterr().out


def test_imagenet_for_a_custom_config_is_a_usage_error():
    with pytest.raises(train.UsageError, match="No ImageNet weights"):
        train.load_finetune_weights(_tiny(5, seed=2), "imagenet", "custom",
                                    num_classes=5)


# ---------------------------------------------------------------------------
# Fine-tuning real architectures through the training program.

def _source_model(ctor):
    keras.utils.set_random_seed(7)
    return getattr(keras_nfnets, ctor)(weights=None, input_shape=(32, 32, 3))


def _start_finetune(tmp_path, name, variant, weights, backend="torch",
                    **env):
    """`python -m training.train` fine-tuning `variant` from `weights` on
    `backend`, started in the background (`_finished` waits for it)."""
    data = tmp_path / "data"
    if not data.exists():
        make_folder(data, classes=3, train=4, test=2)
    args = tiny_flags(variant, f"folder:{data}", tmp_path / name,
                      weights=weights, train_steps=1, batch_size=4,
                      eval_batch_size=4, lr=1e-30, weight_decay=0.0,
                      cutmix="false", image_size=32, eval_image_size=32,
                      remat="false", ema_decay=0.0, backend=backend)
    return start_train(args, tmp_path, name,
                       KERAS_HOME=str(tmp_path / f"keras_home_{variant}"),
                       **env)


def _finished(proc, tmp_path, name):
    result = finish(proc, timeout=900)
    assert result.returncode == 0, (result.stdout[-2000:],
                                    result.stderr[-4000:])
    assert "fine-tuning from" in result.stdout
    assert "kept the model's own linear" in result.stdout  # 3 classes
    return model_weights(tmp_path / name / "model.keras")


def _assert_loaded(trained, source):
    mine = {v.path: np.asarray(v) for v in source.weights}
    compared = 0
    for path, value in trained.items():
        if path in mine and not path.startswith("linear/"):
            np.testing.assert_allclose(value, mine[path], rtol=1e-6,
                                       atol=1e-20, err_msg=path)
            compared += 1
    assert compared > 0.9 * len(mine)


def test_finetune_f0_and_eca_l0_from_imagenet_and_safetensors(tmp_path):
    """Fine-tuning real architectures through the training program, each
    from its published source's format. NFNet-F0 (DeepMind's weights):
    --weights=imagenet with 3 classes refused a correct 94-module file
    ("needs 95"); here a 94-module DeepMind file served as F0_haiku.npz
    (accepted by its sha256, as it is not DeepMind's), and the same weights
    as timm's dm_nfnet_f0 state dict. ECA-NFNet-L0 (timm's weights):
    --weights=imagenet went to DeepMind's loader, --weights=PATH.safetensors
    to one that did not know the format.

    Four program runs (start, build, one step, evaluation, save), in two
    rounds of an F0 run beside an ECA-L0 run, so that two F0s never run at
    once. The loading is the same code on every backend; three runs are on
    PyTorch, whose eager steps need no trace (an F0 run: ~22 s against
    ~40 s on TensorFlow, most of it tracing and graph optimisation), and
    the download run of ECA-L0 on TensorFlow, the program's default.
    About a minute in all on 2 cores: real 24M and 72M-parameter models."""
    from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
    f0 = _source_model("NFNetF0")
    npz = tmp_path / "www" / presets.PRESETS["F0"]["path"]
    npz.parent.mkdir(parents=True)
    assert len(save_deepmind_checkpoint(f0, npz)) == 94
    f0_local = tmp_path / "dm_nfnet_f0.safetensors"
    f0_local.write_bytes(save(keras_state(f0)))
    l0 = _source_model("ECANFNetL0")
    l0_data = save(keras_state(l0))
    l0_local = tmp_path / "eca_l0.safetensors"
    l0_local.write_bytes(l0_data)
    l0_served = tmp_path / "www" / presets.PRESETS["ECA-L0"]["path"]
    l0_served.parent.mkdir(parents=True, exist_ok=True)
    l0_served.write_bytes(l0_data)

    runs = [_start_finetune(tmp_path, "f0_local", "F0", str(f0_local)),
            _start_finetune(tmp_path, "l0_local", "ECA-L0", str(l0_local))]
    _assert_loaded(_finished(runs[0], tmp_path, "f0_local"), f0)
    _assert_loaded(_finished(runs[1], tmp_path, "l0_local"), l0)

    server = LoopbackServer(tmp_path / "www")
    try:
        runs = [
            _start_finetune(
                tmp_path, "f0_imagenet", "F0", "imagenet",
                **{presets.URL_ENVS["deepmind"]: server.url,
                   presets.ACCEPT_ENV: hashlib.sha256(
                       npz.read_bytes()).hexdigest()}),
            _start_finetune(
                tmp_path, "l0_imagenet", "ECA-L0", "imagenet",
                backend="tensorflow",
                **{presets.URL_ENVS["timm"]: server.url})]
        f0_trained = _finished(runs[0], tmp_path, "f0_imagenet")
        l0_trained = _finished(runs[1], tmp_path, "l0_imagenet")
    finally:
        server.stop()
    _assert_loaded(f0_trained, f0)
    _assert_loaded(l0_trained, l0)
    assert os.path.exists(tmp_path / "keras_home_ECA-L0" / "models" /
                          presets.PRESETS["ECA-L0"]["file"])
