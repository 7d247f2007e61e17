"""training.fitting: the step schedule, and the fit calls that take a run
(fresh or resumed at any step) to its last step. The resumed fit itself
runs end to end in test_train.py (SIGKILL mid-epoch)."""

import pytest

from training.fitting import Schedule, segments


def test_schedule_from_epochs_or_steps():
    assert Schedule.of(num_train=50_000, batch_size=4096, epochs=360) == \
        Schedule(12, 4320, 360)
    assert Schedule.of(40, 8, 2.6) == Schedule(5, 13, 3)  # 3 epochs, 1 partial
    assert Schedule.of(40, 8, 360, train_steps=14) == Schedule(5, 14, 3)
    assert Schedule.of(40, 8, 1, steps_per_epoch=3) == Schedule(3, 3, 1)
    assert Schedule.of(3, 8, 1) == Schedule(1, 1, 1)  # less than a batch


@pytest.mark.parametrize("step,want", [
    (0, [(0, 2, 5), (2, 3, 4)]),            # fresh: 2 epochs + 4 steps
    (7, [(1, 2, 3), (2, 3, 4)]),            # mid-epoch 1: its rest first
    (10, [(2, 3, 4)]),                      # on an epoch boundary
    (12, [(2, 3, 2)]),                      # inside the last partial epoch
    (14, [])])                              # finished: nothing to fit
def test_segments_cover_the_remaining_steps_once(step, want):
    todo = segments(step, steps_per_epoch=5, total_steps=14, epochs=3)
    assert todo == want
    assert sum((end - first) * per for first, end, per in todo) == 14 - step
    for (_, end, _), (first, _, _) in zip(todo, todo[1:]):
        assert end == first  # epochs follow each other


def test_segments_of_whole_epochs():
    assert segments(0, steps_per_epoch=4, total_steps=12, epochs=3) == [
        (0, 3, 4)]
    assert segments(6, steps_per_epoch=4, total_steps=12, epochs=3) == [
        (1, 2, 2), (2, 3, 4)]
