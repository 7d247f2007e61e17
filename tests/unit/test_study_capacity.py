"""experiments.study_capacity (issue 20): a tiny grid on real CIFAR-10
JPEGs through the study's own command line, resuming, and `--plot-only`
redrawing the committed plot and REPORT.md's table from the committed CSV."""

import sys

import pytest

from conftest import REPO
from study_helpers import check_report_copies_summary, need_cifar

sys.path.insert(0, str(REPO))
from experiments import common, study_capacity  # noqa: E402

TINY = ["--per-class", "4", "2", "--n-train", "32", "--n-test", "20",
        "--epochs", "1", "--batch-size", "16", "--seeds", "0"]


def test_a_tiny_grid_runs_resumes_and_refuses_other_settings(tmp_path,
                                                             capsys):
    need_cifar()
    args = TINY + ["--out-dir", str(tmp_path), "--arms", "depth: stage 3"]
    rows = study_capacity.main(args)
    assert len(rows) == 1
    row = rows[0]
    assert (row["arm"], row["seed"], row["n_train"], row["n_test"]) == (
        "depth: stage 3", 0, 32, 20)
    assert row["depth"] == "(1, 1, 2, 1)"
    assert row["width"] == "(32, 64, 96, 128)"
    # the counts are the package's, of the model the arm describes
    model = study_capacity.build((1, 1, 2, 1), (32, 64, 96, 128))
    from keras_nfnets import flops  # pylint: disable=import-outside-toplevel
    assert row["params"] == model.count_params()
    assert row["flops"] == flops.count_flops(model)
    assert 0 <= row["test_acc"] <= 1 and 0 <= row["train_acc"] <= 1
    assert row["wall_seconds"] >= row["train_seconds"] > 0
    png = tmp_path / "study_capacity.png"
    assert png.stat().st_size > 0
    # --plot-only redraws the PNG from the CSV alone
    png.unlink()
    assert study_capacity.main(["--plot-only", "--out-dir",
                                str(tmp_path)]) == rows
    assert png.stat().st_size > 0
    # a rerun skips what the CSV holds; other settings are refused
    capsys.readouterr()
    assert study_capacity.main(args) == common.read_csv(
        tmp_path / "study_capacity.csv")
    assert "study_capacity: 0 runs" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="epochs=1"):
        study_capacity.main([a if a != "1" else "2" for a in args])


def test_the_width_arms_match_the_depth_arms_parameters():
    arms = study_capacity.plan()
    assert list(arms) == study_capacity.ARMS
    params = {a: study_capacity.counts(*dw)[0] for a, dw in arms.items()}
    target = sum(params[a] for a in study_capacity.DEPTH_ARMS) / 4
    extra = target - params["baseline"]
    for i, arm in enumerate(study_capacity.WIDTH_ARMS):
        depth, width = arms[arm]
        assert depth == study_capacity.BASE_DEPTH
        assert width[i] > study_capacity.BASE_WIDTH[i] and width[i] % 32 == 0
        # within 60% of the depth arms' mean extra parameters
        assert abs(params[arm] - target) < 0.6 * extra, (arm, params[arm])


def test_report_copies_the_summary_of_the_committed_csv(tmp_path, capsys):
    check_report_copies_summary(study_capacity, tmp_path, capsys)


def _rows(means, n_test=2000):
    return [{"arm": arm, "seed": s, "test_acc": m + d, "train_acc": m,
             "depth": "", "width": "", "params": 1, "flops": 1,
             "wall_seconds": 1.0, "n_test": n_test, "mean_abs_skip_gain": 0.5}
            for arm, m in means.items() for s, d in enumerate((-1e-3, 0, 1e-3))]


@pytest.mark.parametrize("stage3,other,word", [
    (0.50, 0.40, "confirmed"), (0.41, 0.40, "mixed"),
    (0.40, 0.50, "not confirmed")])
def test_the_verdict_rule(stage3, other, word):
    means = {"baseline": 0.3}
    for family in ("depth", "width"):
        for i in (1, 2, 4):
            means[f"{family}: stage {i}"] = other - 0.01 * i
        means[f"{family}: stage 3"] = stage3
    summary = study_capacity.summarize(_rows(means))
    assert study_capacity.verdict(summary, 2000)[0] == word
