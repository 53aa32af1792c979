"""Triangular2 phases and ReduceLROnPlateau match their definitions (networks.md, Keras)."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from training import config as config_lib  # noqa: E402
from training import schedules  # noqa: E402

# Network 2's original six phases (networks.md): epochs, min lr, max lr, step size in epochs.
NET2_TABLE = [
    {"epochs": 24, "min_lr": 1e-4, "max_lr": 6e-4, "step_epochs": 6},
    {"epochs": 24, "min_lr": 1e-5, "max_lr": 6e-5, "step_epochs": 6},
    {"epochs": 24, "min_lr": 1e-5, "max_lr": 6e-5, "step_epochs": 4},
    {"epochs": 12, "min_lr": 1e-6, "max_lr": 6e-6, "step_epochs": 2},
    {"epochs": 12, "min_lr": 1e-5, "max_lr": 6e-5, "step_epochs": 2},
    {"epochs": 12, "min_lr": 1e-7, "max_lr": 6e-7, "step_epochs": 2},
]
SPE = 782  # ceil(100,000 / 128)


def reference_lr(step, table, spe):
    """An independent numpy implementation: find the phase by epochs, apply the formula."""
    starts = np.cumsum([0] + [r["epochs"] * spe for r in table])[:-1]
    k = max(0, int(np.searchsorted(starts, step, side="right")) - 1)
    row, local = table[k], step - starts[k]
    size = row["step_epochs"] * spe
    cycle = np.floor(1 + local / (2 * size))
    x = np.abs(local / size - 2 * cycle + 1)
    return row["min_lr"] + (row["max_lr"] - row["min_lr"]) * max(0.0, 1 - x) / 2 ** (cycle - 1)


def interesting_steps(table, spe):
    """Phase starts, cycle peaks/ends and their neighbours, plus a spread of others."""
    steps, start = set(), 0
    for r in table:
        size = r["step_epochs"] * spe
        for j in range(0, int(r["epochs"] * spe // size) + 1):
            for d in (-1, 0, 1):
                steps.add(start + j * size + d)
        start += r["epochs"] * spe
    steps.update(np.linspace(0, start + 1000, 400).astype(int).tolist())
    return sorted(s for s in steps if s >= 0)


def test_schedule_equals_formula_across_cycles_and_phases():
    sched = schedules.Triangular2(schedules.phases_from_epochs(NET2_TABLE, SPE))
    steps = interesting_steps(NET2_TABLE, SPE)
    lr_at = tf.function(sched)  # traced once for a scalar int64 step, as the optimizer calls it
    got = np.array([float(lr_at(tf.constant(s, tf.int64))) for s in steps])
    want = np.array([reference_lr(s, NET2_TABLE, SPE) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_each_phase_restarts_at_its_own_minimum_and_cycles_halve():
    sched = schedules.Triangular2(schedules.phases_from_epochs(NET2_TABLE, SPE))
    start = 0
    for r in NET2_TABLE:
        size = r["step_epochs"] * SPE
        assert float(sched(start)) == pytest.approx(r["min_lr"], rel=1e-5)
        assert float(sched(start + size)) == pytest.approx(r["max_lr"], rel=1e-5)
        if r["epochs"] * SPE >= 3 * size:  # a second cycle: peak halved above the minimum
            half = r["min_lr"] + (r["max_lr"] - r["min_lr"]) / 2
            assert float(sched(start + 3 * size)) == pytest.approx(half, rel=1e-5)
        start += r["epochs"] * SPE


def test_net2_table_gives_documented_phase_starts():
    phases = schedules.phases_from_epochs(NET2_TABLE, SPE)
    # Original epochs 1-24, 25-48, 49-72, 73-84, 85-96, 97-108 (1-based) -> 0-based starts.
    assert [p.start_step for p in phases] == [e * SPE for e in (0, 24, 48, 72, 84, 96)]
    assert [p.step_size for p in phases] == [6 * SPE, 6 * SPE, 4 * SPE, 2 * SPE, 2 * SPE,
                                             2 * SPE]


def test_net2_flagfile_phases_match_the_table():
    """flags/net2.flags and net2_student.flags encode networks.md's table (students: halved
    phase lengths, the original step sizes)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, scale in (("net2.flags", 1.0), ("net2_student.flags", 0.5)):
        with open(os.path.join(root, "flags", name)) as f:
            specs = [line.strip().split("=", 1)[1] for line in f
                     if line.strip().startswith("--phase=")]
        phases = [config_lib.parse_phase(s, image_size=64, batch_size=128, augment="none",
                                         plateau=False) for s in specs]
        assert [(p.epochs, p.min_lr, p.max_lr, p.step_epochs) for p in phases] == [
            (int(r["epochs"] * scale), r["min_lr"], r["max_lr"], r["step_epochs"])
            for r in NET2_TABLE]


def test_serialization_round_trip_keeps_every_value():
    sched = schedules.Triangular2(schedules.phases_from_epochs(NET2_TABLE[:3], 10))
    config = keras.optimizers.schedules.serialize(sched)
    again = keras.optimizers.schedules.deserialize(config)
    assert isinstance(again, schedules.Triangular2)
    assert again.get_config() == sched.get_config()
    for s in (0, 7, 60, 239, 240, 500, 719):
        assert float(again(s)) == float(sched(s))


def test_optimizer_with_schedule_follows_its_iterations():
    """The rate an optimizer uses is a pure function of optimizer.iterations (resume-safe)."""
    sched = schedules.Triangular2([schedules.CyclePhase(0, 1e-3, 5e-3, 4)])
    opt = keras.optimizers.Adam(sched)
    v = keras.Variable(1.0)
    opt.build([v])
    opt.iterations.assign(6)
    assert float(opt.learning_rate) == pytest.approx(
        schedules.triangular2(6, 1e-3, 5e-3, 4), rel=1e-6)


def test_bad_phase_tables_are_rejected():
    with pytest.raises(ValueError):
        schedules.Triangular2([])
    with pytest.raises(ValueError):
        schedules.Triangular2([schedules.CyclePhase(10, 1e-3, 1e-2, 5),
                               schedules.CyclePhase(10, 1e-3, 1e-2, 5)])
    with pytest.raises(ValueError):
        schedules.CyclePhase(0, 1e-2, 1e-3, 5)


def reference_plateau(values, lr, factor, patience, min_lr, min_delta=1e-4):
    """Keras 3 ReduceLROnPlateau.on_epoch_end (mode min, cooldown 0), re-implemented."""
    best, wait, out = math.inf, 0, []
    for v in values:
        if v < best - min_delta:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience and lr > min_lr:
                lr, wait = max(lr * factor, min_lr), 0
        out.append(lr)
    return out


def test_plateau_matches_keras_rule_and_its_state_survives_a_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    values = list(np.concatenate([np.linspace(3, 2, 6), 2 + rng.uniform(0, 0.2, 30)]))
    want = reference_plateau(values, 1e-3, math.sqrt(0.1), 5, 5e-7)
    plateau = schedules.ReduceLROnPlateau(math.sqrt(0.1), 5, 5e-7)
    lr, got = 1e-3, []
    for i, v in enumerate(values):
        if i == 17:  # save, rebuild, restore: the continuation must not notice
            path = tf.train.Checkpoint(p=plateau).save(str(tmp_path / "p"))
            plateau = schedules.ReduceLROnPlateau(math.sqrt(0.1), 5, 5e-7)
            tf.train.Checkpoint(p=plateau).restore(path).assert_consumed()
        lr = plateau.update(v, lr)
        got.append(lr)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[-1] < 1e-3  # it did reduce


def test_plateau_never_goes_below_min_lr():
    plateau = schedules.ReduceLROnPlateau(0.1, 0, 1e-4)
    lr = 1e-2
    for _ in range(10):
        lr = plateau.update(1.0, lr)
    assert lr == pytest.approx(1e-4)


def test_plateau_reset_forgets_best_and_wait():
    plateau = schedules.ReduceLROnPlateau(0.5, 2, 1e-6)
    plateau.update(1.0, 1e-3)
    plateau.update(2.0, 1e-3)
    assert plateau.state() == {"best": 1.0, "wait": 1}
    plateau.reset()
    assert plateau.state() == {"best": math.inf, "wait": 0}
    assert plateau.update(1.5, 1e-3) == 1e-3 and plateau.state()["best"] == 1.5


def _flagfile_phases(name):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "flags", name)) as f:
        specs = [line.strip().split("=", 1)[1] for line in f if line.startswith("--phase=")]
    return [config_lib.parse_phase(s, image_size=64, batch_size=128, augment="none",
                                   plateau=False) for s in specs]


def test_student_flagfile_keeps_original_step_sizes_with_halved_phases():
    """Seed report Fig. 6 (6,6,4,2,2,2) and Fig. 11 (1.067e-7 per batch in phase 1)."""
    phases = _flagfile_phases("net2_student.flags")
    assert [p.epochs for p in phases] == [12, 12, 12, 6, 6, 6]
    assert [p.step_epochs for p in phases] == [6, 6, 4, 2, 2, 2]
    table = [{"epochs": p.epochs, "min_lr": p.min_lr, "max_lr": p.max_lr,
              "step_epochs": p.step_epochs} for p in phases]
    sched = schedules.Triangular2(schedules.phases_from_epochs(table, SPE))
    increment = float(sched(1)) - float(sched(0))
    assert increment == pytest.approx((6e-4 - 1e-4) / (6 * 782), rel=1e-3)
    assert increment == pytest.approx(1.067e-7, rel=2e-3)  # the report: 6 x 781 steps


def test_net1_flagfile_has_one_phase_per_plateau_fit_call():
    """The notebook's 60 plateau epochs were four 15-epoch fit calls, then a 10-epoch one;
    each phase start resets the callback as each fit call did."""
    phases = _flagfile_phases("net1.flags")
    assert sum(p.epochs for p in phases) == 245
    assert [(p.epochs, p.image_size, p.batch_size, p.augment, p.plateau) for p in phases] == [
        (15, 32, 256, "none", True), (15, 64, 64, "none", True), (15, 64, 64, "none", False),
        (10, 16, 256, "none", False), (15, 64, 64, "none", False),
        (105, 64, 64, "original_net1", False)] + [(15, 64, 64, "original_net1", True)] * 4 + [
        (10, 64, 64, "original_net1", True)]
