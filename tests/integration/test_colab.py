"""The Colab notebooks (colab/*.ipynb) run top to bottom in smoke mode.

Each notebook is executed by a real Jupyter kernel (nbclient) started from
this interpreter (`sys.executable -m ipykernel_launcher`, through a kernel
spec written to a temporary folder, so no kernel has to be installed and no
other Python is picked up). The kernel gets `KERAS_NFNETS_SMOKE=1`, which the
notebooks' parameters cell reads: tiny data, a small random NFNet, a few
steps, on the CPU. It runs offline: pip is not called (the package is
importable), the fine-tuning notebook uses tfds's mock data, and HTTP(S)
proxies point at a closed port so that any download would fail.
"""

import asyncio
import json
import os
import pathlib
import re
import signal
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parents[2]
COLAB = REPO / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
FINETUNE = COLAB / "finetune_nfnet.ipynb"
TRAIN_TPU = COLAB / "train_imagenet_tpu.ipynb"
CELL_TIMEOUT = 900  # seconds per cell; the whole smoke run takes ~1-2 min
KERNEL = "keras-nfnets-smoke"

# Appended to the fine-tuning notebook's copy: reports what the test checks.
REPORT_CELL = """import json
print("SMOKE_REPORT " + json.dumps({
    "smoke": SMOKE, "runtime": RUNTIME,
    "reload_matches": RELOAD_MATCHES,
    "reload_max_abs_diff": RELOAD_MAX_ABS_DIFF,
    "predictions": int(len(val_logits)),
    "epochs_trained": len(history.history["loss"])}))"""


def _kernel_manager(workdir):
    """A KernelManager whose only kernel is this interpreter's ipykernel."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    kernels = workdir / "kernels"
    spec = kernels / KERNEL
    spec.mkdir(parents=True)
    closed_port = "http://127.0.0.1:9"
    env = {
        "KERAS_NFNETS_SMOKE": "1",
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "HTTP_PROXY": closed_port, "HTTPS_PROXY": closed_port,
        "http_proxy": closed_port, "https_proxy": closed_port,
        "NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1",
        "PIP_NO_INDEX": "1",
        "NO_GCE_CHECK": "true",
        "TFDS_DATA_DIR": str(workdir / "tensorflow_datasets"),
        "KERAS_HOME": str(workdir / "keras_home"),
        # TensorBoard's notebook magic keeps its records under TMPDIR.
        "TMPDIR": str(workdir),
        "PYTHONPATH": os.pathsep.join(
            p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p),
    }
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher",
                 "-f", "{connection_file}"],
        "display_name": "keras_nfnets smoke", "language": "python",
        "env": env}))
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=(
        KernelSpecManager(kernel_dirs=[str(kernels)])))


def _stop_tensorboards(workdir):
    """Stops TensorBoard servers that a notebook started (their records are
    in the kernel's TMPDIR, i.e. under workdir)."""
    pids = []
    for info in workdir.glob(".tensorboard-info/pid-*.info"):
        try:
            pids.append(int(json.loads(info.read_text())["pid"]))
            os.kill(pids[-1], signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass
    deadline = time.time() + 15
    for pid in pids:
        while time.time() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _client(path, workdir, extra_cells=()):
    nb = nbformat.read(path, as_version=4)
    for source in extra_cells:
        nb.cells.append(nbformat.v4.new_code_cell(source))
    return nbclient.NotebookClient(
        nb, km=_kernel_manager(workdir), timeout=CELL_TIMEOUT,
        allow_errors=False, resources={"metadata": {"path": str(workdir)}})


async def _execute(client, workdir):
    start = time.time()
    try:
        await client.async_execute()
    finally:
        _stop_tensorboards(workdir)
    return client.nb, time.time() - start


_RUNS = {}


def _run(path, tmp_path_factory):
    """Executes every notebook once per session, side by side in their own
    kernels (each is mostly single-threaded start-up, tracing and waiting
    for its training process); returns this one's (nb, seconds). A failed
    notebook fails the tests that read it, with its error."""
    if not _RUNS:
        runs = []
        for nb_path in NOTEBOOKS:
            workdir = tmp_path_factory.mktemp(nb_path.stem)
            extra = [REPORT_CELL] if nb_path == FINETUNE else []
            runs.append(_execute(_client(nb_path, workdir, extra), workdir))

        async def run_all():
            return await asyncio.gather(*runs, return_exceptions=True)

        _RUNS.update(zip(NOTEBOOKS, asyncio.run(run_all())))
    result = _RUNS[path]
    if isinstance(result, BaseException):
        raise result
    return result


def _outputs(nb):
    return [out for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", [])]


def _stdout(nb):
    return "".join(out.get("text", "") for out in _outputs(nb)
                   if out.output_type == "stream")


def test_both_notebooks_exist():
    assert FINETUNE in NOTEBOOKS and TRAIN_TPU in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], (
            f"{path.name} cell {i} has stored outputs; clear them "
            "(Edit > Clear all outputs) before committing")
        assert cell.execution_count is None, (
            f"{path.name} cell {i} has an execution count; clear outputs")
    assert "widgets" not in nb.metadata, f"{path.name}: widget state stored"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_first_and_smoke_off(path):
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert re.search(r"^SMOKE = False\b", first.source, re.M), (
        f"{path.name}: the first code cell must be the parameters cell "
        "with SMOKE = False")
    assert "KERAS_NFNETS_SMOKE" in first.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tpu_caveat_and_pin(path):
    text = path.read_text()
    assert "tensorflow-tpu==2.20" in text
    assert re.search(r"ship\W+without\W+TensorFlow", text)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_readme_links_notebook_with_colab_badge(path):
    readme = (REPO / "README.md").read_text()
    assert re.search(
        r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/"
        r"colab-badge\.svg\)\]\(https://colab\.research\.google\.com/github/"
        r"[^)]*/blob/[^)]*/colab/" + re.escape(path.name) + r"\)", readme), (
        f"README.md has no 'Open in Colab' badge for colab/{path.name}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, tmp_path_factory):
    nb, seconds = _run(path, tmp_path_factory)
    errors = [out for out in _outputs(nb) if out.output_type == "error"]
    assert not errors  # nbclient raises on a cell error already
    executed = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in executed), "a cell did not run"
    print(f"{path.name}: {len(executed)} cells in {seconds:.0f} s")


def test_finetune_plots_are_image_outputs(tmp_path_factory):
    nb, _ = _run(FINETUNE, tmp_path_factory)
    images = [out for out in _outputs(nb)
              if out.output_type in ("display_data", "execute_result")
              and "image/png" in out.get("data", {})]
    # training curves, the grid of validation images, the confusion matrix
    assert len(images) >= 3, f"{len(images)} image/png outputs"
    for source, title in [("history.history", "training curves"),
                          ("CLASS_NAMES[val_pred[i]]", "image grid"),
                          ("confusion_matrix", "confusion matrix")]:
        cell = next(c for c in nb.cells if c.cell_type == "code"
                    and source in c.source)
        assert any("image/png" in out.get("data", {})
                   for out in cell.outputs), f"no image from the {title}"


def test_finetune_reloaded_model_predicts_the_same(tmp_path_factory):
    nb, _ = _run(FINETUNE, tmp_path_factory)
    line = next(l for l in _stdout(nb).splitlines()
                if l.startswith("SMOKE_REPORT "))
    report = json.loads(line[len("SMOKE_REPORT "):])
    assert report["smoke"] is True and report["runtime"] == "CPU"
    assert report["epochs_trained"] >= 1 and report["predictions"] > 0
    assert report["reload_matches"] is True
    assert report["reload_max_abs_diff"] == 0.0


def test_train_notebook_trained_and_reported(tmp_path_factory):
    nb, _ = _run(TRAIN_TPU, tmp_path_factory)
    out = _stdout(nb)
    assert "top-1 accuracy:" in out  # training.train's final report
    assert "TRAINING_FINISHED rc=0" in out
    # TensorBoard started (the magic reports failures as output, not errors)
    board = next(c for c in nb.cells if c.cell_type == "code"
                 and "%tensorboard" in c.source)
    shown = json.dumps(board.outputs)
    assert "ERROR" not in shown and "Could not find" not in shown, shown
    assert any("text/html" in out.get("data", {}) for out in board.outputs), (
        shown)
    assert any("image/png" in out.get("data", {}) for out in _outputs(nb)), (
        "no training-curve plot")
