"""The fit loop's end-of-epoch rules (issue 16) as plain values: each test takes
microseconds and fails when its rule is removed from ``training.rules``."""

import ast
import dataclasses
import math
import pathlib

from training import rules

PLATEAU = rules.Plateau(factor=0.5, patience=2, min_lr=1e-6)


def _facts(epoch, val_acc, *, val_loss=1.0, first=False, plateau=False, lr=1e-3,
           weights_finite=True, last=False, every=1):
    return rules.EpochFacts(epoch=epoch, val_loss=val_loss, val_acc=val_acc,
                            weights_finite=weights_finite, lr=lr, first_of_phase=first,
                            plateau_phase=plateau, last_of_run=last, checkpoint_every=every)


def _curriculum(phases):
    """Runs per-phase val top-1 lists through the rules as the loop does; returns, per phase
    from the second, the epoch whose weights an ``init=best`` start loads."""
    best, phase_best, loads, epoch = rules.Record(), rules.Record(), [], 0
    for i, accs in enumerate(phases):
        start = rules.phase_start(init="best" if i else "last", phase_best=phase_best)
        if i:
            loads.append(start.load and start.load.epoch)
        phase_best = start.phase_best
        for acc in accs:
            epoch += 1
            d = rules.decide(_facts(epoch, acc), best=best, phase_best=phase_best,
                             plateau=PLATEAU)
            best, phase_best = d.best, d.phase_best
    return loads, best


def test_init_best_loads_the_previous_phase_best_even_below_an_earlier_phase():
    # The authors' Network 2: phase 5 peaked at 61.83% below phase 4's 62.43%; phase 6 still
    # started from phase 5's best.
    loads, best = _curriculum([[0.6243, 0.60], [0.6183, 0.61], [0.62]])
    assert loads == [1, 3]
    assert best == rules.Record(0.6243, 1)


def test_a_phase_without_init_best_record_loads_nothing():
    start = rules.phase_start(init="last", phase_best=rules.Record(0.5, 3))
    assert start.load is None and start.phase_best == rules.Record()
    assert rules.phase_start(init="best", phase_best=None) == rules.PhaseStart(None, None)


def test_ties_keep_the_first_epoch():
    # The authors' log: phase 6 epochs 1 and 2 both at 62.58%; ModelCheckpoint kept the first.
    d = rules.decide(_facts(2, 0.6258), best=rules.Record(0.6258, 1),
                     phase_best=rules.Record(0.6258, 1), plateau=PLATEAU)
    assert not d.new_best and not d.new_phase_best
    assert d.best.epoch == 1 and d.phase_best.epoch == 1


def test_a_better_epoch_becomes_the_best_of_run_and_phase():
    d = rules.decide(_facts(3, 0.7), best=rules.Record(0.6, 1), phase_best=rules.Record(),
                     plateau=PLATEAU)
    assert d.new_best and d.best == rules.Record(0.7, 3) and d.phase_best == d.best


def test_plateau_state_resets_at_each_plateau_phase_start():
    # Carried over, the wait would reach patience and halve the rate; a fresh callback (one
    # per fit call in the authors' Network 1) takes the value as its first best instead.
    tired = dataclasses.replace(PLATEAU, best=0.5, wait=1)
    d = rules.decide(_facts(7, 0.4, val_loss=0.9, first=True, plateau=True), best=rules.Record(),
                     phase_best=None, plateau=tired)
    assert d.lr == 1e-3 and d.plateau.best == 0.9 and d.plateau.wait == 0
    carried = rules.decide(_facts(8, 0.4, val_loss=0.9, plateau=True), best=rules.Record(),
                           phase_best=None, plateau=tired)
    assert carried.lr == 5e-4 and carried.plateau.wait == 0


def test_plateau_is_left_alone_outside_plateau_phases():
    tired = dataclasses.replace(PLATEAU, best=0.5, wait=1)
    d = rules.decide(_facts(2, 0.4, val_loss=0.9, first=True), best=rules.Record(),
                     phase_best=None, plateau=tired)
    assert d.plateau == tired and d.lr == 1e-3


def test_plateau_step_is_keras_rule():
    p, lr = PLATEAU, 1e-3
    for value in (1.0, 1.0, 1.0):
        p, lr = p.step(value, lr)
    assert lr == 5e-4 and p.wait == 0 and p.best == 1.0
    p, lr = rules.Plateau(0.5, 1, min_lr=1e-3, best=1.0).step(2.0, 1e-3)
    assert lr == 1e-3 and p.wait == 1  # at the floor: no reduction, the wait keeps counting


def test_non_finite_val_loss_or_weights_diverge_and_save_nothing():
    best = rules.Record(0.5, 1)
    for facts in (_facts(2, 0.9, val_loss=math.nan), _facts(2, 0.9, val_loss=math.inf),
                  _facts(2, 0.9, weights_finite=False, last=True)):
        d = rules.decide(facts, best=best, phase_best=rules.Record(), plateau=PLATEAU)
        assert d.diverged and not d.checkpoint and not d.new_best and d.best == best


def test_checkpoints_every_n_epochs_and_at_the_end():
    due = [rules.decide(_facts(e, 0.1, every=3, last=e == 7), best=rules.Record(),
                        phase_best=None, plateau=PLATEAU).checkpoint for e in range(1, 8)]
    assert due == [False, False, True, False, False, True, True]


def test_diverged_message_names_epoch_step_and_what_the_folder_holds():
    msg = rules.diverged_message(epoch=3, phase=2, step=1, steps=1, what="x is",
                                 saved_epoch=2)
    assert "epoch 3" in msg and "step 1 of 1" in msg and "holds epoch 2" in msg
    assert "no checkpoint" in rules.diverged_message(epoch=1, phase=1, step=1, steps=1,
                                                     what="x is", saved_epoch=0)


def test_each_replica_starts_at_its_share_of_the_examples_consumed():
    assert rules.replica_start_example(48, 2) == 24
    assert rules.replica_start_example(96, 1) == 96


def test_no_function_in_training_is_longer_than_60_lines():
    root = pathlib.Path(rules.__file__).parent
    long = [f"{p.name}:{n.name} {n.end_lineno - n.lineno + 1}"
            for p in sorted(root.glob("*.py"))
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 60]
    assert not long


def test_the_rules_module_needs_no_tensorflow():
    tree = ast.parse(pathlib.Path(rules.__file__).read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree)
                if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module)])}
    assert imported <= {"__future__", "dataclasses", "math"}

