"""DeepMind's published ImageNet weights (`weights="imagenet"`).

`NFNetF0(weights="imagenet")` ... `NFNetF6(weights="imagenet")`:

1. `F{n}_haiku.npz` is downloaded from `https://storage.googleapis.com/dm-nfnets/`
   (or the mirror named by the `KERAS_NFNETS_WEIGHTS_URL` environment
   variable / `pretrained.BASE_URL`) into the Keras cache
   (`$KERAS_HOME/models`, default `~/.keras/models`), with a progress bar:
   to a temporary name in that folder, verified, then renamed atomically,
   under a file lock (`.F0_haiku.npz.lock`), so a killed download leaves no
   partial file under the real name and processes sharing one cache wait
   for each other instead of reading each other's partial files.
2. The file is verified: its size and md5 or sha256 (see "Verification"),
   then its content, read by the restricted unpickler of
   `keras_nfnets.weights` (no code is executed), then its structure: module
   count (DeepMind's F-n file has 84*(n+1)+10 modules), every tensor name
   and shape.
3. It is converted once: the weights are assigned to the model and saved
   beside the download as a Keras `.weights.h5`, so later loads are a plain
   `model.load_weights` that needs neither the network nor the pickle.

Verification. DeepMind publishes no checksums. `KNOWN_MD5` holds the md5 of
F0-F6 as listed by a third-party JAX loader (ethanluoyc/jam,
`src/jam/models/nfnet/checkpoints.py`) and `KNOWN_SIZE` F0's size as
DeepMind's demo Colab logs it (285,976,842 bytes); a download must match
them from the first byte. A mismatch raises `WeightsHashError` saying what it
means (not the file those sources describe: a changed upstream file, a
mirror serving something else, or tampering) and how to proceed
deliberately: pass `file_hash=` (or set `KERAS_NFNETS_ACCEPT_SHA256`) to the
sha256 the error reports, which accepts exactly that file. A sha256 in
`KNOWN_SHA256` or given as `file_hash=` is enforced instead of the md5. The
sha256 of every accepted file is recorded in `keras_nfnets_sha256.json` in
the cache folder and enforced on every later cache hit; files without a
published hash are trusted on first use (they must pass the structure
checks). A file that fails any check is deleted from the cache with its
converted `.weights.h5`, so the next call downloads it again instead of
failing on a stuck bad copy. A read-only cache that holds verified files is
used as is. The converted `.weights.h5` files are recorded the same way and
re-converted from the verified checkpoint when they no longer match.
"""

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request

import keras
import numpy as np

from keras_nfnets import weights as nf_weights

PUBLISHED = ("F0", "F1", "F2", "F3", "F4", "F5", "F6")

#: DeepMind's bucket; `F{n}_haiku.npz` is appended.
BASE_URL = "https://storage.googleapis.com/dm-nfnets/"
#: Environment variable naming a mirror of BASE_URL (used by tests).
URL_ENV = "KERAS_NFNETS_WEIGHTS_URL"
CACHE_SUBDIR = "models"
HASH_RECORD = "keras_nfnets_sha256.json"

#: sha256 of published checkpoint files, enforced when present (instead of
#: the md5). DeepMind publishes none; add verified hashes here as
#: `"F0_haiku.npz": "<64 hex digits>"`; never guess one.
KNOWN_SHA256 = {}
#: md5 of DeepMind's files as listed by the third-party JAX loader
#: ethanluoyc/jam (src/jam/models/nfnet/checkpoints.py), checked on download.
KNOWN_MD5 = {
    "F0_haiku.npz": "0a41039da1cb43adf47f1b7d86ddfe0f",
    "F1_haiku.npz": "c9126bbfaf855f9ddb7ff3b902558781",
    "F2_haiku.npz": "7a018d8d1498020e2f5a8719a1e7f53f",
    "F3_haiku.npz": "d8e1e78d26db659c486150dbaccbe78a",
    "F4_haiku.npz": "f5974a7e3388aa81b91a9f1403e759a4",
    "F5_haiku.npz": "8639e925de951030651ac775b9f915c3",
    "F6_haiku.npz": "b16cca40ac1ecec2bd5e3273866da0c1",
}
#: Sizes in bytes: F0's as DeepMind's demo Colab logs it.
KNOWN_SIZE = {"F0_haiku.npz": 285976842}
#: Environment variable: the sha256 of a download to accept although it
#: does not match KNOWN_MD5 / KNOWN_SIZE (the deliberate opt-out).
ACCEPT_ENV = "KERAS_NFNETS_ACCEPT_SHA256"

#: ImageNet top-1 (%) DeepMind reports for its released checkpoints.
IMAGENET_TOP1 = {"F0": 83.6, "F1": 84.7, "F2": 85.1, "F3": 85.7,
                 "F4": 85.9, "F5": 86.0, "F6": 86.5}


class WeightsHashError(nf_weights.CheckpointError):
    """A downloaded checkpoint does not have the expected sha256."""


class WrongVariantError(nf_weights.CheckpointError):
    """A checkpoint is for a different architecture than the model."""


def check_available(variant):
    if variant is None or variant.upper() not in PUBLISHED:
        raise ValueError(
            f"No ImageNet weights are published for NFNet variant "
            f"{variant!r}: DeepMind released F0-F6 only (F7 and the '+' "
            "variants have none). Use weights=None or a weights file.")


def deepmind_module_count(n):
    """Modules in DeepMind's NFNet-F{n} checkpoint: 7 per block (conv0,
    conv1, conv1b, conv2, two SE linears, the block's skip_gain), 12*(n+1)
    blocks, 4 shortcut convs, 4 stem convs, final_conv and the classifier."""
    return 84 * (n + 1) + 10


def variant_for_module_count(count):
    """'F{n}' (base or '+') whose checkpoint has `count` modules, or None."""
    n, rem = divmod(count - 10, 84)
    return f"F{n - 1}" if rem == 0 and n >= 1 else None


def weights_base_url():
    """The download base URL: $KERAS_NFNETS_WEIGHTS_URL or `BASE_URL`."""
    url = os.environ.get(URL_ENV) or BASE_URL
    return url if url.endswith("/") else url + "/"


def cache_folder(cache_dir=None):
    """Where downloads and converted weights live: `cache_dir` or
    $KERAS_HOME or ~/.keras, then `models/` (as `keras.utils.get_file`).
    It may be read-only: verified files there are used as they are."""
    base = os.path.expanduser(
        cache_dir or os.environ.get("KERAS_HOME") or "~/.keras")
    folder = os.path.join(base, CACHE_SUBDIR)
    with contextlib.suppress(OSError):
        os.makedirs(folder, exist_ok=True)
    return folder


def _writable(folder):
    return os.path.isdir(folder) and os.access(folder, os.W_OK)


def _fallback_folder():
    """A writable cache for downloads when the configured one is not."""
    folder = os.path.join(tempfile.gettempdir(), ".keras", CACHE_SUBDIR)
    os.makedirs(folder, exist_ok=True)
    return folder


def sha256(path):
    return _digests(path)[0]


def _digests(path):
    """(sha256, md5, size) of a file."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), size


@contextlib.contextmanager
def _file_lock(folder, fname):
    """An exclusive lock on `folder/.fname.lock` (POSIX `flock`; processes
    sharing one cache take turns). Without fcntl (Windows), no lock."""
    try:
        import fcntl  # pylint: disable=import-outside-toplevel
    except ImportError:
        yield
        return
    with open(os.path.join(folder, f".{fname}.lock"), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class _HashRecord:
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
        if not _writable(os.path.dirname(self.path)):
            return  # a read-only cache: nothing new to record
        data = self._read()
        if digest is None:
            if name not in data:
                return
            data.pop(name, None)
        else:
            data[name] = digest
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _converted_stem(fname):
    return fname[:-len(".npz")] if fname.endswith(".npz") else fname


def _forget(folder, fname, records, keep_record=False):
    """Removes a cached download, its converted `.weights.h5` files and
    their records (a failed verification or parse). `keep_record` keeps the
    download's recorded sha256 (it still describes the accepted file)."""
    _remove(os.path.join(folder, fname))
    if not keep_record:
        records.set(fname, None)
    for converted in glob.glob(os.path.join(
            glob.escape(folder),
            glob.escape(_converted_stem(fname)) + ".keras_nfnets-*.weights.h5")):
        _remove(converted)
        records.set(os.path.basename(converted), None)


def _check_free_space(folder, needed, what):
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            f"Not enough free disk space in {folder} to write {what}: "
            f"{needed / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free. "
            "Free some space or point KERAS_HOME / the output elsewhere.")


def save_weights_safely(model, path):
    """`model.save_weights(path)` after a free-space check, through a
    temporary name in the same folder and an atomic rename: a full disk
    gives an OSError and leaves no partial file."""
    folder = os.path.dirname(os.path.abspath(path))
    needed = sum(int(np.prod(v.shape)) * np.dtype(
        keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in model.weights)
    _check_free_space(folder, needed + (1 << 20), os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                               suffix=".part.weights.h5", dir=folder)
    os.close(fd)
    try:
        model.save_weights(tmp, overwrite=True)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(f"Could not write {path}: {e}") from e
    finally:
        _remove(tmp)


def load_imagenet_weights(model, variant, skip_layers=()):
    """Loads DeepMind's ImageNet weights for NFNet-`variant` into `model`
    (what `weights="imagenet"` does). Returns the converted weights path."""
    check_available(variant)
    variant = variant.upper()
    return load_pretrained(
        model, f"{variant}_haiku.npz", classes=1000, skip_layers=skip_layers,
        label=f"NFNet-{variant}")


def load_pretrained(model, fname, *, classes, skip_layers=(), base_url=None,
                    file_hash=None, cache_dir=None, label=None):
    """Download, verify, convert once, cache: the path behind "imagenet".

    Works for any keras_nfnets model and DeepMind-format file, so it can be
    exercised with a small model and a local server.

    Args:
        model: the freshly built model to load into.
        fname: the checkpoint's file name on the server (`F0_haiku.npz`).
        classes: the classifier width stored in the checkpoint (1000 for
            ImageNet); checked even when the model has no top.
        skip_layers: Keras layer paths the model lacks (`("linear",)` with
            `include_top=False`).
        base_url: the server folder; default `weights_base_url()`.
        file_hash: sha256 to enforce; default `KNOWN_SHA256[fname]`, else
            the hash recorded on first use.
        cache_dir: the Keras cache root; default $KERAS_HOME or ~/.keras.
        label: how to name the checkpoint in messages.

    Returns:
        The path of the converted `.weights.h5` in the cache.
    """
    label = label or fname
    folder = cache_folder(cache_dir)
    records = _HashRecord(folder)
    converted = os.path.join(folder, _converted_name(fname, model,
                                                     skip_layers))
    if _load_converted(model, converted, records):
        return converted

    path, params = fetch_checkpoint(
        fname, base_url=base_url, file_hash=file_hash, cache_dir=cache_dir,
        label=label, records=records, model=model, classes=classes,
        skip_layers=skip_layers)
    # Verified: assign (strict names and shapes) and keep the Keras form
    # beside the download (a fallback folder if the cache is read-only).
    nf_weights.assign_deepmind_weights(model, params, skip_layers=skip_layers,
                                       source=path)
    folder = os.path.dirname(path)
    if not _writable(folder):  # a read-only cache: converted in memory
        return path
    converted = os.path.join(folder, os.path.basename(converted))
    records = _HashRecord(folder)
    save_weights_safely(model, converted)
    records.set(os.path.basename(converted), sha256(converted))
    return converted


def _converted_name(fname, model, skip_layers):
    """One converted file per weight layout. Keras weights files are
    positional, so the name carries a digest of the model's variables (path,
    shape and dtype, in order): a model of another layout (with/without top
    or preprocessing, other classes) never reads a file written for a
    different one, and a verified file always loads completely."""
    stem = _converted_stem(fname)
    top = "notop" if "linear" in skip_layers else "top"
    layout = hashlib.sha256(repr([
        (v.path, tuple(v.shape), str(v.dtype)) for v in model.weights
    ]).encode()).hexdigest()[:12]
    return f"{stem}.keras_nfnets-{top}-{layout}.weights.h5"


def _load_converted(model, path, records):
    """Plain `load_weights` of the cached conversion, if it is intact."""
    if not os.path.exists(path):
        return False
    name = os.path.basename(path)
    recorded = records.get(name)
    if recorded is None or sha256(path) != recorded:
        if _writable(os.path.dirname(path)):
            _remove(path)  # unknown or altered: convert again from the source
            records.set(name, None)
        return False
    try:
        model.load_weights(path)  # same layout (see `_converted_name`)
    except (ValueError, KeyError, OSError):
        return False
    return True


def _download(origin, folder, fname, label):
    """Downloads `origin` to a temporary file in `folder`. Returns its path
    (the caller verifies and renames it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                origin, timeout=60) as response:
            total = response.headers.get("Content-Length")
            bar = keras.utils.Progbar(int(total) if total else None,
                                      unit_name="B")
            done = 0
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                done += len(chunk)
                bar.update(done)
    except (urllib.error.URLError, OSError, ValueError) as e:
        _remove(tmp)
        raise OSError(
            f"Could not download {label} weights from {origin}: {e}. Set "
            f"${URL_ENV} to a mirror holding {fname}, or download it "
            "yourself and pass its path as `weights=`.") from e
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _verify(path, fname, origin, label, *, pinned, recorded, records,
            accept):
    """Checks a file's size / md5 / sha256 against what is known of it.
    Returns `(sha256, authentic)` (authentic: it matched a published hash),
    or raises WeightsHashError (the file is left for the caller)."""
    actual, md5, size = _digests(path)
    if accept and actual == accept:
        return actual, False  # deliberately accepted by its sha256
    if pinned:
        if actual != pinned:
            raise WeightsHashError(
                f"Downloaded {label} weights from {origin} fail verification: "
                f"sha256 {actual} does not match the published hash, {pinned}."
                " The file was removed from the cache; the next call downloads "
                "it again.")
        return actual, True
    known_md5, known_size = KNOWN_MD5.get(fname), KNOWN_SIZE.get(fname)
    if known_md5 or known_size:
        wrong = []
        if known_size is not None and size != known_size:
            wrong.append(f"{size:,} bytes where DeepMind's file has "
                         f"{known_size:,}")
        if known_md5 and md5 != known_md5:
            wrong.append(f"md5 {md5} where the published list has "
                         f"{known_md5}")
        if wrong:
            raise WeightsHashError(
                f"{label} weights downloaded from {origin} are not the file "
                f"DeepMind published: {'; '.join(wrong)}. This means the "
                "server sent something else (a changed or truncated "
                "upstream file, a mirror serving another file, or tampering)"
                "; it was removed from the cache and NOT loaded. If you trust "
                "this exact file, accept it deliberately by its sha256: "
                f"file_hash='{actual}' (load_pretrained/fetch_checkpoint) or "
                f"{ACCEPT_ENV}={actual} for weights='imagenet'.")
        return actual, True
    if recorded and actual != recorded:
        raise WeightsHashError(
            f"Downloaded {label} weights from {origin} fail verification: "
            f"sha256 {actual} does not match the hash recorded when it was "
            f"first downloaded (in {records.path}), {recorded}. The file was "
            "removed from the cache; the next call downloads it again. If "
            "the file legitimately changed upstream, delete its entry from "
            f"{records.path} to accept the new one.")
    return actual, False


def fetch_checkpoint(fname, *, base_url=None, file_hash=None, cache_dir=None,
                     label=None, records=None, model=None, classes=None,
                     skip_layers=(), loader=None, check=None):
    """Download (or reuse from the cache) and verify a checkpoint file.

    Returns `(path, params)`. The download goes to a temporary name in the
    cache folder, is verified (`file_hash` / `KNOWN_SHA256` sha256, else
    `KNOWN_MD5` / `KNOWN_SIZE`, else the sha256 recorded on first use), then
    renamed atomically, all under a file lock. A cached file is verified the
    same way (a bad one is downloaded again). Then `loader(path)` reads it
    (default: DeepMind's restricted unpickler) and `check(params, path)`
    checks it (default with `model`: `check_structure`); a file failing
    either is removed from the cache, with its converted `.weights.h5`.

    Args:
        fname: the file name on the server and in the cache.
        base_url: the server folder; default `weights_base_url()`.
        file_hash: a sha256 to enforce (also the way to accept a file that
            fails the md5 table deliberately).
        cache_dir: the Keras cache root; default $KERAS_HOME or ~/.keras.
        loader: `path -> params`; raises `CheckpointError` on a bad file.
        check: `(params, path) -> None`; raises `CheckpointError`.
    """
    label = label or fname
    folder = cache_folder(cache_dir)
    records = records or _HashRecord(folder)
    loader = loader or nf_weights.load_deepmind_checkpoint
    if check is None and model is not None:
        def check(params, path):
            check_structure(params, model, classes=classes,
                            skip_layers=skip_layers, label=label,
                            source=path)
    accept = os.environ.get(ACCEPT_ENV) or None
    pinned = file_hash or KNOWN_SHA256.get(fname)
    origin = (base_url or weights_base_url()).rstrip("/") + "/" + fname
    target = os.path.join(folder, fname)

    digest, authentic = None, False

    def verified_cache_hit():
        nonlocal digest, authentic
        if not os.path.exists(target):
            return False
        try:
            digest, authentic = _verify(
                target, fname, origin, label, pinned=pinned,
                recorded=records.get(fname), records=records, accept=accept)
        except WeightsHashError:  # a damaged copy: download it again
            if _writable(folder):
                _forget(folder, fname, records, keep_record=True)
            return False
        return True

    if not verified_cache_hit():
        if not _writable(folder):
            folder = _fallback_folder()  # read-only cache without the file
            records = _HashRecord(folder)
            target = os.path.join(folder, fname)
        with _file_lock(folder, fname):
            if not verified_cache_hit():  # another process may have it now
                # Holding the lock, any partial download of this file is a
                # dead process's (killed mid-download): remove it.
                for stale in glob.glob(os.path.join(
                        glob.escape(folder), f".{glob.escape(fname)}.*.part")):
                    _remove(stale)
                tmp = _download(origin, folder, fname, label)
                try:
                    digest, authentic = _verify(
                        tmp, fname, origin, label, pinned=pinned,
                        recorded=records.get(fname), records=records,
                        accept=accept)
                except WeightsHashError:
                    _remove(tmp)
                    _forget(folder, fname, records, keep_record=True)
                    raise
                os.replace(tmp, target)
    path = target
    try:
        params = loader(path)
    except nf_weights.CheckpointError as e:
        if _writable(folder):
            _forget(folder, fname, records)
        raise type(e)(
            f"{e}\nThe file was removed from the cache ({path}); the next "
            "call downloads it again.") from None
    if check is not None:
        try:
            check(params, path)
        except nf_weights.CheckpointError as e:
            if authentic or not _writable(folder):
                raise  # an authentic file: the model differs
            _forget(folder, fname, records)
            raise type(e)(
                f"{e}\nThe file was removed from the cache ({path}); the "
                "next call downloads it again.") from None
    if records.get(fname) != digest:  # the sha256 of what was accepted
        records.set(fname, digest)
    return path, params


def check_structure(params, model, *, classes=None, skip_layers=(),
                    label="checkpoint", source="checkpoint"):
    """Strict structure check of DeepMind `params` against `model`.

    The module count must match (a wrong variant is reported as such, e.g.
    an F1 file for F0), then every module, tensor name and shape.
    """
    roots = {m.split("/~/")[0] for m in params}
    root = roots.pop() if len(roots) == 1 else None
    expected = (len(nf_weights.keras_to_deepmind(model, root or "NFNet"))
                + len(skip_layers))
    if len(params) != expected:
        found = variant_for_module_count(len(params))
        like = (f"; {len(params)} modules is the layout of DeepMind's "
                f"NFNet-{found} (or {found}+)" if found else "")
        raise WrongVariantError(
            f"{source} is not a {label} checkpoint for this model "
            f"('{model.name}'): it has {len(params)} modules where the "
            f"model needs {expected} (DeepMind's NFNet-F<n> files have "
            f"84*(n+1)+10 modules: 94 for F0, 178 for F1){like}. Wrong "
            "variant?")
    if "linear" in skip_layers and root is not None:
        _check_classifier(params, model, root, classes, source)
    # Names and shapes of everything else: raises before assigning anything.
    targets = nf_weights.keras_to_deepmind(model, root or "NFNet")
    problems = []
    for module, group in targets.items():
        for p, var in group.items():
            value = params.get(module, {}).get(p)
            if value is None:
                problems.append(f"missing {module}/{p}")
            elif tuple(value.shape) != tuple(var.shape):
                problems.append(f"{module}/{p}: checkpoint "
                                f"{tuple(value.shape)} vs model "
                                f"{tuple(var.shape)}")
    if problems:
        shown = "; ".join(problems[:8])
        more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise WrongVariantError(
            f"{source} does not fit model '{model.name}' ({label}; wrong "
            f"variant?): {shown}{more}")


def _check_classifier(params, model, root, classes, source):
    final = model.get_layer("final_conv").filters
    want = {"w": (final, classes), "b": (classes,)}
    group = params.get(f"{root}/~/linear", {})
    got = {k: tuple(v.shape) for k, v in group.items()}
    if classes is not None and got != want:
        raise WrongVariantError(
            f"{source}: classifier '{root}/~/linear' has {got}, expected "
            f"{want} ({classes} classes on {final} features).")
