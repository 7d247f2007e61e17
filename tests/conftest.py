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


# The tensors of agc_reference.npz, in DeepMind's path vocabulary.
AGC_NAMES = ["conv/w", "conv/gain", "conv/bias", "block/skip_gain", "se/w",
             "zero_init/w", "linear/w", "linear/b"]


def agc_fixture_variables(ref):
    """Keras variables holding `param:*` of agc_reference.npz, with paths
    equal to the fixture's names (`conv/w` ...)."""
    import keras  # pylint: disable=import-outside-toplevel
    variables = []
    for name in AGC_NAMES:
        scope, leaf = name.split("/")
        with keras.name_scope(scope):
            variables.append(keras.Variable(ref["param:" + name], name=leaf))
    assert [v.path for v in variables] == AGC_NAMES
    return variables
