"""Best weights live in the checkpoint (issue 9, items 6 and 9): best.keras is written only
after the checkpoint that records it; a phase with init=best starts from the previous phase's
best weights, also after a kill and resume."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import SimulatedKill, kill_after_epoch  # noqa: E402
import tensorflow as tf  # noqa: E402

pytestmark = pytest.mark.slow



def _cfg(build, out, *, init="best", epochs=(3, 1), **kw):
    from training import config as config_lib
    phases = (config_lib.Phase(epochs=epochs[0], image_size=16, batch_size=20, augment="none",
                               plateau=False, min_lr=5e-3, max_lr=2e-2, step_epochs=1),
              config_lib.Phase(epochs=epochs[1], image_size=16, batch_size=20, augment="none",
                               plateau=False, min_lr=1e-3, max_lr=1e-3, step_epochs=1,
                               init=init))
    return config_lib.RunConfig(
        data=build, out=str(out), model="net2", width=0.0625, phases=phases,
        steps_per_epoch=3, val_image_size=16, eval_batch_size=100, xla=False,
        lr_schedule="triangular2", progress=False, misclassified=0, seed=1, **kw)


def _spy(monkeypatch):
    """Records checkpoint and best.keras writes in order, and the model's weights at the
    start of every epoch."""
    from training import loop
    events, starts, model_box = [], [], []
    real_save = tf.train.CheckpointManager.save
    real_export = loop._save_model_atomic
    real_build = loop.models.build
    real_epoch = loop._train_epoch

    def save(self, *a, **kw):
        events.append(("checkpoint", kw.get("checkpoint_number")))
        return real_save(self, *a, **kw)

    def export(model, path):
        events.append(("best.keras", os.path.basename(path)))
        return real_export(model, path)

    def build(*a, **kw):
        model_box.append(real_build(*a, **kw))
        return model_box[-1]

    def train_epoch(*a, **kw):
        starts.append((kw["epoch"], [w.numpy().copy() for w in model_box[-1].weights]))
        return real_epoch(*a, **kw)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    monkeypatch.setattr(loop, "_save_model_atomic", export)
    monkeypatch.setattr(loop.models, "build", build)
    monkeypatch.setattr(loop, "_train_epoch", train_epoch)
    return events, starts


def test_best_keras_follows_its_checkpoint_and_summary_agrees(synthetic_build, tmp_path,
                                                              monkeypatch):
    import training
    events, _ = _spy(monkeypatch)
    summary = training.run(_cfg(synthetic_build, tmp_path / "run", init="last"))
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


def test_resumed_run_rewrites_best_keras_from_its_checkpoint(synthetic_build, tmp_path,
                                                             monkeypatch):
    import keras

    import training
    out = tmp_path / "run"
    kill_after_epoch(monkeypatch, 2)
    with pytest.raises(SimulatedKill):
        training.run(_cfg(synthetic_build, out, init="last"))
    # As if killed between the checkpoint and the export: best.keras is stale or missing.
    os.remove(out / "best.keras")
    events, _ = _spy(monkeypatch)
    summary = training.run(_cfg(synthetic_build, out, init="last"))
    assert events[0] == ("best.keras", "best.keras")  # re-exported before training resumes
    best = keras.models.load_model(str(out / "best.keras"))
    assert summary["best_epoch"] >= 1 and os.path.isfile(out / "best.keras")
    assert np.all(np.isfinite(best(np.zeros([1, 16, 16, 3], np.uint8))))


def _best_of_phase_one(history):
    rows = [r for r in history if r["phase"] == 1]
    return max(rows, key=lambda r: r["val_acc"])["epoch"]  # the first maximum, as kept


def _script_val_acc(monkeypatch, values):
    """Val top-1 of epoch e is values[e - 1] (the real evaluation still runs)."""
    from training import loop
    real = loop.evaluate_lib.evaluate_split
    calls = []

    def fake(*a, **kw):
        out = dict(real(*a, **kw))
        out["top1"] = values[len(calls) % len(values)]
        calls.append(out["top1"])
        return out
    monkeypatch.setattr(loop.evaluate_lib, "evaluate_split", fake)
    return calls


def test_init_best_starts_the_phase_from_the_previous_phase_best(synthetic_build, tmp_path,
                                                                 monkeypatch):
    import training
    from training import loop
    calls = _script_val_acc(monkeypatch, [0.3, 0.5, 0.2, 0.4])
    taken = {}
    real_take = loop.WeightCopy.take

    def take(self, model, val_acc, epoch):
        if self.name == "phase_best":
            taken[epoch] = [w.numpy().copy() for w in model.weights]
        return real_take(self, model, val_acc, epoch)
    monkeypatch.setattr(loop.WeightCopy, "take", take)
    _, starts = _spy(monkeypatch)
    training.run(_cfg(synthetic_build, tmp_path / "ref"))
    history = json.loads((tmp_path / "ref" / "history.json").read_text())
    best_epoch = _best_of_phase_one(history)
    assert best_epoch == 2  # scripted: the phase's best is not its last epoch
    phase2_start = dict(starts)[3]
    for a, b in zip(phase2_start, taken[best_epoch], strict=True):
        np.testing.assert_array_equal(a, b)

    # Killed at the end of phase 1 and resumed: the same start, from the checkpoint.
    cut = tmp_path / "cut"
    calls.clear()
    kill_after_epoch(monkeypatch, 3)
    with pytest.raises(SimulatedKill):
        training.run(_cfg(synthetic_build, cut))
    _, starts2 = _spy(monkeypatch)
    training.run(_cfg(synthetic_build, cut))
    for a, b in zip(dict(starts2)[3], phase2_start, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
