"""DeepMind's published ImageNet weights (`weights="imagenet"`).

`NFNetF0(weights="imagenet")` ... `NFNetF6(weights="imagenet")`:

1. `keras.utils.get_file` downloads `F{n}_haiku.npz` from
   `https://storage.googleapis.com/dm-nfnets/` (or the mirror named by the
   `KERAS_NFNETS_WEIGHTS_URL` environment variable / `pretrained.BASE_URL`)
   into the Keras cache (`$KERAS_HOME/models`, default `~/.keras/models`),
   with a progress bar.
2. The file is verified: its sha256 (see "Verification" below), then its
   content, read by the restricted unpickler of `keras_nfnets.weights` (no
   code is executed), then its structure: module count (DeepMind's F-n file
   has 84*(n+1)+10 modules), every tensor name and shape.
3. It is converted once: the weights are assigned to the model and saved
   beside the download as a Keras `.weights.h5`, so later loads are a plain
   `model.load_weights` that needs neither the network nor the pickle.

Verification. A sha256 in `KNOWN_SHA256` is enforced on every download and
every cache hit. DeepMind does not publish checksums for its files and this
package was written without network access, so the table holds no hash for
F0-F6 (none was invented). For those files the policy is *trust on first
use*: the first download must pass the strict structure checks, then its
sha256 is recorded in `keras_nfnets_sha256.json` in the cache folder, and
every later use (cache hit or re-download) must match the recorded hash. A
file that fails any check is deleted from the cache, so the next call
downloads it again instead of failing on a stuck bad copy. The converted
`.weights.h5` files are recorded the same way and re-converted from the
verified checkpoint when they no longer match.
"""

import hashlib
import json
import os
import tempfile
import warnings

import keras

from keras_nfnets import weights as nf_weights

PUBLISHED = ("F0", "F1", "F2", "F3", "F4", "F5", "F6")

#: DeepMind's bucket; `F{n}_haiku.npz` is appended.
BASE_URL = "https://storage.googleapis.com/dm-nfnets/"
#: Environment variable naming a mirror of BASE_URL (used by tests).
URL_ENV = "KERAS_NFNETS_WEIGHTS_URL"
CACHE_SUBDIR = "models"
HASH_RECORD = "keras_nfnets_sha256.json"

#: sha256 of published checkpoint files, enforced when present. DeepMind
#: publishes none and none could be computed offline, so F0-F6 rely on
#: trust-on-first-use (see the module docstring). Add verified hashes here
#: as `"F0_haiku.npz": "<64 hex digits>"`; never guess one.
KNOWN_SHA256 = {}

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
    """Where downloads and converted weights live (as `get_file` decides):
    `cache_dir` or $KERAS_HOME or ~/.keras, then `models/`."""
    base = os.path.expanduser(
        cache_dir or os.environ.get("KERAS_HOME") or "~/.keras")
    os.makedirs(base, exist_ok=True)
    if not os.access(base, os.W_OK):
        base = os.path.join(tempfile.gettempdir(), ".keras")
    return os.path.join(base, CACHE_SUBDIR)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        data = self._read()
        if digest is None:
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
    # Verified: assign (strict names and shapes) and keep the Keras form.
    nf_weights.assign_deepmind_weights(model, params, skip_layers=skip_layers,
                                       source=path)
    tmp = converted[:-len(".weights.h5")] + f".{os.getpid()}.part.weights.h5"
    try:
        model.save_weights(tmp)
        os.replace(tmp, converted)
    finally:
        _remove(tmp)
    records.set(os.path.basename(converted), sha256(converted))
    return converted


def _converted_name(fname, model, skip_layers):
    """One converted file per layer layout: Keras weights files are
    positional, so with/without top and preprocessing get their own."""
    stem = fname[:-len(".npz")] if fname.endswith(".npz") else fname
    top = "notop" if "linear" in skip_layers else "top"
    layer_names = {layer.name for layer in model.layers}
    prep = "" if "preprocessing" in layer_names else "-noprep"
    return f"{stem}.keras_nfnets-{top}{prep}.weights.h5"


def _load_converted(model, path, records):
    """Plain `load_weights` of the cached conversion, if it is intact."""
    if not os.path.exists(path):
        return False
    name = os.path.basename(path)
    recorded = records.get(name)
    if recorded is None or sha256(path) != recorded:
        _remove(path)  # unknown or altered: convert again from the source
        records.set(name, None)
        return False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except (ValueError, KeyError, OSError):
            return False
    # Keras only warns when it skips part of a file: treat as a miss.
    return not any("Skipping" in str(w.message) for w in caught)


def fetch_checkpoint(fname, *, base_url=None, file_hash=None, cache_dir=None,
                     label=None, records=None, model=None, classes=None,
                     skip_layers=()):
    """`get_file` + verification of a DeepMind checkpoint.

    Returns `(path, params)`. With `model`, the file's structure must fit it
    exactly (see `check_structure`). A download failing its hash, or an
    unverified one failing the content checks, is removed from the cache.
    """
    label = label or fname
    folder = cache_folder(cache_dir)
    records = records or _HashRecord(folder)
    known = file_hash or KNOWN_SHA256.get(fname)
    recorded = records.get(fname)
    expected = known or recorded
    origin = (base_url or weights_base_url()).rstrip("/") + "/" + fname
    target = os.path.join(folder, fname)
    try:
        path = keras.utils.get_file(
            fname, origin=origin, file_hash=expected, hash_algorithm="sha256",
            cache_subdir=CACHE_SUBDIR, cache_dir=os.path.dirname(folder))
    except ValueError as e:
        if "hash" not in str(e).lower() or not os.path.exists(target):
            raise
        actual = sha256(target)
        _remove(target)
        how = ("the published hash" if known else
               "the hash recorded when it was first downloaded "
               f"(in {records.path})")
        hint = ("" if known else
                " If the file legitimately changed upstream, delete its "
                f"entry from {records.path} to accept the new one.")
        raise WeightsHashError(
            f"Downloaded {label} weights from {origin} fail verification: "
            f"sha256 {actual} does not match {how}, {expected}. The file "
            "was removed from the cache; the next call downloads it "
            f"again.{hint}") from None
    except Exception as e:  # get_file's network errors are bare Exceptions
        raise OSError(
            f"Could not download {label} weights from {origin}: {e}. Set "
            f"${URL_ENV} to a mirror holding {fname}, or download it "
            "yourself and pass its path as `weights=`.") from e
    try:
        if fname.endswith(".safetensors"):  # timm's format: timm_weights
            from keras_nfnets import timm_weights  # pylint: disable=import-outside-toplevel
            params = timm_weights.read_checked(
                path, model, classes=classes, skip_layers=skip_layers)
        else:
            params = nf_weights.load_deepmind_checkpoint(path)
        if model is not None and not fname.endswith(".safetensors"):
            check_structure(params, model, classes=classes,
                            skip_layers=skip_layers, label=label,
                            source=path)
    except nf_weights.CheckpointError as e:
        if expected is not None:  # an authentic file: the model differs
            raise
        _remove(path)
        raise type(e)(
            f"{e}\nThe file was removed from the cache ({path}); the next "
            "call downloads it again.") from None
    if expected is None:  # trust on first use: the file passed every check
        records.set(fname, sha256(path))
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
