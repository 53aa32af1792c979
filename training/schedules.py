"""Learning-rate policies: the multi-phase Triangular2 schedule and ReduceLROnPlateau.

Triangular2 is a pure function of the optimizer's global step, so a checkpoint restored in the
middle of a phase continues with exactly the learning rates an uninterrupted run would have used.
ReduceLROnPlateau is stateful (best value, patience counter); its state lives in variables that
the checkpoint saves, and it drives ``optimizer.learning_rate`` (a variable) directly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import keras
import tensorflow as tf

from training import rules


@dataclasses.dataclass(frozen=True)
class CyclePhase:
    """One Triangular2 phase in global steps: a fresh cycle starting at ``min_lr``.

    Attributes:
      start_step: the global step at which the phase begins (its cycle restarts here).
      min_lr: the learning rate at the phase start and at every cycle's ends.
      max_lr: the first cycle's peak; each later cycle's peak above ``min_lr`` is halved.
      step_size: half a cycle, in steps.
    """

    start_step: int
    min_lr: float
    max_lr: float
    step_size: int

    def __post_init__(self):
        if self.start_step < 0:
            raise ValueError(f"phase start_step must be >= 0, got {self.start_step}")
        if self.step_size < 1:
            raise ValueError(f"phase step_size must be >= 1 step, got {self.step_size}")
        if not 0 <= self.min_lr <= self.max_lr:
            raise ValueError(f"need 0 <= min_lr <= max_lr, got {self.min_lr}, {self.max_lr}")


def triangular2(step: float, min_lr: float, max_lr: float, step_size: float) -> float:
    """The Triangular2 formula (networks.md) for one phase, ``step`` counted from its start."""
    cycle = math.floor(1 + step / (2 * step_size))
    x = abs(step / step_size - 2 * cycle + 1)
    return min_lr + (max_lr - min_lr) * max(0.0, 1 - x) / 2 ** (cycle - 1)


@keras.saving.register_keras_serializable(package="training")
class Triangular2(keras.optimizers.schedules.LearningRateSchedule):
    """Multi-phase Triangular2 cyclical learning rate over global steps.

    Each phase restarts its cycle at its own minimum at its ``start_step`` (networks.md's six
    phases of Network 2). Before the first phase's start the first phase's ``min_lr`` applies.
    Serializable (``get_config``/``from_config``), so a saved optimizer keeps its schedule.
    """

    def __init__(self, phases: Sequence[CyclePhase | dict]):
        phases = [p if isinstance(p, CyclePhase) else CyclePhase(**p) for p in phases]
        if not phases:
            raise ValueError("Triangular2 needs at least one phase")
        starts = [p.start_step for p in phases]
        if starts != sorted(set(starts)):
            raise ValueError(f"phase start steps must be strictly increasing, got {starts}")
        self.phases = tuple(phases)

    def __call__(self, step):
        step = tf.cast(step, tf.float64)
        starts = tf.constant([p.start_step for p in self.phases], tf.float64)
        # Index of the last phase whose start is <= step (0 before the first start).
        idx = tf.maximum(tf.reduce_sum(tf.cast(starts <= step, tf.int32)) - 1, 0)
        pick = lambda values: tf.gather(tf.constant(values, tf.float64), idx)  # noqa: E731
        lo = pick([p.min_lr for p in self.phases])
        hi = pick([p.max_lr for p in self.phases])
        size = pick([float(p.step_size) for p in self.phases])
        local = tf.maximum(step - tf.gather(starts, idx), 0.0)
        cycle = tf.floor(1.0 + local / (2.0 * size))
        x = tf.abs(local / size - 2.0 * cycle + 1.0)
        two = tf.constant(2.0, tf.float64)
        lr = lo + (hi - lo) * tf.nn.relu(1.0 - x) / tf.pow(two, cycle - 1.0)
        return tf.cast(lr, tf.float32)

    def get_config(self):
        return {"phases": [dataclasses.asdict(p) for p in self.phases]}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def phases_from_epochs(table: Sequence[dict], steps_per_epoch: Sequence[int] | int,
                       ) -> list[CyclePhase]:
    """Converts an epoch-denominated phase table into :class:`CyclePhase` in global steps.

    Args:
      table: one dict per phase with ``epochs`` (its length), ``min_lr``, ``max_lr`` and
        ``step_epochs`` (the step size in epochs, may be fractional).
      steps_per_epoch: steps per epoch, one int for all phases or one per phase.

    Returns:
      The phases with cumulative start steps (phase k starts after phases 0..k-1).
    """
    if isinstance(steps_per_epoch, int):
        steps_per_epoch = [steps_per_epoch] * len(table)
    out, start = [], 0
    for row, spe in zip(table, steps_per_epoch, strict=True):
        out.append(CyclePhase(start_step=start, min_lr=float(row["min_lr"]),
                              max_lr=float(row["max_lr"]),
                              step_size=max(1, int(round(row["step_epochs"] * spe)))))
        start += int(row["epochs"]) * spe
    return out


class ReduceLROnPlateau(tf.Module):
    """Keras' ReduceLROnPlateau (mode ``min``, no cooldown) for a custom loop, checkpointable.

    Its state (best value, epochs waited) is held in variables, so ``tf.train.Checkpoint``
    saves and restores it with the model; ``update`` sets the optimizer's learning-rate
    variable itself, exactly as Keras' callback does at the end of an epoch.
    """

    def __init__(self, factor: float = math.sqrt(0.1), patience: int = 5,
                 min_lr: float = 5e-7, min_delta: float = 1e-4, name: str = "plateau"):
        super().__init__(name=name)
        if not 0 < factor < 1:
            raise ValueError(f"plateau factor must be in (0, 1), got {factor}")
        self.factor, self.patience = float(factor), int(patience)
        self.min_lr, self.min_delta = float(min_lr), float(min_delta)
        self.best = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")

    def reset(self) -> None:
        """Forgets the best value and the wait count (a fresh Keras callback)."""
        self.best.assign(math.inf)
        self.wait.assign(0)

    def update(self, value: float, current_lr: float) -> float:
        """Feeds one epoch's monitored value; returns the learning rate to use next."""
        state, lr = self.as_rule().step(value, current_lr)
        self.store(state)
        return lr

    def as_rule(self) -> rules.Plateau:
        """The settings and state as the plain :class:`rules.Plateau` the loop decides on."""
        return rules.Plateau(factor=self.factor, patience=self.patience, min_lr=self.min_lr,
                             min_delta=self.min_delta, best=float(self.best.numpy()),
                             wait=int(self.wait.numpy()))

    def store(self, state: rules.Plateau) -> None:
        """Keeps ``state``'s best value and wait count (checkpointed with the run)."""
        self.best.assign(state.best)
        self.wait.assign(state.wait)

    def state(self) -> dict:
        return {"best": float(self.best.numpy()), "wait": int(self.wait.numpy())}
