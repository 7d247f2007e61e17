"""`python -m keras_nfnets.convert`: DeepMind file <-> Keras weights."""

import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_nfnets
from conftest import REPO, deepmind_fixture, fixture_path, relative_error
from keras_nfnets import convert, variants
from keras_nfnets.weights import load_deepmind_checkpoint


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


def test_command_line_entry_point(tmp_path):
    """The real `python -m keras_nfnets.convert`, in a subprocess."""
    out = tmp_path / "tiny.weights.h5"
    result = subprocess.run(
        [sys.executable, "-m", "keras_nfnets.convert",
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
    monkeypatch.setattr(convert, "_FINAL_WIDTH", {256: ""})
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
