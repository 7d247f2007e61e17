"""experiments.study_dropout_scaling (issue 20): a tiny grid on real
CIFAR-10 JPEGs through the study's own command line, and `--plot-only`
redrawing the committed plot and REPORT.md's table from the committed CSV."""

import sys

import pytest

from conftest import REPO
from study_helpers import check_report_copies_summary, need_cifar

sys.path.insert(0, str(REPO))
from experiments import common, study_dropout_scaling as study  # noqa: E402



# CI time: measured 50-69 s on the 2 shared cores (one model.fit each,
# tracing dominates), over the 20 s budget; `make test-all` runs it.
@pytest.mark.slow
def test_a_tiny_grid_runs_and_resumes(tmp_path, capsys):
    need_cifar()
    args = ["--per-class", "4", "2", "--n-train", "32", "--n-test", "20",
            "--epochs", "1", "--batch-size", "16", "--seeds", "0",
            "--sizes", "2", "--rates", "0.4", "--out-dir", str(tmp_path)]
    rows = study.main(args)
    assert len(rows) == 1
    row = rows[0]
    assert (row["size_n"], row["drop_rate"], row["stochdepth_rate"]) == (
        2, 0.4, 0.1)
    assert row["depth"] == "(2, 2, 4, 2)"
    model = common.nfnet(0, depth=(2, 2, 4, 2))
    assert row["params"] == model.count_params()
    png = tmp_path / "study_dropout_scaling.png"
    assert png.stat().st_size > 0
    png.unlink()
    assert study.main(["--plot-only", "--out-dir", str(tmp_path)]) == rows
    assert png.stat().st_size > 0
    capsys.readouterr()
    assert len(study.main(args)) == 1
    assert "study_dropout_scaling: 0 runs" in capsys.readouterr().out


def test_report_copies_the_summary_of_the_committed_csv(tmp_path, capsys):
    check_report_copies_summary(study, tmp_path, capsys)


def _rows(means, n_test=2000):
    return [{"size_n": n, "drop_rate": rate, "seed": s, "test_acc": m + d,
             "train_acc": 0.9, "n_test": n_test, "depth": "", "params": 1,
             "mean_abs_skip_gain": 0.5}
            for (n, rate), m in means.items()
            for s, d in enumerate((-1e-3, 1e-3))]


@pytest.mark.parametrize("best1,best2,lead,word", [
    (0.0, 0.4, 0.05, "confirmed"), (0.0, 0.4, 0.005, "mixed"),
    (0.2, 0.2, 0.05, "not confirmed"), (0.4, 0.0, 0.05, "not confirmed")])
def test_the_verdict_rule(best1, best2, lead, word):
    means = {}
    for n, best in ((1, best1), (2, best2)):
        for rate in study.RATES:
            means[(n, rate)] = 0.4 + (lead if rate == best else 0.0)
    # at N=2 the N=1 best rate is `lead` behind (unless it is the same)
    assert study.verdict(_rows(means))[0] == word
