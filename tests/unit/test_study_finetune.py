"""experiments.study_finetune (issue 31): its arms name known settings, the
committed summary CSV is what `summarize` makes of the committed runs CSV,
and REPORT.md's fine-tuning table copies that summary (no training: the
grid itself is the study's 30-minute run)."""

import csv
import re
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from experiments import common, study_finetune  # noqa: E402

STUDY = REPO / "docs" / "study"


def test_every_arm_names_an_optimizer_a_threshold_and_a_tuning():
    assert set(study_finetune.QUICK_ARMS) <= set(study_finetune.FULL_ARMS)
    assert len(set(study_finetune.FULL_ARMS)) == len(
        study_finetune.FULL_ARMS)
    for arm in study_finetune.FULL_ARMS:
        name, agc, *tuning = arm.split("_")
        assert name in study_finetune.LR, arm
        assert agc in study_finetune.AGC, arm
        assert tuning in ([], ["frozen"], ["decay"]), arm
    # what the issue asks the grid to compare, for both optimizers
    arms = set(study_finetune.FULL_ARMS)
    assert {"sgd_off", "sgd_l0.01", "adamw_off", "adamw_l0.01",
            "adamw_l0.1", "sgd_l0.01ns", "adamw_l0.01ns"} <= arms
    assert {"sgd_l0.01ns_frozen", "sgd_l0.01ns_decay", "adamw_l0.1ns_frozen",
            "adamw_l0.1ns_decay"} <= arms


def _summary_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_committed_summary_and_report_come_from_the_committed_runs(tmp_path):
    runs = STUDY / "study_finetune.csv"
    if not runs.exists():
        pytest.skip("study_finetune.csv is not committed yet (run the study)")
    study_finetune.summarize(common.read_csv(runs), tmp_path)
    made = _summary_rows(tmp_path / "study_finetune_summary.csv")
    committed = _summary_rows(STUDY / "study_finetune_summary.csv")
    assert made == committed
    # each arm's row in REPORT.md's table: accuracy (sd), the differences
    # against sgd_off and adamw_off with their binomial se, the clip fraction
    report = (STUDY / "REPORT.md").read_text()
    section = report[report.index("## Fine-tuning study (issue 31)"):]
    by = {(r["per_class"], r["arm"]): r for r in committed}
    for arm in dict.fromkeys(r["arm"] for r in committed):
        line = re.search(rf"^\| {re.escape(arm)} \|(.*)\|$", section, re.M)
        assert line, arm
        cells = [c.strip() for c in line.group(1).split("|")]
        expected = []
        for per_class in ("50", "500"):
            r = by[(per_class, arm)]
            diff = (lambda d, se: f"{float(d):+g} ± {se}" if d else "")
            expected += [
                f"{r['test_acc']} ({r['sd']})",
                diff(r["vs_sgd_off"], r["binomial_se"]),
                diff(r["vs_off"], r["vs_off_binomial_se"])
                if arm.startswith("adamw") else "",
                r["clip_fraction"] if "_off" not in arm else "0"]
        assert cells == expected, arm
