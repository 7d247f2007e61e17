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


def _run_missing_fixture_test(tmp_path, ci):
    import os  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    test = tmp_path / "test_needs_missing.py"
    test.write_text(
        "from conftest import fixture_path\n"
        "def test_a():\n    fixture_path('not_a_fixture_haiku.npz')\n"
        "def test_b():\n    fixture_path('not_a_fixture_haiku.npz')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_FIXTURES.parents[1]),
               CI="true" if ci else "")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-ra",
         "-p", "no:cacheprovider", str(test)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_missing_fixture_skips_with_one_summary_line(tmp_path):
    out = _run_missing_fixture_test(tmp_path, ci=False)
    assert out.returncode == 0, out.stdout
    assert "2 skipped" in out.stdout
    lines = [l for l in out.stdout.splitlines()
             if l.startswith("missing DeepMind fixtures")]
    assert len(lines) == 1 and "not_a_fixture_haiku.npz (2 tests)" in lines[0]


def test_missing_fixture_fails_under_ci(tmp_path):
    out = _run_missing_fixture_test(tmp_path, ci=True)
    assert out.returncode == 1, out.stdout
    assert "2 failed" in out.stdout
    assert "CI=true: a missing fixture is a failure" in out.stdout
