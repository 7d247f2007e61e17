"""`weights="imagenet"`: download, verification, conversion and cache.

Every test serves files from a real HTTP server on 127.0.0.1 (nothing is
ever fetched from outside) and uses a temporary KERAS_HOME.
"""

import hashlib
import http.server
import json
import os
import pathlib
import pickle
import shutil
import threading

import keras
import numpy as np
import pytest

import keras_nfnets
from keras_nfnets import convert, pretrained, variants
from keras_nfnets.weights import CheckpointError, load_deepmind_checkpoint
from conftest import deepmind_fixture, fixture_path, relative_error

TINY = "nfnet_tiny_haiku.npz"
# A small NFNet with the F-series block layout (F0 depths, tiny widths).
TINY_WIDTHS = dict(width=(32, 64, 96, 128), group_width=(16, 16, 16, 16),
                   train_imsize=32, test_imsize=40)


class _Server:
    """A real HTTP server on 127.0.0.1 serving one folder, in a thread."""

    def __init__(self, folder):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args):  # keep test output quiet
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(folder served over HTTP, server); KERAS_HOME and the weights URL
    point at temporary places."""
    folder = tmp_path / "www"
    folder.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    server = _Server(folder)
    monkeypatch.setenv(pretrained.URL_ENV, server.url)
    yield folder, server
    if server.thread.is_alive():
        server.stop()


def _cache(tmp_path):
    return tmp_path / "keras_home" / "models"


def _tiny_model(**kwargs):
    kwargs.setdefault("input_shape", (40, 40, 3))
    return keras_nfnets.NFNet(
        config=str(fixture_path("nfnet_tiny_config.json")), classes=10,
        classifier_activation=None, include_preprocessing=False, **kwargs)


def _run(model, x):
    return np.asarray(model(np.asarray(x, "float32"), training=False))


def _sha(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _serve_tiny(folder, name=TINY):
    shutil.copy(fixture_path(TINY), folder / name)
    return folder / name


def _f_layout_checkpoint(path, depth, seed=0):
    """Writes a DeepMind-format checkpoint of a tiny F-layout NFNet."""
    config = variants.NFNetConfig(depth=depth, **TINY_WIDTHS)
    keras.utils.set_random_seed(seed)
    model = keras_nfnets.NFNet(config=config, classes=1000,
                               input_shape=(40, 40, 3))
    convert.save_deepmind_checkpoint(model, path)
    return model


def test_tiny_download_verify_convert_then_cache_with_server_stopped(
        served, tmp_path):
    folder, server = served
    _serve_tiny(folder)
    reference = deepmind_fixture("nfnet_tiny_reference.npz")

    model = _tiny_model()
    converted = pretrained.load_pretrained(model, TINY, classes=10)
    logits = _run(model, reference["inputs"])
    assert relative_error(logits, reference["logits"]) < 1e-4
    cache = _cache(tmp_path)
    assert (cache / TINY).exists() and pathlib.Path(converted).exists()
    assert pathlib.Path(converted).parent == cache
    assert converted.endswith(".weights.h5")
    record = json.loads((cache / pretrained.HASH_RECORD).read_text())
    assert record[TINY] == _sha(fixture_path(TINY))  # trust on first use
    assert record[os.path.basename(converted)] == _sha(converted)
    assert server.requests == ["/" + TINY]

    server.stop()
    (cache / TINY).unlink()  # the second load needs only the converted file
    again = _tiny_model()
    assert pretrained.load_pretrained(again, TINY, classes=10) == converted
    np.testing.assert_allclose(_run(again, reference["inputs"]),
                               logits, rtol=0, atol=0)


def test_altered_converted_file_is_rebuilt_from_the_cached_download(
        served, tmp_path):
    folder, server = served
    _serve_tiny(folder)
    reference = deepmind_fixture("nfnet_tiny_reference.npz")
    converted = pathlib.Path(
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10))
    server.stop()
    converted.write_bytes(converted.read_bytes()[:-64] + b"\0" * 64)
    model = _tiny_model()
    pretrained.load_pretrained(model, TINY, classes=10)
    assert relative_error(_run(model, reference["inputs"]),
                          reference["logits"]) < 1e-4


def test_include_top_false_uses_its_own_cache_and_any_input_size(
        served, tmp_path):
    folder, _ = served
    _serve_tiny(folder)
    full = _tiny_model()
    pretrained.load_pretrained(full, TINY, classes=10)
    features = keras.Model(full.input, full.get_layer("final_act").output)
    x = deepmind_fixture("nfnet_tiny_reference.npz")["inputs"]

    notop = _tiny_model(include_top=False, input_shape=(None, None, 3))
    path = pretrained.load_pretrained(notop, TINY, classes=10,
                                      skip_layers=("linear",))
    assert "notop" in path
    np.testing.assert_allclose(_run(notop, x),
                               _run(features, x), atol=1e-6)
    assert _run(notop, np.zeros((1, 72, 56, 3))).shape == (
        1, 3, 2, 256)
    # The classifier is still verified when skipped.
    with pytest.raises(pretrained.WrongVariantError, match="classifier"):
        pretrained.load_pretrained(
            _tiny_model(include_top=False, input_shape=(None, None, 3),
                        name="other"), TINY, classes=1000,
            skip_layers=("linear",), cache_dir=str(tmp_path / "other"))


def test_weights_imagenet_goes_through_the_same_path(served, tmp_path,
                                                     monkeypatch):
    """NFNetF0(weights="imagenet") with F0's table entry shrunk to tiny
    widths: the public one-liner, end to end, against a local server."""
    folder, server = served
    tiny_f0 = variants.NFNetConfig(depth=(1, 2, 6, 3), **TINY_WIDTHS)
    monkeypatch.setitem(variants.NFNET_VARIANTS, "F0", tiny_f0)
    source = _f_layout_checkpoint(folder / "F0_haiku.npz", (1, 2, 6, 3))
    params = load_deepmind_checkpoint(folder / "F0_haiku.npz")
    assert len(params) == pretrained.deepmind_module_count(0) == 94

    model = keras_nfnets.NFNetF0(weights="imagenet", input_shape=(40, 40, 3))
    for a, b in zip(model.weights, source.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = np.random.default_rng(0).uniform(0, 255, (2, 40, 40, 3))
    expected = _run(source, x)
    np.testing.assert_allclose(_run(model, x), expected,
                               atol=1e-6)
    assert (_cache(tmp_path) / "F0_haiku.npz").exists()

    server.stop()
    again = keras_nfnets.NFNetF0(weights="imagenet", input_shape=(40, 40, 3))
    np.testing.assert_allclose(_run(again, x), expected,
                               atol=1e-6)
    headless = keras_nfnets.NFNetF0(weights="imagenet", include_top=False,
                                    pooling="avg",
                                    input_shape=(None, None, 3))
    assert _run(headless, np.zeros((1, 64, 96, 3))).shape == (1, 256)


def test_wrong_variant_real_f0(served, tmp_path):
    """An F1-layout file (178 modules) served as F0_haiku.npz: the real
    NFNet-F0 model refuses it as the wrong variant and drops it."""
    folder, _ = served
    _f_layout_checkpoint(folder / "F0_haiku.npz", (2, 4, 12, 6))
    with pytest.raises(pretrained.WrongVariantError,
                       match=r"178 modules.*needs 94.*NFNet-F1"):
        keras_nfnets.NFNetF0(weights="imagenet", include_top=False)
    assert not (_cache(tmp_path) / "F0_haiku.npz").exists()


def test_hash_mismatch_on_download_removes_the_file(served, tmp_path):
    folder, server = served
    _serve_tiny(folder)
    with pytest.raises(pretrained.WeightsHashError,
                       match="does not match the published hash"):
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10,
                                   file_hash="0" * 64)
    assert not (_cache(tmp_path) / TINY).exists()
    # Not a stuck cache: the next call downloads again and succeeds.
    pretrained.load_pretrained(_tiny_model(), TINY, classes=10,
                               file_hash=_sha(fixture_path(TINY)))
    assert server.requests == ["/" + TINY] * 2


def test_known_hash_table_is_enforced(served, tmp_path, monkeypatch):
    folder, _ = served
    _serve_tiny(folder)
    monkeypatch.setitem(pretrained.KNOWN_SHA256, TINY, "f" * 64)
    with pytest.raises(pretrained.WeightsHashError, match="published hash"):
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
    assert not (_cache(tmp_path) / TINY).exists()


def test_recorded_hash_is_enforced_and_bad_cache_redownloaded(served,
                                                              tmp_path):
    folder, server = served
    served_file = _serve_tiny(folder)
    converted = pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
    os.remove(converted)
    cached = _cache(tmp_path) / TINY
    # A damaged cached copy is replaced by a fresh download ...
    cached.write_bytes(cached.read_bytes()[:1000])
    pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
    assert len(server.requests) == 2 and _sha(cached) == _sha(served_file)
    # ... and a changed upstream file is refused against the recorded hash.
    os.remove(converted)
    params = load_deepmind_checkpoint(served_file)
    params["NFNet/~/linear"]["b"] = params["NFNet/~/linear"]["b"] + 1
    with open(served_file, "wb") as f:
        pickle.dump(params, f, protocol=4)
    cached.write_bytes(b"damaged")
    with pytest.raises(pretrained.WeightsHashError,
                       match="recorded when it was first downloaded"):
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
    assert not cached.exists()


def test_truncated_download(served, tmp_path):
    folder, _ = served
    data = fixture_path(TINY).read_bytes()
    (folder / TINY).write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="ends early") as err:
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
    assert "removed from the cache" in str(err.value)
    assert not (_cache(tmp_path) / TINY).exists()
    assert not (_cache(tmp_path) / pretrained.HASH_RECORD).exists()
    (folder / TINY).write_bytes(data)  # the next call downloads again
    pretrained.load_pretrained(_tiny_model(), TINY, classes=10)


@pytest.mark.parametrize("content,message", [
    (b"<html><body>503 Service Unavailable</body></html>", "not a pickle"),
    (b"\x80\x02}q\x00\xff\xfe\xfd", "invalid pickle data"),
])
def test_corrupt_download(served, tmp_path, content, message):
    folder, _ = served
    (folder / TINY).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
    assert not (_cache(tmp_path) / TINY).exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_download_is_refused_and_never_runs(served, tmp_path):
    folder, _ = served
    marker = tmp_path / "payload_ran"
    with open(folder / TINY, "wb") as f:
        pickle.dump({"NFNet/~/linear": {"w": _Payload(marker)}}, f)
    with pytest.raises(CheckpointError, match=r"global '(posix|nt)\.system'"):
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
    assert not marker.exists()
    assert not (_cache(tmp_path) / TINY).exists()


def test_unreachable_server_says_how_to_fix(served):
    with pytest.raises(OSError, match=pretrained.URL_ENV):
        pretrained.load_pretrained(_tiny_model(), "missing.npz", classes=10)


def test_module_count_rule():
    assert [pretrained.deepmind_module_count(n) for n in (0, 1, 6)] == [
        94, 178, 598]
    assert pretrained.variant_for_module_count(178) == "F1"
    assert pretrained.variant_for_module_count(100) is None
    assert set(pretrained.IMAGENET_TOP1) == set(pretrained.PUBLISHED)


@pytest.mark.parametrize("ctor", ["NFNetF7", "NFNetF0Plus", "NFNetF6Plus"])
def test_unpublished_variants_have_no_imagenet_weights(ctor):
    with pytest.raises(ValueError, match="No ImageNet weights are published"):
        getattr(keras_nfnets, ctor)(weights="imagenet")


def test_imagenet_argument_rules():
    with pytest.raises(ValueError, match="classes` should be 1000"):
        keras_nfnets.NFNetF0(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match="classifier_activation"):
        keras_nfnets.NFNetF0(weights="imagenet", classifier_activation="relu")
