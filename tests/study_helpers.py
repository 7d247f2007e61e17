"""What the tests of the `experiments/` studies share: the real CIFAR-10
JPEGs they need, and the check that REPORT.md copies a study's summary."""

import shutil

import pytest

from conftest import DATASETS, REPO, in_ci

CIFAR = DATASETS / "cifar10-jpeg.tar.gz"


def need_cifar():
    """Skips without ../shared's CIFAR-10 JPEGs (fails under CI=true)."""
    if not CIFAR.exists():
        if in_ci():
            pytest.fail(f"{CIFAR} is missing")
        pytest.skip("the CIFAR-10 JPEGs of ../shared/datasets are missing")


def check_report_copies_summary(study, tmp_path, capsys):
    """`--plot-only` on a copy of the study's committed CSV reads back its
    rows, draws the plot, and prints summary lines that all stand verbatim
    in docs/study/REPORT.md."""
    from experiments import common  # pylint: disable=import-outside-toplevel
    name = study.__name__.rsplit(".", 1)[-1]
    csv = REPO / "docs" / "study" / f"{name}.csv"
    if not csv.exists():
        pytest.skip(f"{csv.name} is not committed yet (run the study)")
    shutil.copy(csv, tmp_path / csv.name)
    rows = study.main(["--plot-only", "--out-dir", str(tmp_path)])
    assert rows == common.read_csv(csv)
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    printed = capsys.readouterr().out.strip().splitlines()
    report = (REPO / "docs" / "study" / "REPORT.md").read_text()
    missing = [line for line in printed if line not in report]
    assert not missing, missing
