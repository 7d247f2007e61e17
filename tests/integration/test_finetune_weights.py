"""train.py --weights (training/finetune.py): every source through the one
dispatcher, remote (tf.io.gfile) files and .keras fine-tuning.

`ram://` is TensorFlow's in-memory file system: the same tf.io.gfile code
path as gs://, which cannot be reached from here. The fine-tuning runs are
the real program (`python -m training.train`) on a 3-class folder dataset,
one step at 32 px without remat (--remat=false: nothing to save at
that size, and a shorter trace), with --lr=1e-30 (it must be > 0) so that the saved
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
from training_helpers import make_folder, model_weights, run_train, tiny_flags


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


def _finetune(tmp_path, name, variant, weights, **env):
    data = tmp_path / "data"
    if not data.exists():
        make_folder(data, classes=3, train=4, test=2)
    args = tiny_flags(variant, f"folder:{data}", tmp_path / name,
                      weights=weights, train_steps=1, batch_size=4,
                      eval_batch_size=4, lr=1e-30, weight_decay=0.0,
                      cutmix="false", image_size=32, eval_image_size=32,
                      remat="false")  # one step at 32 px: no memory to save
    result = run_train(args, timeout=900,
                       KERAS_HOME=str(tmp_path / "keras_home"), **env)
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


def _serve(tmp_path, relative, data):
    target = tmp_path / "www" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return LoopbackServer(tmp_path / "www")


def test_finetune_eca_l0_from_imagenet_and_safetensors(tmp_path):
    """ECA-NFNet-L0 (timm's weights): --weights=imagenet went to DeepMind's
    loader, --weights=PATH.safetensors to one that did not know the
    format. Real ECA-L0, two short runs (about a minute or two each on
    2 cores: the program's start, the build, one step, the save)."""
    from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
    source = _source_model("ECANFNetL0")
    data = save(keras_state(source))
    del source
    source = _source_model("ECANFNetL0")
    local = tmp_path / "eca_l0.safetensors"
    local.write_bytes(data)
    _assert_loaded(_finetune(tmp_path, "local", "ECA-L0", str(local)),
                   source)
    server = _serve(tmp_path, presets.PRESETS["ECA-L0"]["path"], data)
    try:
        trained = _finetune(
            tmp_path, "imagenet", "ECA-L0", "imagenet",
            **{presets.URL_ENVS["timm"]: server.url})
    finally:
        server.stop()
    _assert_loaded(trained, source)
    assert os.path.exists(tmp_path / "keras_home" / "models" /
                          presets.PRESETS["ECA-L0"]["file"])


def test_finetune_f0_from_imagenet_and_safetensors(tmp_path):
    """NFNet-F0 (DeepMind's weights): --weights=imagenet with 3 classes
    refused a correct 94-module file ("needs 95"). Real F0: a 94-module
    DeepMind file served as F0_haiku.npz (accepted by its sha256, as it is
    not DeepMind's), and the same weights as timm's dm_nfnet_f0 state
    dict. Two short runs, one at a time (about two minutes each on 2
    cores: F0's build, one step and its save dominate)."""
    from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
    source = _source_model("NFNetF0")
    npz = tmp_path / "www" / "F0_haiku.npz"
    npz.parent.mkdir(parents=True)
    assert len(save_deepmind_checkpoint(source, npz)) == 94
    local = tmp_path / "dm_nfnet_f0.safetensors"
    local.write_bytes(save(keras_state(source)))
    _assert_loaded(_finetune(tmp_path, "local", "F0", str(local)), source)
    server = LoopbackServer(tmp_path / "www")
    try:
        trained = _finetune(
            tmp_path, "imagenet", "F0", "imagenet",
            **{presets.URL_ENVS["deepmind"]: server.url,
               presets.ACCEPT_ENV: hashlib.sha256(
                   npz.read_bytes()).hexdigest()})
    finally:
        server.stop()
    _assert_loaded(trained, source)
