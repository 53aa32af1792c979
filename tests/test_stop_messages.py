"""A stopped run's one line says exactly what is left to resume from: the last checkpoint's
epoch, or that no checkpoint was written yet (never "the last checkpoint is kept" when there
is none)."""

import pytest

from training import errors


@pytest.mark.parametrize("failure", [
    errors.Diverged("epoch 1 (phase 1), step 3 of 20: the training loss is not finite; "
                    "stopped, the last checkpoint (if any) is kept"),
    errors.RunFailure("/d/train-00000-of-00001.tfrecord: corrupt shard (corrupted record at "
                      "12); rebuild the data (tin-verify names every bad shard); the last "
                      "checkpoint is kept"),
])
def test_a_failure_says_no_checkpoint_was_written_yet_when_there_is_none(failure):
    none = errors.with_checkpoint_note(failure, 0)
    assert type(none) is type(failure)
    assert str(none).endswith("no checkpoint was written yet") and "kept" not in str(none)
    some = errors.with_checkpoint_note(failure, 4)
    assert str(some).endswith("the last checkpoint (epoch 4) is kept")
    assert str(some).split(";")[0] == str(failure).split(";")[0]


def test_a_failure_that_does_not_mention_checkpoints_is_left_as_it_is():
    failure = errors.RunFailure("/o: no space left on device")
    assert errors.with_checkpoint_note(failure, 0) is failure
