"""Fetch, lock, verify, cache: how a published weights file reaches disk.

`fetch(url, file, ...)` is the one path for every source (DeepMind's
pickles, timm's safetensors):

1. The cache folder is `$KERAS_HOME/models` (default `~/.keras/models`, as
   `keras.utils.get_file`); every file is cached under its own name there
   and the sha256 of each accepted file is recorded in
   `keras_nfnets_sha256.json` beside it.
2. A cached copy is verified (below); a damaged one is downloaded again.
3. A download goes to a temporary `.part` name in the cache folder under a
   file lock (`.<file>.lock`), so processes sharing one cache take turns
   and a killed download leaves no file under the real name. A server that
   stalls (fewer than `MIN_BYTES` in `read_timeout()` seconds) is an error
   (`DownloadError`), and the `.part` file is removed.
4. Verification: a sha256 (`sha256=`, or the row's) is enforced when
   given; else the published md5 / size; else the sha256 recorded on first
   use (trust on first use). A mismatch raises `WeightsHashError` saying
   what it means and how to accept the file deliberately by its sha256
   (`file_hash=`, or $KERAS_NFNETS_ACCEPT_SHA256).
5. The verified file is renamed atomically into place, then read by the
   format's `reader` and checked by `check`; a file failing either is
   removed from the cache (unless it matched a published hash: then the
   model, not the file, is wrong), so the next call downloads it again.

A read-only cache that holds verified files is used as is; without the file
the download goes to a temporary folder.

Example:
>>> path, params = fetch("https://storage.googleapis.com/dm-nfnets/"
...                      "F0_haiku.npz", "F0_haiku.npz",
...                      reader=deepmind.load_deepmind_checkpoint)
"""

import contextlib
import glob
import hashlib
import json
import os
import tempfile
import time
import urllib.error
import urllib.request

try:  # POSIX file locks; without them (Windows) downloads are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

import keras

from keras_nfnets import presets
from keras_nfnets.weights.errors import (CheckpointError, DownloadError,
                                         WeightsHashError)

CACHE_SUBDIR = "models"
HASH_RECORD = "keras_nfnets_sha256.json"
ACCEPT_ENV = presets.ACCEPT_ENV
#: Environment variable: seconds a download may go without receiving
#: `MIN_BYTES` before it is abandoned (default `READ_TIMEOUT`).
TIMEOUT_ENV = "KERAS_NFNETS_READ_TIMEOUT"
READ_TIMEOUT = 60.0
MIN_BYTES = 1024


def read_timeout():
    """Seconds a download may stall: $KERAS_NFNETS_READ_TIMEOUT or 60."""
    value = os.environ.get(TIMEOUT_ENV)
    try:
        return float(value) if value else READ_TIMEOUT
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV}={value!r} is not a number of "
                         "seconds.") from None


def cache_folder(cache_dir=None):
    """`cache_dir` or $KERAS_HOME or ~/.keras, then `models/` (as
    `keras.utils.get_file`). It may be read-only."""
    base = os.path.expanduser(
        cache_dir or os.environ.get("KERAS_HOME") or "~/.keras")
    folder = os.path.join(base, CACHE_SUBDIR)
    with contextlib.suppress(OSError):
        os.makedirs(folder, exist_ok=True)
    return folder


def writable(folder):
    return os.path.isdir(folder) and os.access(folder, os.W_OK)


def _fallback_folder():
    """A writable cache for downloads when the configured one is not."""
    folder = os.path.join(tempfile.gettempdir(), ".keras", CACHE_SUBDIR)
    os.makedirs(folder, exist_ok=True)
    return folder


def digests(path):
    """(sha256, md5, size) of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), size


def sha256(path):
    return digests(path)[0]


@contextlib.contextmanager
def file_lock(folder, fname):
    """An exclusive lock on `folder/.fname.lock` (POSIX `flock`)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(os.path.join(folder, f".{fname}.lock"), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class HashRecord:
    """`{file name: sha256}` recorded on first use, in the cache folder."""

    def __init__(self, folder):
        self.path = os.path.join(folder, HASH_RECORD)

    def _read(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, name):
        return self._read().get(name)

    def set(self, name, digest):
        if not writable(os.path.dirname(self.path)):
            return  # a read-only cache: nothing new to record
        data = self._read()
        if digest is None:
            if name not in data:
                return
            data.pop(name, None)
        else:
            data[name] = digest
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _forget(folder, fname, records, keep_record=False):
    """Removes a cached file and (unless `keep_record`) its recorded
    sha256: a failed verification or parse."""
    remove(os.path.join(folder, fname))
    if not keep_record:
        records.set(fname, None)


def download(url, folder, fname, label, mirror_env=None):
    """Downloads `url` to a temporary `.part` file in `folder` (progress
    bar; a stalled server is an error). Returns its path; the caller
    verifies and renames it."""
    timeout = read_timeout()
    fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part",
                               dir=folder)
    hint = (f"Set ${mirror_env} to a mirror holding {fname}, or download"
            if mirror_env else "Download") + \
        " it yourself and pass its path as `weights=`."
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            bar = keras.utils.Progbar(int(total) if total else None,
                                      unit_name="B")
            done, window_start, window_bytes = 0, time.monotonic(), 0
            while True:
                chunk = response.read1(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                window_bytes += len(chunk)
                bar.update(done)
                now = time.monotonic()
                if now - window_start >= timeout:
                    if window_bytes < MIN_BYTES:
                        raise TimeoutError(
                            f"read timeout: {window_bytes} bytes in the last "
                            f"{now - window_start:.0f} s (at least "
                            f"{MIN_BYTES} per {timeout:g} s expected, "
                            f"${TIMEOUT_ENV})")
                    window_start, window_bytes = now, 0
    except (urllib.error.URLError, OSError, ValueError) as e:
        remove(tmp)
        kind = ("stalled" if isinstance(e, TimeoutError) or "timed out"
                in str(e) else "failed")
        raise DownloadError(
            f"Could not download {label} weights from {url}: the download "
            f"{kind} ({e}). {hint}") from e
    except BaseException:
        remove(tmp)
        raise
    return tmp


def _verify(path, url, label, *, md5, size, pinned, recorded, records,
            accept, publisher):
    """Checks a file against what is known of it. Returns `(sha256,
    authentic)` (authentic: it matched a published hash), or raises
    `WeightsHashError` (the file is left for the caller)."""
    actual, actual_md5, actual_size = digests(path)
    if accept and actual == accept:
        return actual, False  # deliberately accepted by its sha256
    if pinned:
        if actual != pinned:
            raise WeightsHashError(
                f"Downloaded {label} weights from {url} fail verification: "
                f"sha256 {actual} does not match the published hash, "
                f"{pinned}. The file was removed from the cache; the next "
                "call downloads it again.")
        return actual, True
    if md5 or size is not None:
        wrong = []
        if size is not None and actual_size != size:
            wrong.append(f"{actual_size:,} bytes where {publisher}'s file "
                         f"has {size:,}")
        if md5 and actual_md5 != md5:
            wrong.append(f"md5 {actual_md5} where the published list has "
                         f"{md5}")
        if wrong:
            raise WeightsHashError(
                f"{label} weights downloaded from {url} are not the file "
                f"{publisher} published: {'; '.join(wrong)}. This means the "
                "server sent something else (a changed or truncated "
                "upstream file, a mirror serving another file, or tampering)"
                "; it was removed from the cache and NOT loaded. If you trust "
                "this exact file, accept it deliberately by its sha256: "
                f"file_hash='{actual}' (fetch / load_pretrained) or "
                f"{ACCEPT_ENV}={actual} for weights='imagenet'.")
        return actual, True
    if recorded and actual != recorded:
        raise WeightsHashError(
            f"Downloaded {label} weights from {url} fail verification: "
            f"sha256 {actual} does not match the hash recorded when it was "
            f"first downloaded (in {records.path}), {recorded}. The file was "
            "removed from the cache; the next call downloads it again. If "
            "the file legitimately changed upstream, delete its entry from "
            f"{records.path} to accept the new one.")
    return actual, False


def fetch(url, fname, *, reader, check=None, md5=None, size=None,
          file_hash=None, cache_dir=None, label=None, mirror_env=None,
          publisher="the publisher"):
    """Download (or reuse from the cache), verify, read and check a file.

    Args:
        url: where the file is.
        fname: its name in the cache folder.
        reader: `path -> params`, the format's reader; raises
            `CheckpointError` on a bad file.
        check: `(params, path) -> None`; raises `CheckpointError` when the
            file does not fit.
        md5, size: what is published of the file.
        file_hash: a sha256 to enforce (also the way to accept a file that
            fails the md5 / size deliberately).
        cache_dir: the Keras cache root; default $KERAS_HOME or ~/.keras.
        label: how to name the file in messages.
        mirror_env: the environment variable naming a mirror (in messages).
        publisher: who published it (in messages).

    Returns:
        `(path, params)`.
    """
    label = label or fname
    folder = cache_folder(cache_dir)
    records = HashRecord(folder)
    accept = os.environ.get(ACCEPT_ENV) or None
    target = os.path.join(folder, fname)
    digest, authentic = None, False

    def verified(path):
        return _verify(path, url, label, md5=md5, size=size,
                       pinned=file_hash, recorded=records.get(fname),
                       records=records, accept=accept, publisher=publisher)

    def verified_cache_hit():
        nonlocal digest, authentic
        if not os.path.exists(target):
            return False
        try:
            digest, authentic = verified(target)
        except WeightsHashError:  # a damaged copy: download it again
            if writable(folder):
                _forget(folder, fname, records, keep_record=True)
            return False
        return True

    if not verified_cache_hit():
        if not writable(folder):
            folder = _fallback_folder()  # read-only cache without the file
            records = HashRecord(folder)
            target = os.path.join(folder, fname)
        with file_lock(folder, fname):
            if not verified_cache_hit():  # another process may have it now
                # Holding the lock, any partial download of this file is a
                # dead process's (killed mid-download): remove it.
                for stale in glob.glob(os.path.join(
                        glob.escape(folder), f".{glob.escape(fname)}.*.part")):
                    remove(stale)
                tmp = download(url, folder, fname, label, mirror_env)
                try:
                    digest, authentic = verified(tmp)
                except WeightsHashError:
                    remove(tmp)
                    _forget(folder, fname, records, keep_record=True)
                    raise
                os.replace(tmp, target)
    def dropped(e):
        _forget(folder, fname, records)
        return type(e)(f"{e}\nThe file was removed from the cache "
                       f"({target}); the next call downloads it again.")

    try:
        params = reader(target)
    except CheckpointError as e:
        if not writable(folder):
            raise
        raise dropped(e) from None
    if check is not None:
        try:
            check(params, target)
        except CheckpointError as e:
            if authentic or not writable(folder):
                raise  # an authentic file: the model differs
            raise dropped(e) from None
    if records.get(fname) != digest:  # the sha256 of what was accepted
        records.set(fname, digest)
    return target, params


# ---------------------------------------------------------------------------
# Hugging Face handles: weights="hf://timm/<repo>[@revision]".

HF_PREFIX = "hf://"
#: The file of a timm repository on the Hugging Face hub.
HF_FILE = "model.safetensors"


def parse_hf_handle(handle):
    """`"hf://owner/name[@revision]"` -> `(repo_id, revision or None)`.

    Example:
    >>> parse_hf_handle("hf://timm/eca_nfnet_l0.ra2_in1k@main")
    ('timm/eca_nfnet_l0.ra2_in1k', 'main')
    """
    rest = handle[len(HF_PREFIX):] if handle.startswith(HF_PREFIX) else ""
    repo_id, _, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (_ and not revision):
        raise ValueError(
            f"Expected a Hugging Face handle 'hf://owner/name' or "
            f"'hf://owner/name@revision' (e.g. "
            f"'hf://timm/eca_nfnet_l0.ra2_in1k'); got {handle!r}.")
    return repo_id, revision or None


def _remove_hf_copy(path):
    """Removes a file of the Hugging Face cache (the snapshot link and the
    blob it points to), so that the next call downloads it again."""
    blob = os.path.realpath(path)
    remove(path)
    if blob != os.path.abspath(path):
        remove(blob)


def hf_available():
    """Whether `huggingface_hub` can be imported (without importing it)."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    return importlib.util.find_spec("huggingface_hub") is not None


def fetch_hf(handle, *, reader, check=None, md5=None, size=None,
             file_hash=None, cache_dir=None, label=None, hint=None):
    """`fetch` for a Hugging Face handle: `huggingface_hub.hf_hub_download`
    brings `model.safetensors` (its cache, `HF_HUB_OFFLINE`, `HF_ENDPOINT`
    and tokens apply), then the same verification: `file_hash` enforced
    when given, else the published `md5` / `size`, else the sha256
    recorded on first use of the handle (in this package's
    `keras_nfnets_sha256.json`); then `reader` and `check`. A file failing
    any of them is removed from the Hugging Face cache.

    Args:
        handle: `"hf://owner/name[@revision]"`.
        label: how to name the file in messages (default: the handle).
        hint: what else the user can do, appended to a download error.

    Returns:
        `(path, params)`.

    Example:
    >>> path, params = fetch_hf("hf://timm/eca_nfnet_l0.ra2_in1k",
    ...                         reader=timm.read_safetensors)
    """
    # pylint: disable=import-outside-toplevel
    from keras_nfnets import optional
    repo_id, revision = parse_hf_handle(handle)
    label = label or handle
    hub = optional.require("huggingface_hub", f"weights={handle!r}")
    try:
        path = hub.hf_hub_download(repo_id, HF_FILE, revision=revision)
    except Exception as e:  # pylint: disable=broad-except
        raise DownloadError(
            f"Could not get {HF_FILE} of {handle} ({label}) from the Hugging "
            f"Face hub or its cache ({type(e).__name__}: {e}). Offline "
            "(HF_HUB_OFFLINE=1), the file must already be in the cache."
            + (f" {hint}" if hint else "")) from e
    folder = cache_folder(cache_dir)
    records = HashRecord(folder if writable(folder) else _fallback_folder())
    key = f"{HF_PREFIX}{repo_id}@{revision or 'main'}/{HF_FILE}"
    try:
        digest, authentic = _verify(
            path, handle, label, md5=md5, size=size, pinned=file_hash,
            recorded=records.get(key), records=records,
            accept=os.environ.get(ACCEPT_ENV) or None,
            publisher="the Hugging Face repository")
    except WeightsHashError:
        _remove_hf_copy(path)
        raise
    try:
        params = reader(path)
        if check is not None:
            check(params, path)
    except CheckpointError:
        if not authentic:  # an authentic file: the model differs
            _remove_hf_copy(path)
        raise
    if records.get(key) != digest:
        records.set(key, digest)
    return path, params
