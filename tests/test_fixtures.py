"""The repository's copy of DeepMind's small fixtures is intact."""

import hashlib

import pytest

from conftest import FIXTURES, REPO_FIXTURES


def _sums():
    lines = (REPO_FIXTURES / "SHA256SUMS").read_text().splitlines()
    return dict(reversed(line.split()) for line in lines if line.strip())


def test_repository_fixtures_match_their_digests():
    sums = _sums()
    assert sorted(sums) == ["agc_reference.npz", "nfnet_tiny_config.json",
                            "nfnet_tiny_haiku.npz",
                            "nfnet_tiny_reference.npz"]
    for name, digest in sums.items():
        data = (REPO_FIXTURES / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name


@pytest.mark.parametrize("name", sorted(_sums()))
def test_repository_fixtures_equal_the_shared_originals(name):
    original = FIXTURES / name
    if not original.exists():
        pytest.skip("../shared is absent: nothing to compare with")
    assert (REPO_FIXTURES / name).read_bytes() == original.read_bytes()
