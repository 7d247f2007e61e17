"""The restricted unpickler under 2,000 mutated and truncated copies of
DeepMind's tiny checkpoint: 0 crashes, 0 exceptions other than
CheckpointError (issue 14, item 3)."""

import json
import subprocess
import sys

from conftest import REPO, fixture_path


def test_fuzzed_checkpoints_only_raise_checkpoint_error(tmp_path):
    fixture = fixture_path("nfnet_tiny_haiku.npz")
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fuzz_checkpoint.py"),
         str(fixture), str(tmp_path), "2000", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    last_case = (out.stderr.strip().splitlines() or ["-"])[-1]
    assert out.returncode == 0, (
        f"the loader crashed the interpreter (exit {out.returncode}) on "
        f"{last_case}: {out.stderr[-1500:]}")
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    print("fuzz counts:", json.dumps(counts))  # reported (pytest -s / -rP)
    assert counts["mutations"] + counts["truncations"] == 2000
    assert counts["crashes"] == 0
    assert counts["other_exception"] == 0, counts["other_examples"]
    assert counts["checkpoint_error"] > 1000  # most mutations are refused
