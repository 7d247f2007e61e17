"""Packaging: one installed package (keras_nfnets), the training program
inside it as keras_nfnets.training, the extras, and the entry points."""

import ast
import configparser
import glob
import importlib.util
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def _lines(value):
    return [l.split("#")[0].strip() for l in value.splitlines()
            if l.split("#")[0].strip()]


def test_training_modules_import_each_other_relatively():
    # Installed, training/ is keras_nfnets.training: an absolute
    # `training.*` import would fail there (or import another project's).
    bad = []
    for path in sorted((REPO / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad += [f"{path.name}:{node.lineno}: {n}" for n in names
                    if n == "training" or n.startswith("training.")]
    assert not bad, "use `from . import x` in training/: " + ", ".join(bad)


def test_model_package_needs_no_training_dependencies():
    cfg = _setup_cfg()
    requires = " ".join(_lines(cfg["options"]["install_requires"]))
    for name in ("tensorflow", "absl", "tensorboard"):  # no TF in the core
        assert name not in requires
    extras = {k: _lines(v) for k, v in cfg["options.extras_require"].items()}
    assert {"tensorflow", "train", "jax", "torch", "test",
            "test-portable"} <= set(extras)
    assert {"tensorflow>=2.20", "tensorflow-datasets", "absl-py",
            "tensorboard"} <= set(extras["train"])
    assert extras["tensorflow"] == ["tensorflow>=2.20"]
    for extra in ("jax", "torch", "test-portable"):
        assert not any(r.startswith("tensorflow") for r in extras[extra])
    assert "torch==2.14.1" in extras["torch"]
    packages = _lines(cfg["options"]["packages"])
    # Every package folder ships (setup.cfg lists them one by one).
    found = sorted(".".join(p.parent.relative_to(REPO).parts)
                   for p in (REPO / "keras_nfnets").rglob("__init__.py"))
    assert sorted(packages) == sorted(found + ["keras_nfnets.training"])
    assert (REPO / "LICENSE").read_text().lstrip().startswith(
        "Apache License")


def test_import_on_jax_loads_no_training_dependency():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    code = ("import sys, keras_nfnets, keras; "
            "assert keras.backend.backend() == 'jax'; "
            "bad = [m for m in ('tensorflow_datasets', 'training', "
            "'keras_nfnets.training', 'tensorboard') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_wheel_installs_only_keras_nfnets_with_the_demo(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if out.returncode and "No module named" in out.stderr:
        pytest.fail("building the wheel needs setuptools and wheel: "
                    + out.stderr[-500:])
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = glob.glob(str(tmp_path / "*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.endswith("/")}
    assert {t for t in tops if not t.endswith(".dist-info")} == {
        "keras_nfnets"}
    assert "keras_nfnets/training/train.py" in names
    assert "keras_nfnets/training/demo_data/nfnet_demo.json" in names
    jpgs = [n for n in names if n.startswith("keras_nfnets/training/"
                                            "demo_data/") and n.endswith(".jpg")]
    local = glob.glob(str(REPO / "training/demo_data/*/*/*.jpg"))
    assert len(jpgs) == len(local) > 0
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry[0]).decode()
    assert "keras-nfnets-train = keras_nfnets.train:main" in text
    assert any(n.endswith("/LICENSE") for n in names)
    # Issue 28: the wheel asks for TensorFlow only through its extras.
    meta = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [l[len("Requires-Dist: "):] for l in zipfile.ZipFile(
        wheel).read(meta[0]).decode().splitlines()
        if l.startswith("Requires-Dist: ")]
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if r.startswith("tensorflow")], core
    assert any(r.startswith("keras>=3.10") for r in core), core
    tf_extras = {r.split("extra ==")[1].strip().strip("'\"")
                 for r in requires
                 if r.startswith("tensorflow>=") and "extra ==" in r}
    assert {"tensorflow", "train"} <= tf_extras
    assert not tf_extras & {"jax", "torch", "test-portable"}, tf_extras


def test_entry_point_finds_the_clone_demo_data():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "keras_nfnets.train", "--demo_data_dir"],
        env=env, capture_output=True, text=True, timeout=300,
        cwd=pathlib.Path("/"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(REPO / "training" / "demo_data")
