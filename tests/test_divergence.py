"""A diverging run stops and can never look good (issue 9, item 7): non-finite scores are
misses, a non-finite training loss raises Diverged naming the epoch and step, the last good
checkpoint and best.keras stay as they were."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from training import steps as steps_lib  # noqa: E402


def test_rows_with_non_finite_scores_are_never_hits():
    probs = tf.constant([[0.1, 0.7, 0.2],
                         [np.nan, np.nan, np.nan],
                         [0.2, np.nan, 0.8],
                         [np.inf, 0.0, 0.0]], tf.float32)
    labels = tf.constant([1, 0, 2, 0], tf.int32)
    rank = steps_lib.ranks_of_true_class(labels, probs).numpy()
    assert rank[0] == 0 and np.all(rank[1:] >= 2 ** 31 - 1)  # a miss for every k
    import keras
    step = steps_lib.make_eval_step(keras.Sequential([keras.layers.Lambda(lambda x: x)]),
                                    xla=False)
    totals, _ = step(probs, labels)
    assert totals.numpy()[1] == 1.0 and totals.numpy()[2] == 1.0  # only row 0, top-1 and top-5


def _blow_up_in_phase_2(build, out, *, steps_per_epoch):
    """A tiny run whose phase 2 takes Adam steps of 1e30, which blow the weights up; phase 1
    (one sane epoch) leaves a good checkpoint to keep."""
    from training import config as config_lib
    phases = (config_lib.Phase(epochs=1, image_size=16, batch_size=20, augment="none",
                               plateau=False, min_lr=1e-3, max_lr=1e-3, step_epochs=1),
              config_lib.Phase(epochs=2, image_size=16, batch_size=20, augment="none",
                               plateau=False, min_lr=1e30, max_lr=1e30, step_epochs=1))
    return config_lib.RunConfig(
        data=build, out=str(out), model="smoke", phases=phases,
        steps_per_epoch=steps_per_epoch, val_image_size=16, eval_batch_size=100, xla=False,
        lr_schedule="triangular2", progress=False, misclassified=0, export=False)


@pytest.mark.slow
def test_non_finite_loss_raises_diverged_and_keeps_the_last_good_state(synthetic_build,
                                                                       tmp_path):
    import keras

    import training
    out = tmp_path / "run"
    # Four steps per epoch: the loss is NaN within two steps of phase 2.
    cfg = _blow_up_in_phase_2(synthetic_build, out, steps_per_epoch=4)
    with pytest.raises(training.Diverged) as info:
        training.run(cfg)
    msg = str(info.value)
    assert "\n" not in msg and "epoch 2" in msg and "step " in msg and "not finite" in msg
    assert sorted(os.listdir(out / "checkpoints")) and \
        tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-1")
    assert not (out / "summary.json").exists()
    best = keras.models.load_model(str(out / "best.keras"))
    probs = best(np.zeros([2, 16, 16, 3], np.uint8), training=False)
    assert np.all(np.isfinite(probs))


def _non_finite_checkpoint_values(folder) -> list:
    """The names of the non-finite floating values in the checkpoints under ``folder``,
    except the plateau's initial best (+inf: nothing seen yet, as in Keras)."""
    bad = []
    for prefix in sorted({str(p)[:-len(".index")] for p in folder.glob("ckpt-*.index")}):
        reader = tf.train.load_checkpoint(prefix)
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if name.startswith("plateau/best/") or not dtype.is_floating:
                continue
            if not np.all(np.isfinite(reader.get_tensor(name))):
                bad.append(f"{prefix}:{name}")
    return bad


@pytest.mark.slow
def test_divergence_in_an_epochs_last_update_saves_nothing_of_that_epoch(synthetic_build,
                                                                         tmp_path):
    import json

    import training
    out = tmp_path / "run"
    # One step per epoch: epoch 2's only update blows the weights up, so no training loss
    # of epoch 2 is ever non-finite; the validation after it is.
    cfg = _blow_up_in_phase_2(synthetic_build, out, steps_per_epoch=1)
    messages = []
    for _ in range(2):  # the same command again: the same stop, never a resume into NaN
        with pytest.raises(training.Diverged) as info:
            training.run(cfg)
        messages.append(str(info.value))
        assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-1")
        assert not list((out / "checkpoints").glob("ckpt-2*"))
        assert _non_finite_checkpoint_values(out / "checkpoints") == []
        assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1]
        assert not (out / "summary.json").exists()
        best = tf.keras.models.load_model(str(out / "best.keras"))
        assert np.all(np.isfinite(best(np.zeros([2, 16, 16, 3], np.uint8), training=False)))
    msg = messages[0]
    assert messages[1] == msg and "\n" not in msg
    assert "epoch 2 (phase 2), step 1 of 1" in msg and "holds epoch 1" in msg
