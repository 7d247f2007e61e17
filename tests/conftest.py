"""Shared test helpers. DeepMind's reference outputs are read from
`../shared/fixtures/deepmind/` through `deepmind_fixture` only."""

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("KERAS_NFNETS_SHARED",
                                     REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "deepmind"
DATASETS = SHARED / "datasets"


def fixture_path(name):
    """Path of a file in ../shared/fixtures/deepmind (skips if absent)."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"DeepMind fixture {path} is not available")
    return path


def deepmind_fixture(name):
    """Loads a DeepMind reference `.npz` (a real npz) as a dict of arrays."""
    with np.load(fixture_path(name)) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture
def tiny_config_path():
    return fixture_path("nfnet_tiny_config.json")


def relative_error(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    return float(np.max(np.abs(actual - expected)) /
                 max(np.max(np.abs(expected)), 1e-12))
