"""keras_nfnets.hub in fresh processes, two in all (CI time):

* a KerasHub preset of a tiny NFNet classifier and backbone, saved here
  with `save_to_preset`, loaded through KerasHub's base classes
  (`keras_hub.models.ImageClassifier.from_preset(dir)`,
  `keras_hub.models.Backbone.from_preset(dir)`) in a process that imported
  only `keras_nfnets` (which must not import keras_hub) before keras_hub:
  the same classes, outputs (< 1e-6) and preprocessing;
* `weights="hf://timm/<repo>@<revision>"` and `weights="imagenet"` for a
  timm model, through `huggingface_hub`: a loopback server set as
  `HF_ENDPOINT` serves what `hf_hub_download` asks for (timm-format
  `model.safetensors` files this test writes); the second process runs with
  `HF_HUB_OFFLINE=1` and the server stopped, from the Hugging Face cache;
  a corrupted cached file is refused with the package's `WeightsHashError`
  and removed. huggingface_hub reads `HF_ENDPOINT` and `HF_HUB_OFFLINE`
  when it is imported, hence one process per setting.

The served files hold DeepMind's tiny fixture (its parameters written in
timm's layout by `timm_helpers.keras_state`), so the logits and pooled
features are checked against DeepMind's reference outputs.
"""

import hashlib
import http.server
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("keras_hub")

from safetensors.numpy import save  # noqa: E402

import keras_nfnets  # noqa: E402
from conftest import (REPO, LoopbackServer, deepmind_fixture,  # noqa: E402
                      fixture_path, relative_error)
from hub_helpers import TINY  # noqa: E402
from keras_nfnets import presets  # noqa: E402
from keras_nfnets.hub import (NFNetBackbone,  # noqa: E402
                              NFNetImageClassifier,
                              NFNetImageClassifierPreprocessor,
                              NFNetImageConverter)
from timm_helpers import keras_state  # noqa: E402

TINY_REPO = "timm/nfnet_tiny.test"
ECA = presets.PRESETS["ECA-L0"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"

FRESH = r"""
import glob, json, os, sys
import numpy as np
import keras_nfnets
import keras
result = {"keras_hub_imported": "keras_hub" in sys.modules}
from keras_nfnets import variants
from keras_nfnets.weights.errors import WeightsHashError
args = json.loads(sys.argv[1])
out = {}

def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))

if args["presets"]:
    import keras_hub
    data = np.load(args["presets"])
    classifier = keras_hub.models.ImageClassifier.from_preset(args["task"])
    backbone = keras_hub.models.Backbone.from_preset(args["backbone"])
    pre = classifier.preprocessor
    out.update(preprocessed=numpy(pre.image_converter(data["images"])),
               preset_logits=numpy(classifier(pre(data["images"]))),
               features=numpy(backbone(data["crops"])))
    result["classes"] = [type(classifier).__name__, type(backbone).__name__,
                         type(pre).__name__,
                         type(pre.image_converter).__name__]

ref = np.load(args["reference"])
# ECA-L0's published row, its architecture shrunk to the tiny fixture's.
variants.NFNET_VARIANTS["ECA-L0"] = variants.get_config(args["config"])

def tiny():
    return keras_nfnets.NFNet(
        config=args["config"], classes=10, weights=args["handle"],
        input_shape=(40, 40, 3), include_preprocessing=False,
        classifier_activation=None)

out["logits"] = numpy(tiny()(ref["inputs"]))
out["pool"] = numpy(keras_nfnets.ECANFNetL0(
    weights="imagenet", include_top=False, pooling="avg",
    input_shape=(40, 40, 3), include_preprocessing=False)(ref["inputs"]))
if not args["presets"]:  # one flipped byte past the cached file's header
    blob, = glob.glob(os.path.join(os.environ["HF_HOME"], "hub",
                                   "models--timm--nfnet_tiny.test",
                                   "blobs", "*"))
    with open(blob, "r+b") as f:
        f.seek(-8, 2)
        byte = f.read(1)
        f.seek(-8, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    try:
        tiny()
    except WeightsHashError as e:
        result.update(refused=str(e), blob_left=os.path.exists(blob))
np.savez(args["out"], **out)
print(json.dumps(result))
"""


def _hf_server(folder, files):
    """A loopback Hugging Face endpoint serving `{repo: bytes}` as
    `<repo>/resolve/main/model.safetensors` (HEAD and GET)."""
    served = {f"/{repo}/resolve/main/model.safetensors":
              (data, hashlib.sha256(data).hexdigest())
              for repo, data in files.items()}
    server = LoopbackServer(folder)
    server.stop()  # the same server, answering as the Hugging Face hub

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            server.requests.append(self.path)

        def _head(self):
            if self.path not in served:
                self.send_error(404)
                return None
            data, etag = served[self.path]
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return data

        def do_HEAD(self):  # noqa: N802
            self._head()

        def do_GET(self):  # noqa: N802
            data = self._head()
            if data is not None:
                self.wfile.write(data)

    server.serve(Handler)
    return server


def _fresh(tmp, env, **args):
    args = dict(args, reference=str(fixture_path("nfnet_tiny_reference.npz")),
                config=str(fixture_path("nfnet_tiny_config.json")),
                handle=f"hf://{TINY_REPO}@main", out=str(tmp / "out.npz"))
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, json.dumps(args)], cwd=REPO,
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp / "out.npz") as data:
        out = {k: data[k] for k in data.files}
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def _tiny_file(classes):
    """DeepMind's tiny fixture in timm's layout, with a `classes`-way
    head (the fixture's own 10, or a seeded 1000-way one)."""
    model = keras_nfnets.NFNet(
        config=str(fixture_path("nfnet_tiny_config.json")), classes=10,
        weights=str(fixture_path("nfnet_tiny_haiku.npz")),
        input_shape=(40, 40, 3), include_preprocessing=False)
    state = keras_state(model)
    if classes != 10:
        rng = np.random.default_rng(0)
        width = state["head.fc.weight"].shape[1]
        state["head.fc.weight"] = rng.normal(
            size=(classes, width)).astype("float32")
        state["head.fc.bias"] = np.zeros(classes, "float32")
    return save(state)


@pytest.fixture(scope="module")
def hub_runs(tmp_path_factory):
    """Saves the presets, serves the files, runs the two processes."""
    tmp = tmp_path_factory.mktemp("hub")
    backbone = NFNetBackbone("ECA-L0", overrides=TINY["ECA-L0"],
                             image_shape=(32, 32, 3))
    converter = NFNetImageConverter.for_variant("ECA-L0", size=32)
    classifier = NFNetImageClassifier(
        backbone, num_classes=4,
        preprocessor=NFNetImageClassifierPreprocessor(converter))
    classifier.save_to_preset(str(tmp / "task"))
    backbone.save_to_preset(str(tmp / "backbone"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 40, 48, 3)).astype("float32")
    crops = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.savez(tmp / "inputs.npz", images=images, crops=crops)
    expected = {
        "preprocessed": converter(images),
        "preset_logits": classifier(converter(images)),
        "features": backbone(crops)}
    expected = {k: keras.ops.convert_to_numpy(v) for k, v in expected.items()}

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HF_") and k != "KERAS_BACKEND"
           and k not in presets.URL_ENVS.values()}
    env.update(HF_HOME=str(tmp / "hf"), KERAS_HOME=str(tmp / "k"),
               TF_CPP_MIN_LOG_LEVEL="2", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    server = _hf_server(tmp, {TINY_REPO: _tiny_file(10), ECA["hub_id"]:
                         _tiny_file(1000)})
    try:
        online = _fresh(tmp, dict(env, HF_ENDPOINT=server.url),
                        presets=str(tmp / "inputs.npz"),
                        task=str(tmp / "task"),
                        backbone=str(tmp / "backbone"))
    finally:
        server.stop()
    offline = _fresh(tmp, dict(env, HF_ENDPOINT=server.url,
                               HF_HUB_OFFLINE="1"), presets="")
    return dict(online=online, offline=offline, expected=expected,
                requests=server.requests)


def test_saved_presets_load_in_a_fresh_process_through_keras_hub(hub_runs):
    out, result = hub_runs["online"]
    assert result["keras_hub_imported"] is False  # by `import keras_nfnets`
    assert result["classes"] == [
        "NFNetImageClassifier", "NFNetBackbone",
        "NFNetImageClassifierPreprocessor", "NFNetImageConverter"]
    expected = hub_runs["expected"]
    np.testing.assert_array_equal(out["preprocessed"],
                                  expected["preprocessed"])
    for key in ("preset_logits", "features"):
        np.testing.assert_allclose(out[key], expected[key], rtol=0,
                                   atol=1e-6)


def test_hf_handle_loads_through_hf_endpoint_then_offline_cache(hub_runs):
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    assert f"/{TINY_REPO}/resolve/main/model.safetensors" in \
        hub_runs["requests"]
    for out, _ in (hub_runs["online"], hub_runs["offline"]):
        assert relative_error(out["logits"], ref["logits"]) < 1e-4
    # Offline, then a corrupted cached file is refused by the sha256
    # recorded on first use, and removed from the Hugging Face cache.
    result = hub_runs["offline"][1]
    assert result["refused"] and "sha256" in result["refused"]
    assert result["blob_left"] is False


def test_imagenet_for_timm_goes_through_huggingface_hub(hub_runs):
    """No mirror set and huggingface_hub installed: `"imagenet"` for a
    timm model is `hf_hub_download` of its row's repository (offline the
    second time)."""
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    assert f"/{ECA['hub_id']}/resolve/{ECA['revision']}/model.safetensors" \
        in hub_runs["requests"]
    for out, _ in (hub_runs["online"], hub_runs["offline"]):
        assert relative_error(out["pool"], ref["pool"]) < 1e-4
