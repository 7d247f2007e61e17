"""The converter (`python -m keras_nfnets.weights`, also `python -m
keras_nfnets.convert`): DeepMind file <-> Keras weights, timm -> Keras."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_nfnets
from conftest import REPO, deepmind_fixture, fixture_path, relative_error
from keras_nfnets import variants
from keras_nfnets.weights import __main__ as convert
from keras_nfnets.weights import NonFiniteWeightsError, load_deepmind_checkpoint
from test_weights_download import TINY, _mount_tmpfs, _umount


def _assert_identical(a, b):
    assert sorted(a) == sorted(b)
    for module in a:
        assert sorted(a[module]) == sorted(b[module]), module
        for p, value in a[module].items():
            assert value.dtype == b[module][p].dtype
            np.testing.assert_array_equal(value, b[module][p])


def test_round_trip_deepmind_keras_deepmind(tmp_path):
    src = fixture_path("nfnet_tiny_haiku.npz")
    config = str(fixture_path("nfnet_tiny_config.json"))
    h5 = tmp_path / "tiny.weights.h5"
    back = tmp_path / "tiny_haiku.npz"
    assert convert.main([str(src), str(h5), "--config", config,
                         "--no-preprocessing"]) == 0
    assert convert.main([str(h5), str(back), "--config", config,
                         "--classes", "10", "--no-preprocessing"]) == 0
    _assert_identical(load_deepmind_checkpoint(src),
                      load_deepmind_checkpoint(back))

    # The Keras file is a plain load_weights for a model built the same way.
    model = keras_nfnets.NFNet(config=config, classes=10,
                               input_shape=(40, 40, 3),
                               classifier_activation=None,
                               include_preprocessing=False)
    model.load_weights(h5)
    reference = deepmind_fixture("nfnet_tiny_reference.npz")
    logits = model(reference["inputs"], training=False)
    assert relative_error(logits, reference["logits"]) < 1e-4


@pytest.mark.parametrize("module", ["keras_nfnets.weights",
                                    "keras_nfnets.convert"])
def test_command_line_entry_point(tmp_path, module):
    """The real `python -m ...`, in a subprocess: the new name and the old
    one run the same program."""
    out = tmp_path / "tiny.weights.h5"
    result = subprocess.run(
        [sys.executable, "-m", module,
         str(fixture_path("nfnet_tiny_haiku.npz")), str(out),
         "--config", str(fixture_path("nfnet_tiny_config.json"))],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Wrote" in result.stdout and out.exists()


def test_unknown_layout_asks_for_variant_or_config(tmp_path, capsys):
    src = fixture_path("nfnet_tiny_haiku.npz")
    assert convert.main([str(src), str(tmp_path / "x.weights.h5")]) == 1
    assert "Pass --variant or --config" in capsys.readouterr().err


def test_detect_variant_from_module_count_and_classifier():
    def fake(n_modules, final, classes=1000):
        params = {f"NFNet/~/m{i}": {} for i in range(n_modules - 1)}
        params["NFNet/~/linear"] = {"w": np.zeros((final, classes)),
                                    "b": np.zeros((classes,))}
        return params

    assert convert.detect_variant(fake(94, 3072)) == ("F0", 1000)
    assert convert.detect_variant(fake(178, 3072, 10)) == ("F1", 10)
    assert convert.detect_variant(fake(598, 4096)) == ("F6+", 1000)
    with pytest.raises(ValueError, match="Cannot detect"):
        convert.detect_variant(fake(95, 3072))


def test_variant_detected_and_forced_both_directions(tmp_path, monkeypatch):
    """An F0-layout checkpoint (F0 depths, tiny widths standing in for the
    table entry): --variant F0 forces it; the Keras file's variant, class
    count and preprocessing are detected on the way back."""
    tiny_f0 = variants.NFNetConfig(
        width=(32, 64, 96, 128), depth=(1, 2, 6, 3),
        group_width=(16, 16, 16, 16), train_imsize=32, test_imsize=40)
    monkeypatch.setitem(variants.NFNET_VARIANTS, "F0", tiny_f0)
    keras.utils.set_random_seed(1)
    source = keras_nfnets.NFNet(config="F0", classes=7)
    src = tmp_path / "F0_haiku.npz"
    params = convert.save_deepmind_checkpoint(source, src)
    assert len(params) == 94
    assert convert.detect_variant(params) == ("F0", 7)

    h5 = tmp_path / "f0.weights.h5"
    assert convert.main([str(src), str(h5), "--variant", "F0"]) == 0
    back = tmp_path / "back.npz"
    assert convert.main([str(h5), str(back)]) == 0  # detected: F0, 7, prep
    _assert_identical(load_deepmind_checkpoint(src),
                      load_deepmind_checkpoint(back))
    assert convert.main([str(back), str(tmp_path / "auto.weights.h5")]) == 0


def test_timm_file_converts_to_keras(tmp_path):
    """A timm state dict -> .weights.h5: the architecture is detected from
    the layout (here a tiny ECA-NFNet forced with --config), the values are
    timm's, transposed."""
    from timm_helpers import keras_state  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    from timm_helpers import TINY_ECA  # pylint: disable=import-outside-toplevel
    config = tmp_path / "eca.json"
    config.write_text(__import__("json").dumps(TINY_ECA.to_dict()))
    keras.utils.set_random_seed(3)
    source = keras_nfnets.NFNet(config=TINY_ECA, classes=7,
                                input_shape=(40, 40, 3))
    src = tmp_path / "model.safetensors"
    save_file(keras_state(source), str(src))
    dst = tmp_path / "eca.weights.h5"
    assert convert.main([str(src), str(dst), "--config", str(config)]) == 0
    model = keras_nfnets.NFNet(config=TINY_ECA, classes=7,
                               input_shape=(40, 40, 3))
    model.load_weights(dst)
    for a, b in zip(model.weights, source.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_timm_architecture_is_detected_from_the_layout():
    keys = ["stem.conv1.weight", "stages.0.0.attn_last.conv.weight",
            "stages.0.0.conv1.weight", "stages.1.0.conv1.weight",
            "stages.1.1.conv1.weight", "stages.2.0.conv1.weight",
            "stages.2.5.conv1.weight", "stages.3.2.conv1.weight"]
    keys += [f"stages.2.{j}.conv1.weight" for j in range(6)]
    keys += [f"stages.3.{j}.conv1.weight" for j in range(3)]
    assert convert.detect_timm_architecture(dict.fromkeys(keys)) == \
        "ECANFNetL0"
    with pytest.raises(ValueError, match="Cannot detect the architecture"):
        convert.detect_timm_architecture({"stem.conv.weight": None})


def test_non_finite_files_are_refused_both_ways(tmp_path, capsys):
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    bad = tmp_path / "bad.safetensors"
    save_file({"head.fc.weight": np.full((2, 3), np.inf, "float32")},
              str(bad))
    assert convert.main([str(bad), str(tmp_path / "x.weights.h5")]) == 1
    assert "NaN or infinite" in capsys.readouterr().err
    model = keras_nfnets.NFNet(
        config=str(fixture_path("nfnet_tiny_config.json")), classes=10,
        input_shape=(40, 40, 3))
    model.get_layer("linear").bias.assign(np.full((10,), np.nan, "float32"))
    with pytest.raises(NonFiniteWeightsError, match="linear/b"):
        convert.save_deepmind_checkpoint(model, tmp_path / "nan.npz")
    assert not os.path.exists(tmp_path / "nan.npz")


def test_other_files_are_named(tmp_path, capsys):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert convert.main([str(other), str(tmp_path / "x.npz")]) == 1
    assert "neither a DeepMind checkpoint" in capsys.readouterr().err

def test_full_disk_while_saving_the_conversion_is_an_error(tmp_path):
    """The converter's output on a (real) full file system: a clear
    OSError before writing, no partial file, no crash."""
    small = _mount_tmpfs(tmp_path / "small", "256k")
    try:
        dst = small / "tiny.weights.h5"
        with pytest.raises(OSError, match="Not enough free disk space"):
            convert.deepmind_to_keras(
                fixture_path(TINY), dst,
                config=str(fixture_path("nfnet_tiny_config.json")),
                include_preprocessing=False)
        assert os.listdir(small) == []
    finally:
        _umount(small)
