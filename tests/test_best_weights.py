"""Best weights live in the checkpoint (issue 9, items 6 and 9): best.keras is written only
after the checkpoint that records it; a phase with init=best starts from the previous phase's
best weights, also after a kill and resume."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import SimulatedKill, kill_after_epoch, loop_spy  # noqa: E402

pytestmark = pytest.mark.slow



def _cfg(build, out, *, init="best", epochs=(3, 1), **kw):
    from training import config as config_lib
    phases = (config_lib.Phase(epochs=epochs[0], image_size=16, batch_size=20, augment="none",
                               plateau=False, min_lr=5e-3, max_lr=2e-2, step_epochs=1),
              config_lib.Phase(epochs=epochs[1], image_size=16, batch_size=20, augment="none",
                               plateau=False, min_lr=1e-3, max_lr=1e-3, step_epochs=1,
                               init=init))
    return config_lib.RunConfig(
        data=build, out=str(out), model="smoke", phases=phases,
        steps_per_epoch=3, val_image_size=16, eval_batch_size=100, xla=False,
        lr_schedule="triangular2", progress=False, misclassified=0, export=False, seed=1, **kw)


def test_best_keras_follows_its_checkpoint_and_summary_agrees(synthetic_build, tmp_path):
    import training
    spy = loop_spy()
    summary = training.run(_cfg(synthetic_build, tmp_path / "run", init="last"), hooks=spy)
    events = spy.events
    # Every best.keras write comes after a checkpoint, and the first write of all is one.
    assert events[0][0] == "checkpoint"
    for i, (kind, _) in enumerate(events):
        if kind == "best.keras":
            assert events[i - 1][0] == "checkpoint"
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    best_row = max(history, key=lambda r: r["val_acc"])
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["best_epoch"] == best_row["epoch"] == summary["best_epoch"]
    assert saved["best_val_acc"] == pytest.approx(best_row["val_acc"])
    assert saved["top1"] == pytest.approx(saved["best_val_acc"], abs=1e-6)


def test_resumed_run_rewrites_best_keras_from_its_checkpoint(synthetic_build, tmp_path):
    import keras

    import training
    out = tmp_path / "run"
    with pytest.raises(SimulatedKill):
        training.run(_cfg(synthetic_build, out, init="last"), hooks=kill_after_epoch(2))
    # As if killed between the checkpoint and the export: best.keras is stale or missing.
    os.remove(out / "best.keras")
    spy = loop_spy()
    summary = training.run(_cfg(synthetic_build, out, init="last"), hooks=spy)
    assert spy.events[0] == ("best.keras", "best.keras")  # re-exported before training resumes
    best = keras.models.load_model(str(out / "best.keras"))
    assert summary["best_epoch"] >= 1 and os.path.isfile(out / "best.keras")
    assert np.all(np.isfinite(best(np.zeros([1, 16, 16, 3], np.uint8))))


def _best_of_phase_one(history):
    rows = [r for r in history if r["phase"] == 1]
    return max(rows, key=lambda r: r["val_acc"])["epoch"]  # the first maximum, as kept


def _script_val_acc(monkeypatch, values):
    """Val top-1 of epoch e is values[e - 1] (the real evaluation still runs)."""
    from training import evaluate as evaluate_lib
    real = evaluate_lib.evaluate_split
    calls = []

    def fake(*a, **kw):
        out = dict(real(*a, **kw))
        out["top1"] = values[len(calls) % len(values)]
        calls.append(out["top1"])
        return out
    monkeypatch.setattr(evaluate_lib, "evaluate_split", fake)
    return calls


def test_init_best_starts_the_phase_from_the_previous_phase_best(synthetic_build, tmp_path,
                                                                 monkeypatch):
    import training
    calls = _script_val_acc(monkeypatch, [0.3, 0.5, 0.2, 0.4])
    spy = loop_spy()
    training.run(_cfg(synthetic_build, tmp_path / "ref"), hooks=spy)
    history = json.loads((tmp_path / "ref" / "history.json").read_text())
    best_epoch = _best_of_phase_one(history)
    assert best_epoch == 2  # scripted: the phase's best is not its last epoch
    phase2_start = spy.starts[4]
    for a, b in zip(phase2_start, spy.ends[best_epoch], strict=True):
        np.testing.assert_array_equal(a, b)

    # Killed at the end of phase 1 and resumed: the same start, from the checkpoint.
    cut = tmp_path / "cut"
    calls.clear()
    with pytest.raises(SimulatedKill):
        training.run(_cfg(synthetic_build, cut), hooks=kill_after_epoch(3))
    spy2 = loop_spy()
    training.run(_cfg(synthetic_build, cut), hooks=spy2)
    for a, b in zip(spy2.starts[4], phase2_start, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
