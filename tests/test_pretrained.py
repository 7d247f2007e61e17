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
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_nfnets
from keras_nfnets import convert, pretrained, variants
from keras_nfnets.weights import CheckpointError, load_deepmind_checkpoint
from conftest import REPO as REPO_ROOT
from conftest import LoopbackServer as _Server
from conftest import deepmind_fixture, fixture_path, relative_error

TINY = "nfnet_tiny_haiku.npz"
# A small NFNet with the F-series block layout (F0 depths, tiny widths).
TINY_WIDTHS = dict(width=(32, 64, 96, 128), group_width=(16, 16, 16, 16),
                   train_imsize=32, test_imsize=40)




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
    # Not DeepMind's file (md5 table): accepted deliberately by its sha256.
    monkeypatch.setenv(pretrained.ACCEPT_ENV, _sha(folder / "F0_haiku.npz"))
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


def test_wrong_variant_real_f0(served, tmp_path, monkeypatch):
    """An F1-layout file (178 modules) served as F0_haiku.npz (accepted by
    its sha256 past the md5 table): the real NFNet-F0 model refuses it as
    the wrong variant and drops it."""
    folder, _ = served
    _f_layout_checkpoint(folder / "F0_haiku.npz", (2, 4, 12, 6))
    monkeypatch.setenv(pretrained.ACCEPT_ENV, _sha(folder / "F0_haiku.npz"))
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


# ----------------------------------------------- issue 14 / issue 17 (md5)

class _SlowServer(_Server):
    """Serves its folder in 64 KiB chunks, `delay` seconds apart."""

    def __init__(self, folder, delay):
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # pylint: disable=invalid-name
                server.requests.append(self.path)
                path = pathlib.Path(folder) / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    for i in range(0, len(data), 1 << 16):
                        self.wfile.write(data[i:i + (1 << 16)])
                        self.wfile.flush()
                        time.sleep(delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.serve(Handler)


def test_md5_table_refuses_a_wrong_f0_then_opt_out(served, tmp_path,
                                                   monkeypatch):
    """A DeepMind-named file whose md5/size do not match the published
    list is refused on download; accepting it takes its sha256."""
    folder, server = served
    wrong = _serve_tiny(folder, "F0_haiku.npz")
    cache = _cache(tmp_path)
    with pytest.raises(pretrained.WeightsHashError) as err:
        pretrained.fetch_checkpoint("F0_haiku.npz", label="NFNet-F0")
    message = str(err.value)
    for part in ("not the file DeepMind published",
                 "where DeepMind's file has 285,976,842",
                 "where the published list has "
                 "0a41039da1cb43adf47f1b7d86ddfe0f",
                 f"file_hash='{_sha(wrong)}'",
                 f"{pretrained.ACCEPT_ENV}={_sha(wrong)}"):
        assert part in message, message
    assert sorted(os.listdir(cache)) == [".F0_haiku.npz.lock"]

    # The deliberate opt-out: exactly this file, by its sha256.
    path, params = pretrained.fetch_checkpoint("F0_haiku.npz",
                                               file_hash=_sha(wrong))
    assert _sha(path) == _sha(wrong) and "NFNet/~/linear" in params
    record = json.loads((cache / pretrained.HASH_RECORD).read_text())
    assert record["F0_haiku.npz"] == _sha(wrong)
    os.remove(path)
    monkeypatch.setenv(pretrained.ACCEPT_ENV, _sha(wrong))
    pretrained.fetch_checkpoint("F0_haiku.npz")
    assert len(server.requests) == 3


def test_matching_md5_and_size_are_accepted(served, tmp_path, monkeypatch):
    folder, _ = served
    data = _serve_tiny(folder).read_bytes()
    monkeypatch.setitem(pretrained.KNOWN_MD5, TINY,
                        hashlib.md5(data).hexdigest())
    monkeypatch.setitem(pretrained.KNOWN_SIZE, TINY, len(data))
    path, _ = pretrained.fetch_checkpoint(TINY)
    record = json.loads((_cache(tmp_path) / pretrained.HASH_RECORD)
                        .read_text())
    assert record[TINY] == hashlib.sha256(data).hexdigest() == _sha(path)
    monkeypatch.setitem(pretrained.KNOWN_SIZE, TINY, len(data) + 1)
    os.remove(path)
    with pytest.raises(pretrained.WeightsHashError, match="bytes where"):
        pretrained.fetch_checkpoint(TINY)


_FETCH = """
import sys
from keras_nfnets import pretrained
path, params = pretrained.fetch_checkpoint(sys.argv[1], base_url=sys.argv[2])
print("fetched", path, len(params))
"""


def _fetch_proc(tmp_path, url, name=TINY):
    from training_helpers import env  # pylint: disable=import-outside-toplevel
    return subprocess.Popen(
        [sys.executable, "-c", _FETCH, name, url], cwd=REPO_ROOT,
        env=env(KERAS_HOME=str(tmp_path / "keras_home"),
                KERAS_BACKEND="tensorflow"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_one_keras_home_both_succeed(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    _serve_tiny(folder)
    server = _SlowServer(folder, delay=0.25)  # ~4 s for the tiny file
    try:
        first = _fetch_proc(tmp_path, server.url)
        time.sleep(1)
        second = _fetch_proc(tmp_path, server.url)
        outs = [p.communicate(timeout=300) for p in (first, second)]
    finally:
        server.stop()
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    assert all("fetched" in out for out, _ in outs)
    cached = _cache(tmp_path) / TINY
    assert _sha(cached) == _sha(fixture_path(TINY))
    assert [f for f in os.listdir(_cache(tmp_path)) if f.endswith(".part")] \
        == []


def test_kill_mid_download_leaves_no_partial_file(tmp_path, monkeypatch):
    folder = tmp_path / "www"
    folder.mkdir()
    _serve_tiny(folder)
    server = _SlowServer(folder, delay=0.5)
    try:
        proc = _fetch_proc(tmp_path, server.url)
        deadline = time.time() + 240
        while not server.requests and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # a few chunks in
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        server.stop()
    cache = _cache(tmp_path)
    assert not (cache / TINY).exists()  # never a partial file by that name
    fast = _Server(folder)
    try:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
        path, _ = pretrained.fetch_checkpoint(TINY, base_url=fast.url)
    finally:
        fast.stop()
    assert _sha(path) == _sha(fixture_path(TINY))
    assert [f for f in os.listdir(cache) if f.endswith(".part")] == []


def test_file_failing_the_loader_is_removed_with_its_conversion(served,
                                                                tmp_path):
    """A cached download that the loader refuses goes, with its converted
    .weights.h5, even though its sha256 was recorded: the next call
    downloads it again."""
    folder, server = served
    _serve_tiny(folder)
    converted = pathlib.Path(
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10))
    cache = _cache(tmp_path)
    broken = bytearray((cache / TINY).read_bytes())
    broken[191] = ord("b")  # NONE -> BUILD: crashed numpy before
    (cache / TINY).write_bytes(bytes(broken))
    record = json.loads((cache / pretrained.HASH_RECORD).read_text())
    record[TINY] = _sha(cache / TINY)  # as if accepted on first use
    record.pop(converted.name)  # and the conversion not trusted
    (cache / pretrained.HASH_RECORD).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="removed from the cache"):
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
    assert not (cache / TINY).exists() and not converted.exists()
    pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
    assert len(server.requests) == 2


def _mount_tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                          "tmpfs", str(path)], capture_output=True)
    if out.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): "
                    + out.stderr.decode()[-200:])
    return path


def _umount(path):
    subprocess.run(["umount", str(path)], check=False)


def test_read_only_cache_with_verified_files_is_used(served, tmp_path,
                                                     monkeypatch):
    folder, server = served
    _serve_tiny(folder)
    home = _mount_tmpfs(tmp_path / "ro_home", "16m")
    try:
        monkeypatch.setenv("KERAS_HOME", str(home))
        reference = deepmind_fixture("nfnet_tiny_reference.npz")
        pretrained.load_pretrained(_tiny_model(), TINY, classes=10)
        subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
        server.stop()
        for converted in (True, False):
            if not converted:  # only the verified download: converted now
                subprocess.run(["mount", "-o", "remount,rw", str(home)],
                               check=True)
                for f in (home / "models").glob("*.weights.h5"):
                    f.unlink()
                subprocess.run(["mount", "-o", "remount,ro", str(home)],
                               check=True)
            model = _tiny_model()
            pretrained.load_pretrained(model, TINY, classes=10)
            assert relative_error(_run(model, reference["inputs"]),
                                  reference["logits"]) < 1e-4
    finally:
        _umount(home)


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
