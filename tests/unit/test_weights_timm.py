"""timm's safetensors state dicts (`keras_nfnets.weights.timm`): logits
against timm itself, the structure checks, and `weights="imagenet"` for a
timm-trained model end to end from a real HTTP server on 127.0.0.1.

References are built by timm in its own process (tests/timm_reference.py):
random weights with perturbed gains, biases and skip gains, saved with
`safetensors.torch.save_file`.
"""

import os
import pathlib

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import keras_nfnets
from keras_nfnets import presets, variants
from keras_nfnets.weights import errors, load, timm
from conftest import LoopbackServer as _Server
from conftest import relative_error
from timm_helpers import TINY_ECA, TINY_ECA_TIMM as _TINY_TIMM, timm_references


FULL = {  # timm name: (constructor, timm_reference options)
    "dm_nfnet_f0": ("NFNetF0", dict(deepmind_numerics=True)),
    "nf_regnet_b1": ("NFRegNetB1Timm", {}),
    "nf_resnet50": ("NFResNet50Timm", {}),
}


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    specs = [dict(key=name, name=name, seed=10 + i, size=64, **opts)
             for i, (name, (_, opts)) in enumerate(FULL.items())]
    specs += [
        dict(key="tiny_eca", cfg=_TINY_TIMM, size=40, seed=1),
        dict(key="tiny_se", cfg={**_TINY_TIMM, "attn_layer": "se",
                                 "attn_kwargs": dict(rd_ratio=0.25,
                                                     rd_divisor=8)},
             size=40, seed=2),
    ]
    return timm_references(tmp_path_factory.mktemp("timm"), specs)


def _logits(model, x):
    return np.asarray(model(np.asarray(x, "float32"), training=False))


@pytest.mark.parametrize("timm_name", sorted(FULL))
def test_logits_match_timm(refs, timm_name):
    """dm_nfnet_f0 into NFNetF0 keeps DeepMind's numerics (the reference
    is timm's model with tanh GELU and no additive eps: the model DeepMind
    trained); nf_regnet_b1 / nf_resnet50 use timm's numerics."""
    ref = refs[timm_name]
    model = getattr(keras_nfnets, FULL[timm_name][0])(
        weights=str(ref["path"]), input_shape=(64, 64, 3),
        include_preprocessing=False, classifier_activation=None)
    assert model.count_params() == ref["params"]
    err = relative_error(_logits(model, ref["inputs"]), ref["logits"])
    print(f"{timm_name}: max relative logit error {err:.2e}")
    assert err < 1e-4, err


def _tiny(**kwargs):
    kwargs.setdefault("input_shape", (40, 40, 3))
    return keras_nfnets.NFNet(config=TINY_ECA, include_preprocessing=False,
                              classifier_activation=None, **kwargs)


def test_tiny_matches_timm_with_and_without_top(refs):
    ref = refs["tiny_eca"]
    model = _tiny(weights=str(ref["path"]))
    assert model.count_params() == ref["params"]
    assert relative_error(_logits(model, ref["inputs"]),
                          ref["logits"]) < 1e-4
    headless = _tiny(weights=str(ref["path"]), include_top=False,
                     pooling="avg", input_shape=(None, None, 3))
    features = _logits(headless, ref["inputs"])
    w = np.asarray(model.get_layer("linear").kernel)
    b = np.asarray(model.get_layer("linear").bias)
    assert relative_error(features @ w + b, ref["logits"]) < 1e-4


def _rewrite(src, dst, edit):
    state = load_file(str(src))
    edit(state)
    save_file(state, str(dst))
    return str(dst)


def test_wrong_architecture_names_both_layouts(refs, tmp_path):
    with pytest.raises(errors.WrongArchitectureError,
                       match=r"SE attention.*needs.*ECA attention"):
        _tiny(weights=str(refs["tiny_se"]["path"]))
    # A real layout is named: dm_nfnet_f0's file into ECA-NFNet-L0.
    with pytest.raises(errors.WrongArchitectureError,
                       match=r"dm_nfnet_f0 layout.*eca_nfnet_l0 layout"):
        keras_nfnets.ECANFNetL0(weights=str(refs["dm_nfnet_f0"]["path"]),
                                include_top=False)


def test_missing_extra_and_misshaped_tensors_each_named(refs, tmp_path):
    src = refs["tiny_eca"]["path"]
    missing = _rewrite(src, tmp_path / "missing.safetensors",
                       lambda s: s.pop("stages.2.0.conv2b.gain"))
    with pytest.raises(errors.MissingTensorError,
                       match=r"'stages\.2\.0\.conv2b\.gain' \(for "
                             r"nf_block_2/conv1b/gain\)"):
        _tiny(weights=missing)

    def extra_tensor(state):
        state["stages.1.0.conv3.extra"] = np.zeros(3, "float32")
    extra = _rewrite(src, tmp_path / "extra.safetensors", extra_tensor)
    with pytest.raises(errors.UnexpectedTensorError,
                       match=r"'stages\.1\.0\.conv3\.extra' \(3,\)"):
        _tiny(weights=extra)

    def reshape(state):
        state["final_conv.weight"] = state["final_conv.weight"][:100]
    shaped = _rewrite(src, tmp_path / "shape.safetensors", reshape)
    with pytest.raises(errors.TensorShapeError,
                       match=r"'final_conv\.weight': file \(100, 128, 1, 1\)"
                             r", model needs \(192, 128, 1, 1\)"):
        _tiny(weights=shaped)
    # Nothing was assigned by a refused file: a fresh model is untouched.


def test_refused_file_changes_nothing(refs, tmp_path):
    model = _tiny()
    before = [np.asarray(w).copy() for w in model.weights]
    shaped = _rewrite(refs["tiny_eca"]["path"], tmp_path / "s.safetensors",
                      lambda s: s.__setitem__(
                          "head.fc.bias", s["head.fc.bias"][:10]))
    with pytest.raises(errors.TensorShapeError, match="head.fc.bias"):
        load.load_timm_weights(model, shaped)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_corrupt_and_truncated_files(refs, tmp_path):
    data = pathlib.Path(refs["tiny_eca"]["path"]).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(errors.TruncatedCheckpointError,
                       match="truncated"):
        _tiny(weights=str(cut))
    html = tmp_path / "page.safetensors"
    html.write_bytes(b"<html><body>503 Service Unavailable</body></html>")
    with pytest.raises(errors.CorruptCheckpointError,
                       match="HTML page"):
        _tiny(weights=str(html))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:8] + b"{garbage" + data[16:])
    with pytest.raises(errors.CorruptCheckpointError,
                       match="header does not parse"):
        _tiny(weights=str(bad))


def test_name_rule():
    model = keras_nfnets.NFRegNetB1Timm(input_shape=(32, 32, 3))
    targets = timm.timm_targets(model)
    assert targets["stem.conv.weight"][0] == "initial_conv/kernel"
    assert targets["stages.1.0.attn.fc1.weight"][0] == (
        "nf_block_2/squeeze_excite/linear/kernel")
    assert targets["stages.3.6.conv3.gain"][2] == (328, 1, 1, 1)
    assert targets["head.fc.weight"][2] == (1000, 960)


# ---------------------------------------------------------------------------
# weights="imagenet" for a timm model, from a local server.

HUB_FILE = "timm/eca_nfnet_l0.ra2_in1k/resolve/main/model.safetensors"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local mirror of the hub (KERAS_NFNETS_TIMM_WEIGHTS_URL) and a
    temporary KERAS_HOME; ECA-L0's table row shrunk to the tiny config."""
    folder = tmp_path / "www"
    (folder / os.path.dirname(HUB_FILE)).mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    server = _Server(folder)
    monkeypatch.setenv(presets.TIMM_URL_ENV, server.url)
    monkeypatch.setitem(variants.NFNET_VARIANTS, "ECA-L0", TINY_ECA)
    yield folder / HUB_FILE, server
    if server.thread.is_alive():
        server.stop()


def _imagenet(**kwargs):
    kwargs.setdefault("input_shape", (40, 40, 3))
    return keras_nfnets.ECANFNetL0(weights="imagenet",
                                   include_preprocessing=False,
                                   classifier_activation=None, **kwargs)


def test_imagenet_downloads_verifies_and_caches(refs, hub, tmp_path):
    served, server = hub
    ref = refs["tiny_eca"]
    served.write_bytes(pathlib.Path(ref["path"]).read_bytes())
    assert presets.PRESETS["ECA-L0"]["path"] == HUB_FILE
    model = _imagenet()
    assert relative_error(_logits(model, ref["inputs"]),
                          ref["logits"]) < 1e-4
    # Cached as DeepMind's files are: under its own name in the one folder.
    cached = (tmp_path / "keras_home" / "models" /
              "eca_nfnet_l0.ra2_in1k.safetensors")
    assert cached.exists()
    assert server.requests == ["/" + HUB_FILE]
    server.stop()  # cached and verified against the recorded sha256
    again = _imagenet(include_top=False, pooling="avg",
                      input_shape=(None, None, 3))
    assert _logits(again, np.zeros((1, 48, 56, 3))).shape == (1, 192)


def _non_finite(data):
    """The same file with one NaN in a gain (issue 32: refused like
    DeepMind's files)."""
    state = _state_of(data)
    state["stages.0.0.conv1.gain"][0, 0, 0, 0] = np.nan
    return _bytes_of(state)


def _nested(data):  # pylint: disable=unused-argument
    """A header nested 100,000 deep (issue 32: no RecursionError)."""
    header = b"[" * 100_000 + b"]" * 100_000
    return len(header).to_bytes(8, "little") + header


def _state_of(data):
    from safetensors.numpy import load  # pylint: disable=import-outside-toplevel
    return {k: np.array(v) for k, v in load(data).items()}


def _bytes_of(state):
    from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
    return save(state)


@pytest.mark.parametrize("damage,error,message", [
    (lambda d: d[:8] + b"\x00garbage" + d[16:],
     errors.CorruptCheckpointError, "corrupt"),
    (lambda d: d[:len(d) * 2 // 3],
     errors.TruncatedCheckpointError, "truncated"),
    (_non_finite, errors.NonFiniteWeightsError,
     r"stages\.0\.0\.conv1\.gain.*1 NaN or infinite"),
    (_nested, errors.CorruptCheckpointError, "header does not parse"),
], ids=["corrupted", "truncated", "non-finite", "nested-header"])
def test_bad_download_is_removed_then_downloaded_again(refs, hub, tmp_path,
                                                       damage, error,
                                                       message):
    served, server = hub
    ref = refs["tiny_eca"]
    good = pathlib.Path(ref["path"]).read_bytes()
    served.write_bytes(damage(good))
    with pytest.raises(error, match=message) as err:
        _imagenet()
    assert "removed from the cache" in str(err.value)
    assert not (tmp_path / "keras_home" / "models" /
                "eca_nfnet_l0.ra2_in1k.safetensors").exists()
    served.write_bytes(good)  # the next call downloads a clean copy
    model = _imagenet()
    assert relative_error(_logits(model, ref["inputs"]),
                          ref["logits"]) < 1e-4
    assert server.requests == ["/" + HUB_FILE] * 2


# ---------------------------------------------------------------------------
# Issue 32: values that are not finite, headers nested deep.

@pytest.mark.parametrize("value,dtype", [
    (np.nan, "float32"), (np.inf, "float32"), (-np.inf, "float16"),
    (1e300, "float64"),  # finite in float64, infinite in float32
], ids=["nan", "inf", "-inf-f16", "f64-overflow"])
def test_non_finite_values_are_refused_before_assigning(refs, tmp_path,
                                                        value, dtype):
    def poison(state):
        weight = state["final_conv.weight"].astype(dtype)
        weight.flat[3] = value
        state["final_conv.weight"] = weight
    path = _rewrite(refs["tiny_eca"]["path"], tmp_path / "p.safetensors",
                    poison)
    model = _tiny()
    before = [np.asarray(w).copy() for w in model.weights]
    with pytest.raises(errors.NonFiniteWeightsError,
                       match=r"final_conv\.weight.*1 NaN or infinite"):
        load.load_weights(model, path)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_deeply_nested_header_is_a_corrupt_file(tmp_path):
    path = tmp_path / "deep.safetensors"
    path.write_bytes(_nested(b""))
    with pytest.raises(errors.CorruptCheckpointError,
                       match="header does not parse.*RecursionError"):
        timm.read_safetensors(path)


def test_eca_l3_imagenet_names_timm():
    with pytest.raises(ValueError, match=r"ECANFNetL3.*timm.*eca_nfnet_l3"):
        keras_nfnets.ECANFNetL3(weights="imagenet")
