"""`weights="hf://timm/<repo>[@revision]"` through `huggingface_hub`: a
loopback server set as `HF_ENDPOINT` serves what `hf_hub_download` asks
for (a tiny timm-format `model.safetensors` written by timm itself); the
second load runs with `HF_HUB_OFFLINE=1` and the server stopped, from the
Hugging Face cache; a corrupted cached file is refused with the package's
`WeightsHashError` and removed. huggingface_hub reads `HF_ENDPOINT` and
`HF_HUB_OFFLINE` when it is imported, hence one process per setting."""

import hashlib
import http.server
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("huggingface_hub")

from conftest import REPO, LoopbackServer  # noqa: E402
from timm_helpers import TINY_ECA_TIMM, timm_references  # noqa: E402

HANDLE = "hf://timm/tiny_eca.test@main"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

LOAD = """
import glob, json, os, sys
import numpy as np
import keras_nfnets
from keras_nfnets.weights.errors import WeightsHashError
from timm_helpers import TINY_ECA
handle, inputs, out, corrupt = sys.argv[1:5]

def load():
    return keras_nfnets.NFNet(
        config=TINY_ECA, weights=handle, input_shape=(40, 40, 3),
        include_preprocessing=False, classifier_activation=None)

np.save(out, load().predict(np.load(inputs), verbose=0))
result = {"refused": None}
if corrupt == "1":
    blob, = glob.glob(os.path.join(os.environ["HF_HOME"], "hub", "models--*",
                                   "blobs", "*"))
    with open(blob, "r+b") as f:  # one flipped byte past the header
        f.seek(-8, 2)
        byte = f.read(1)
        f.seek(-8, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    try:
        load()
    except WeightsHashError as e:
        result = {"refused": str(e), "blob_left": os.path.exists(blob)}
print(json.dumps(result))
"""


def _hf_server(path):
    """A loopback Hugging Face endpoint serving `path` as
    `<repo>/resolve/<revision>/model.safetensors` (HEAD and GET)."""
    data = path.read_bytes()
    etag = hashlib.sha256(data).hexdigest()
    server = LoopbackServer(path.parent)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            server.requests.append(self.path)

        def _head(self):
            if not self.path.endswith("/resolve/main/model.safetensors"):
                self.send_error(404)
                return False
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return True

        def do_HEAD(self):  # noqa: N802
            self._head()

        def do_GET(self):  # noqa: N802
            if self._head():
                self.wfile.write(data)

    server.stop()
    server.serve(Handler)
    return server


def _load(tmp_path, env, corrupt):
    out = subprocess.run(
        [sys.executable, "-c", LOAD, HANDLE, str(tmp_path / "inputs.npy"),
         str(tmp_path / "logits.npy"), corrupt],
        cwd=REPO / "tests", capture_output=True, text=True, timeout=600,
        env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return (np.load(tmp_path / "logits.npy"),
            json.loads(out.stdout.strip().splitlines()[-1]))


def test_hf_handle_loads_through_hf_endpoint_then_offline_cache(tmp_path):
    """Over 30 s on 2 shared cores: three processes (timm writes the file
    and its reference logits; one online load; one with HF_HUB_OFFLINE=1,
    which huggingface_hub reads only at import), each importing its
    framework."""
    ref = timm_references(tmp_path / "ref", [dict(
        key="tiny_eca", cfg=TINY_ECA_TIMM, size=40, seed=1)])["tiny_eca"]
    np.save(tmp_path / "inputs.npy", ref["inputs"])
    served = tmp_path / "served" / "model.safetensors"
    served.parent.mkdir()
    served.write_bytes(ref["path"].read_bytes())
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HF_") and k != "KERAS_BACKEND"}
    env.update(HF_HOME=str(tmp_path / "hf"), KERAS_HOME=str(tmp_path / "k"),
               TF_CPP_MIN_LOG_LEVEL="2", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(REPO))
    server = _hf_server(served)
    try:
        logits, _ = _load(tmp_path, dict(env, HF_ENDPOINT=server.url), "0")
    finally:
        server.stop()
    assert any(r.endswith("/model.safetensors") for r in server.requests)
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4)

    # Offline, the server gone: the Hugging Face cache; then a corrupted
    # cached file is refused by the sha256 recorded on first use.
    logits, result = _load(
        tmp_path, dict(env, HF_ENDPOINT=server.url, HF_HUB_OFFLINE="1"), "1")
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4)
    assert result["refused"] and "sha256" in result["refused"]
    assert result["blob_left"] is False
