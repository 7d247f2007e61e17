"""training.run_dir: flags.json (a resume with other training flags is
refused, naming each change), metrics.json and the final report."""

import json

import pytest

from training import run_dir
from training.errors import UsageError
from training_helpers import (make_folder, run_in_process, run_train,
                              tiny_flags, write_config)


def test_resume_flags_recorded_compared_and_overridden(tmp_path):
    values = {"lr": 0.2, "batch_size": 4, "seed": 1}
    assert run_dir.check_resume_flags(tmp_path, values) == []  # first start
    run_dir.write_resume_flags(tmp_path, values)
    assert json.loads((tmp_path / "flags.json").read_text()) == values
    assert not (tmp_path / "flags.json.tmp").exists()
    assert run_dir.check_resume_flags(tmp_path, values) == []
    changed = dict(values, lr=0.3, seed=2, new_flag=1)  # new: not compared
    with pytest.raises(UsageError) as e:
        run_dir.check_resume_flags(tmp_path, changed)
    for part in ("--lr=0.2 -> 0.3", "--seed=1 -> 2", "--allow_changed_flags",
                 str(tmp_path / "flags.json")):
        assert part in str(e.value)
    assert "batch_size" not in str(e.value)
    assert run_dir.check_resume_flags(tmp_path, changed,
                                      allow_changed=True) == ["lr", "seed"]


def test_metrics_mark_a_finished_run(tmp_path, capsys):
    assert not run_dir.is_finished(tmp_path)
    metrics = {"top1": 0.25, "top5": 0.75, "eval_examples": 12,
               "split": "test", "eval_image_size": 32, "ema": True}
    run_dir.write_metrics(tmp_path, metrics)
    assert run_dir.is_finished(tmp_path)
    assert run_dir.read_metrics(tmp_path) == metrics
    run_dir.report(metrics, tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert out == ["top-1 accuracy: 25.0%  (top-5 75.0%, 12 test images, "
                   "32px, EMA weights)",
                   f"model: {tmp_path}/model.keras; metrics: "
                   f"{tmp_path}/metrics.json"]
    assert run_dir.report_finished(tmp_path) == metrics
    out = capsys.readouterr().out
    assert f"{tmp_path} holds a finished run" in out
    assert "top-1 accuracy: 25.0%" in out


def test_resume_with_changed_training_flags_is_refused(tmp_path, capsys):
    """The first start trains in a subprocess; the refusals and the resume
    (its backup is at the last step: no step to train) run in this
    process."""
    root = make_folder(tmp_path / "imgs", classes=2, train=4, test=1)
    config = write_config(tmp_path / "c.json")
    run = tmp_path / "run"

    def flags(**changes):
        base = dict(batch_size=4, train_steps=2, checkpoint_steps=1)
        return tiny_flags(config, f"folder:{root}", run,
                          **{**base, **changes})

    first = run_train(flags(), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    stored = json.loads((run / "flags.json").read_text())
    assert stored["batch_size"] == 4 and stored["lr"] == 0.2
    (run / "metrics.json").unlink()  # as if killed after its last backup
    backup = (run / "backup" / "latest.weights.h5").read_bytes()

    changed = run_in_process(flags(batch_size=8, lr=0.3, seed=2), capsys)
    assert changed.returncode == 2, changed.stderr[-3000:]
    message = changed.stderr.strip().splitlines()[-1]
    for part in ("--batch_size=4 -> 8", "--lr=0.2 -> 0.3", "--seed=1 -> 2",
                 "--allow_changed_flags"):
        assert part in message, message

    # Overridden, a backup that cannot fit (no EMA now) is refused clearly,
    # not restarted from step 0 on the old weights.
    no_ema = run_in_process(flags(ema_decay=0, allow_changed_flags="true"),
                            capsys)
    assert no_ema.returncode == 2, no_ema.stderr[-3000:]
    assert "does not fit" in no_ema.stderr
    assert (run / "backup" / "latest.weights.h5").read_bytes() == backup

    same = run_in_process(flags(), capsys)
    assert same.returncode == 0, same.stderr[-3000:]
    assert "Resuming from step 2/2" in same.stdout
