"""`keras_nfnets.weights.download`: fetch, lock, verify, cache, for every
source, through `weights.load.fetch_and_load` (what "imagenet" does).

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
from keras_nfnets import presets, variants
from keras_nfnets.weights import (CheckpointError, DownloadError,
                                  WeightsHashError, WrongVariantError,
                                  deepmind, download, load,
                                  load_deepmind_checkpoint)
from keras_nfnets.weights.__main__ import save_deepmind_checkpoint
from conftest import REPO as REPO_ROOT
from conftest import LoopbackServer as _Server
from conftest import deepmind_fixture, fixture_path, relative_error

TINY = "nfnet_tiny_haiku.npz"
URL_ENV = presets.URL_ENVS["deepmind"]
ACCEPT_ENV = presets.ACCEPT_ENV
HASH_RECORD = download.HASH_RECORD
F0 = presets.PRESETS["F0"]
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
    monkeypatch.setenv(URL_ENV, server.url)
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


def _load(model, name=TINY, **kwargs):
    """The tiny DeepMind file from the served folder: `fetch_and_load`;
    returns the cached file's path."""
    kwargs.setdefault("classes", 10)
    return load.fetch_and_load(model, name, **kwargs).path


def _fetch(name, **kwargs):
    """`download.fetch` of a DeepMind-format file from the mirror."""
    base = kwargs.pop("base_url", None) or load.base_url("deepmind")
    return download.fetch(base + name, name,
                          reader=load_deepmind_checkpoint,
                          mirror_env=URL_ENV, publisher="DeepMind", **kwargs)


def _fetch_f0(**kwargs):
    """F0's row: its published md5 and size are checked."""
    return _fetch("F0_haiku.npz", md5=F0["md5"], size=F0["size"], **kwargs)


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
    save_deepmind_checkpoint(model, path)
    return model


def test_tiny_download_verify_then_cache_with_server_stopped(
        served, tmp_path):
    folder, server = served
    _serve_tiny(folder)
    reference = deepmind_fixture("nfnet_tiny_reference.npz")

    model = _tiny_model()
    cached = _load(model)
    logits = _run(model, reference["inputs"])
    assert relative_error(logits, reference["logits"]) < 1e-4
    cache = _cache(tmp_path)
    assert pathlib.Path(cached) == cache / TINY
    record = json.loads((cache / HASH_RECORD).read_text())
    assert record == {TINY: _sha(fixture_path(TINY))}  # trust on first use
    assert server.requests == ["/" + TINY]

    server.stop()  # the second load reads the verified cached file
    again = _tiny_model()
    assert _load(again) == cached
    np.testing.assert_allclose(_run(again, reference["inputs"]),
                               logits, rtol=0, atol=0)


def test_include_top_false_uses_its_own_cache_and_any_input_size(
        served, tmp_path):
    folder, _ = served
    _serve_tiny(folder)
    full = _tiny_model()
    _load(full, TINY, classes=10)
    features = keras.Model(full.input, full.get_layer("final_act").output)
    x = deepmind_fixture("nfnet_tiny_reference.npz")["inputs"]

    notop = _tiny_model(include_top=False, input_shape=(None, None, 3))
    _load(notop, skip_layers=("linear",))
    np.testing.assert_allclose(_run(notop, x),
                               _run(features, x), atol=1e-6)
    assert _run(notop, np.zeros((1, 72, 56, 3))).shape == (
        1, 3, 2, 256)
    # The classifier is still verified when skipped.
    with pytest.raises(WrongVariantError, match="classifier"):
        _load(
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
    monkeypatch.setenv(ACCEPT_ENV, _sha(folder / "F0_haiku.npz"))
    params = load_deepmind_checkpoint(folder / "F0_haiku.npz")
    assert len(params) == deepmind.module_count("F0") == 94

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
    monkeypatch.setenv(ACCEPT_ENV, _sha(folder / "F0_haiku.npz"))
    with pytest.raises(WrongVariantError,
                       match=r"178 modules.*needs 94.*NFNet-F1"):
        keras_nfnets.NFNetF0(weights="imagenet", include_top=False)
    assert not (_cache(tmp_path) / "F0_haiku.npz").exists()


def test_hash_mismatch_on_download_removes_the_file(served, tmp_path):
    folder, server = served
    _serve_tiny(folder)
    with pytest.raises(WeightsHashError,
                       match="does not match the published hash"):
        _load(_tiny_model(), TINY, classes=10,
                                   file_hash="0" * 64)
    assert not (_cache(tmp_path) / TINY).exists()
    # Not a stuck cache: the next call downloads again and succeeds.
    _load(_tiny_model(), TINY, classes=10,
                               file_hash=_sha(fixture_path(TINY)))
    assert server.requests == ["/" + TINY] * 2


def test_known_hash_table_is_enforced(served, tmp_path, monkeypatch):
    """A sha256 in the presets row is enforced for weights="imagenet"."""
    folder, _ = served
    monkeypatch.setitem(variants.NFNET_VARIANTS, "F0", variants.NFNetConfig(
        depth=(1, 2, 6, 3), **TINY_WIDTHS))
    _f_layout_checkpoint(folder / "F0_haiku.npz", (1, 2, 6, 3))
    monkeypatch.setitem(presets.PRESETS, "F0", {**F0, "sha256": "f" * 64})
    with pytest.raises(WeightsHashError, match="published hash"):
        keras_nfnets.NFNetF0(weights="imagenet", input_shape=(40, 40, 3))
    assert not (_cache(tmp_path) / "F0_haiku.npz").exists()


def test_recorded_hash_is_enforced_and_bad_cache_redownloaded(served,
                                                              tmp_path):
    folder, server = served
    served_file = _serve_tiny(folder)
    _load(_tiny_model())
    cached = _cache(tmp_path) / TINY
    # A damaged cached copy is replaced by a fresh download ...
    cached.write_bytes(cached.read_bytes()[:1000])
    _load(_tiny_model())
    assert len(server.requests) == 2 and _sha(cached) == _sha(served_file)
    # ... and a changed upstream file is refused against the recorded hash.
    params = load_deepmind_checkpoint(served_file)
    params["NFNet/~/linear"]["b"] = params["NFNet/~/linear"]["b"] + 1
    with open(served_file, "wb") as f:
        pickle.dump(params, f, protocol=4)
    cached.write_bytes(b"damaged")
    with pytest.raises(WeightsHashError,
                       match="recorded when it was first downloaded"):
        _load(_tiny_model())
    assert not cached.exists()


def test_truncated_download(served, tmp_path):
    folder, _ = served
    data = fixture_path(TINY).read_bytes()
    (folder / TINY).write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="ends early") as err:
        _load(_tiny_model())
    assert "removed from the cache" in str(err.value)
    assert not (_cache(tmp_path) / TINY).exists()
    assert not (_cache(tmp_path) / HASH_RECORD).exists()
    (folder / TINY).write_bytes(data)  # the next call downloads again
    _load(_tiny_model())


@pytest.mark.parametrize("content,message", [
    (b"<html><body>503 Service Unavailable</body></html>", "not a pickle"),
    (b"\x80\x02}q\x00\xff\xfe\xfd", "invalid pickle data"),
])
def test_corrupt_download(served, tmp_path, content, message):
    folder, _ = served
    (folder / TINY).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        _load(_tiny_model())
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
        _load(_tiny_model())
    assert not marker.exists()
    assert not (_cache(tmp_path) / TINY).exists()


def test_unreachable_server_says_how_to_fix(served):
    with pytest.raises(DownloadError, match=URL_ENV) as err:
        _load(_tiny_model(), "missing.npz", classes=10)
    assert isinstance(err.value, OSError)  # as before the hierarchy


# ----------------------------------------------- issue 14 / issue 17 (md5)

class _SlowServer(_Server):
    """Serves its folder in `chunk`-byte pieces, `delay` seconds apart."""

    def __init__(self, folder, delay, chunk=1 << 16):
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
                    for i in range(0, len(data), chunk):
                        self.wfile.write(data[i:i + chunk])
                        self.wfile.flush()
                        time.sleep(delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.serve(Handler)


def test_a_server_dripping_bytes_hits_the_read_timeout(tmp_path,
                                                      monkeypatch):
    """One byte every 2 s: each read returns within any per-read socket
    timeout above 2 s, so only the stall rule (fewer than MIN_BYTES in
    the timeout window) ends it. The window (2.5 s) is checked when the
    second byte arrives, at about 4 s; a window below the byte interval
    would test the plain socket timeout instead."""
    folder = tmp_path / "www"
    folder.mkdir()
    _serve_tiny(folder)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(download.TIMEOUT_ENV, "2.5")
    server = _SlowServer(folder, delay=2, chunk=1)
    try:
        start = time.monotonic()
        with pytest.raises(DownloadError, match="stalled.*read timeout"):
            _fetch(TINY, base_url=server.url)
        assert time.monotonic() - start < 15
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()  # the handler thread is a daemon
    cache = _cache(tmp_path)
    assert [f for f in os.listdir(cache) if f.endswith(".part")] == []
    assert not (cache / TINY).exists()


def test_md5_table_refuses_a_wrong_f0_then_opt_out(served, tmp_path,
                                                   monkeypatch):
    """A DeepMind-named file whose md5/size do not match the published
    list is refused on download; accepting it takes its sha256."""
    folder, server = served
    wrong = _serve_tiny(folder, "F0_haiku.npz")
    cache = _cache(tmp_path)
    with pytest.raises(WeightsHashError) as err:
        _fetch_f0(label="NFNet-F0")
    message = str(err.value)
    for part in ("not the file DeepMind published",
                 "where DeepMind's file has 285,976,842",
                 "where the published list has "
                 "0a41039da1cb43adf47f1b7d86ddfe0f",
                 f"file_hash='{_sha(wrong)}'",
                 f"{ACCEPT_ENV}={_sha(wrong)}"):
        assert part in message, message
    assert sorted(os.listdir(cache)) == [".F0_haiku.npz.lock"]

    # The deliberate opt-out: exactly this file, by its sha256.
    path, params = _fetch_f0(file_hash=_sha(wrong))
    assert _sha(path) == _sha(wrong) and "NFNet/~/linear" in params
    record = json.loads((cache / HASH_RECORD).read_text())
    assert record["F0_haiku.npz"] == _sha(wrong)
    os.remove(path)
    monkeypatch.setenv(ACCEPT_ENV, _sha(wrong))
    _fetch_f0()
    assert len(server.requests) == 3


def test_matching_md5_and_size_are_accepted(served, tmp_path, monkeypatch):
    folder, _ = served
    data = _serve_tiny(folder).read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    path, _ = _fetch(TINY, md5=md5, size=len(data))
    record = json.loads((_cache(tmp_path) / HASH_RECORD)
                        .read_text())
    assert record[TINY] == hashlib.sha256(data).hexdigest() == _sha(path)
    os.remove(path)
    with pytest.raises(WeightsHashError, match="bytes where"):
        _fetch(TINY, md5=md5, size=len(data) + 1)


_FETCH = """
import sys
from keras_nfnets.weights import download, load_deepmind_checkpoint
path, params = download.fetch(sys.argv[2] + sys.argv[1], sys.argv[1],
                              reader=load_deepmind_checkpoint)
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
        path, _ = _fetch(TINY, base_url=fast.url)
    finally:
        fast.stop()
    assert _sha(path) == _sha(fixture_path(TINY))
    assert [f for f in os.listdir(cache) if f.endswith(".part")] == []


def test_file_failing_the_reader_is_removed(served, tmp_path):
    """A cached download that the reader refuses goes, even though its
    sha256 was recorded: the next call downloads it again."""
    folder, server = served
    _serve_tiny(folder)
    _load(_tiny_model())
    cache = _cache(tmp_path)
    broken = bytearray((cache / TINY).read_bytes())
    broken[191] = ord("b")  # NONE -> BUILD: crashed numpy before
    (cache / TINY).write_bytes(bytes(broken))
    record = json.loads((cache / HASH_RECORD).read_text())
    record[TINY] = _sha(cache / TINY)  # as if accepted on first use
    (cache / HASH_RECORD).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="removed from the cache"):
        _load(_tiny_model())
    assert not (cache / TINY).exists()
    _load(_tiny_model())
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
        _load(_tiny_model())
        subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
        server.stop()
        model = _tiny_model()
        _load(model)
        assert relative_error(_run(model, reference["inputs"]),
                              reference["logits"]) < 1e-4
    finally:
        _umount(home)
