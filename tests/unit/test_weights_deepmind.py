"""`keras_nfnets.weights.deepmind`: the restricted reader (safe, strict,
clear errors), the name rule and the module counts."""

import os
import pickle

import numpy as np
import pytest

from conftest import fixture_path
from keras_nfnets.weights import (CheckpointError, NonFiniteWeightsError,
                                  deepmind, load_deepmind_checkpoint)


class _SystemPayload:
    """Unpickling this would run a shell command (os.system)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [_SystemPayload, _EvalPayload])
@pytest.mark.parametrize("nested", [False, True])
def test_code_execution_payload_is_refused_and_never_runs(tmp_path, payload,
                                                         nested):
    marker = tmp_path / "payload_ran"
    evil = payload(marker)
    if nested:  # hidden inside an otherwise well-formed checkpoint
        evil = {"NFNet/~/linear": {"w": np.zeros((2, 2), "float32"),
                                   "b": evil}}
    path = tmp_path / "F0_haiku.npz"
    with open(path, "wb") as f:
        pickle.dump(evil, f)
    with pytest.raises(CheckpointError,
                       match=r"Refusing to load checkpoint: it references "
                             r"the global '(posix|nt|builtins)\.(system|eval)'"):
        load_deepmind_checkpoint(path)
    assert not marker.exists()


def test_deepmind_fixture_loads_without_dill_or_haiku():
    params = load_deepmind_checkpoint(fixture_path("nfnet_tiny_haiku.npz"))
    assert params["NFNet/~/linear"]["w"].shape == (256, 10)
    assert all(isinstance(v, np.ndarray)
               for group in params.values() for v in group.values())


def test_truncated_checkpoint(tmp_path):
    data = fixture_path("nfnet_tiny_haiku.npz").read_bytes()
    path = tmp_path / "cut.npz"
    for cut in (2, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError,
                           match=f"ends early, after {cut} bytes"):
            load_deepmind_checkpoint(path)


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"\x80\x02}q\x00\xff\xfe\xfd")
    with pytest.raises(CheckpointError, match="invalid pickle data"):
        load_deepmind_checkpoint(path)
    path.write_bytes(b"<html>Not Found</html>")
    with pytest.raises(CheckpointError, match="not a pickle"):
        load_deepmind_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_deepmind_checkpoint(path)


def test_non_array_values_are_refused(tmp_path):
    path = tmp_path / "strings.npz"
    with open(path, "wb") as f:
        pickle.dump({"NFNet/~/linear": {"w": "not an array"}}, f)
    with pytest.raises(CheckpointError, match="not a float array"):
        load_deepmind_checkpoint(path)


def test_non_finite_values_are_refused(tmp_path):
    path = tmp_path / "nan.npz"
    w = np.ones((2, 2), "float32")
    w[1, 0] = np.nan
    with open(path, "wb") as f:
        pickle.dump({"NFNet/~/linear": {"w": w}}, f)
    with pytest.raises(NonFiniteWeightsError, match="1 NaN or infinite"):
        load_deepmind_checkpoint(path)


def test_module_counts_come_from_the_variant_table():
    """DeepMind's F-n files: 94 modules for F0, 178 for F1, 598 for F6
    (the published files' counts), derived from the variant table."""
    assert [deepmind.module_count(f"F{n}") for n in (0, 1, 6)] == [
        94, 178, 598]
    assert deepmind.module_count("F0+") == 94
    assert deepmind.module_count(fixture_path("nfnet_tiny_config.json")) \
        == len(load_deepmind_checkpoint(fixture_path("nfnet_tiny_haiku.npz")))
    assert deepmind.variant_for_module_count(178) == "F1"
    assert deepmind.variant_for_module_count(100) is None


def test_name_rule():
    assert deepmind.keras_path("NFNet/~/nf_block_3/~/conv1b") == \
        "nf_block_3/conv1b"
    assert deepmind.haiku_module_name("nf_block_3/conv1b", "NFNet") == \
        "NFNet/~/nf_block_3/~/conv1b"
