"""The fit loop's rules, on plain Python values (no TensorFlow).

After an epoch is trained and validated the loop asks :func:`decide` what follows: whether
the run diverged (then nothing of the epoch is saved), whether the epoch is the best of the
run and of its phase (``init=best``), the ReduceLROnPlateau step, and whether a checkpoint is
due. At a phase start :func:`phase_start` says whether to load the previous phase's best and
to forget it. Keeping the rules here makes each a unit test of microseconds; the loop only
carries the answers out on the model, optimizer and checkpoint.
:func:`replica_start_example` places each replica in the training stream.
"""

from __future__ import annotations

import dataclasses
import math

NO_RECORD = -1.0  # the val top-1 of a record that holds no weights yet


@dataclasses.dataclass(frozen=True)
class Record:
    """A best-so-far: its val top-1 and 1-based epoch (``NO_RECORD`` and 0 when empty)."""

    val_acc: float = NO_RECORD
    epoch: int = 0

    def beaten_by(self, val_acc: float) -> bool:
        """Strictly better only: a tie keeps the first epoch, as Keras' ModelCheckpoint
        (``save_best_only``) does."""
        return val_acc > self.val_acc


@dataclasses.dataclass(frozen=True)
class Plateau:
    """Keras' ReduceLROnPlateau (mode ``min``, no cooldown): settings and state."""

    factor: float
    patience: int
    min_lr: float
    min_delta: float = 1e-4
    best: float = math.inf
    wait: int = 0

    def fresh(self) -> "Plateau":
        """A new callback's state: each of the authors' phases was its own ``fit`` call."""
        return dataclasses.replace(self, best=math.inf, wait=0)

    def step(self, value: float, lr: float) -> tuple["Plateau", float]:
        """Feeds one epoch's val loss; returns the new state and the learning rate to use."""
        if value < self.best - self.min_delta:
            return dataclasses.replace(self, best=value, wait=0), lr
        wait = self.wait + 1
        if wait >= self.patience and lr > self.min_lr:
            return dataclasses.replace(self, wait=0), max(lr * self.factor, self.min_lr)
        return dataclasses.replace(self, wait=wait), lr


@dataclasses.dataclass(frozen=True)
class PhaseStart:
    """What the loop does before a phase's first epoch."""

    load: Record | None  # put these best weights (and optimizer slots) back; None: keep going
    phase_best: Record | None  # the phase's own best from now on (None: no init=best phase)


def phase_start(*, init: str, phase_best: Record | None) -> PhaseStart:
    """``init=best`` loads the best of the phase just ended, even when an earlier phase did
    better (the authors' Network 2 phase 6 started from phase 5's 61.83%, not phase 4's
    62.43%): every phase keeps its own best, from nothing."""
    if phase_best is None:  # no phase of the run uses init=best
        return PhaseStart(load=None, phase_best=None)
    load = phase_best if init == "best" and phase_best.epoch > 0 else None
    return PhaseStart(load=load, phase_best=Record())


@dataclasses.dataclass(frozen=True)
class EpochFacts:
    """One finished epoch as the loop measured it."""

    epoch: int  # 1-based
    val_loss: float
    val_acc: float
    weights_finite: bool
    lr: float
    first_of_phase: bool
    plateau_phase: bool
    last_of_run: bool
    checkpoint_every: int


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the loop does with a finished epoch."""

    diverged: bool  # stop now; nothing of this epoch is saved
    best: Record
    phase_best: Record | None
    new_best: bool
    new_phase_best: bool
    plateau: Plateau
    lr: float  # the learning rate for the next epoch
    checkpoint: bool


def decide(facts: EpochFacts, *, best: Record, phase_best: Record | None,
           plateau: Plateau) -> Decision:
    """The end-of-epoch rules (see the module docstring); pure."""
    if not (facts.weights_finite and math.isfinite(facts.val_loss)):
        return Decision(diverged=True, best=best, phase_best=phase_best, new_best=False,
                        new_phase_best=False, plateau=plateau, lr=facts.lr, checkpoint=False)
    new_lr = facts.lr
    if facts.plateau_phase:
        start = plateau.fresh() if facts.first_of_phase else plateau
        plateau, new_lr = start.step(facts.val_loss, facts.lr)
    new_best = best.beaten_by(facts.val_acc)
    if new_best:
        best = Record(facts.val_acc, facts.epoch)
    new_phase_best = phase_best is not None and phase_best.beaten_by(facts.val_acc)
    if new_phase_best:
        phase_best = Record(facts.val_acc, facts.epoch)
    checkpoint = facts.epoch % facts.checkpoint_every == 0 or facts.last_of_run
    return Decision(diverged=False, best=best, phase_best=phase_best, new_best=new_best,
                    new_phase_best=new_phase_best, plateau=plateau, lr=new_lr,
                    checkpoint=checkpoint)


def diverged_message(*, epoch: int, phase: int, step: int, steps: int, what: str,
                     saved_epoch: int) -> str:
    """The one line a diverged run ends with: where it diverged and what the folder holds."""
    kept = (f"the run folder holds epoch {saved_epoch}, the last good checkpoint"
            if saved_epoch else "no checkpoint was written yet")
    return (f"epoch {epoch} (phase {phase}), step {step} of {steps}: {what} not finite; "
            f"stopped before saving epoch {epoch}, {kept}; a lower learning rate is needed "
            "to go on (re-running the same command diverges the same way)")


def replica_start_example(examples: int, replicas: int) -> int:
    """Where each replica's part of the training stream starts after ``examples`` global
    examples: every replica consumed the same share of each global batch."""
    return examples // replicas
