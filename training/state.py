"""What a checkpoint holds besides the model and optimizer: the loop's counters and history,
and copies of the best weights (of the run, and of the phase for ``init=best``)."""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf

from training import rules

# Optimizer variables that are not per-weight slots: the step counter drives the learning-rate
# schedule and the augmentation seeds, and the loss scale belongs to the run, not to weights.
_NOT_SLOTS = ("iteration", "learning_rate", "step_counter", "dynamic_scale")


class TrainState(tf.Module):
    """Loop state saved in every checkpoint next to the model and optimizer."""

    def __init__(self):
        super().__init__(name="train_state")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.phase = tf.Variable(0, dtype=tf.int64, trainable=False, name="phase")
        self.best_val_acc = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        # Training examples consumed so far (over all replicas): the data stream's position.
        self.examples = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples")

    def get_history(self) -> list[dict]:
        return json.loads(self.history.numpy().decode("utf-8"))


def optimizer_slots(optimizer: keras.optimizers.Optimizer) -> list:
    """The optimizer's per-weight state (Adam's moments, RMSprop's mean square, momentum)."""
    return [v for v in optimizer.variables if v.path.rsplit("/", 1)[-1] not in _NOT_SLOTS]


def all_finite(variables) -> bool:
    """True when no value of ``variables`` is NaN or infinite."""
    return all(bool(np.isfinite(np.asarray(v.numpy())).all()) for v in variables)


class WeightCopy(tf.Module):
    """A copy of a model's weights (BatchNorm statistics included) kept in the checkpoint.

    Holds the best weights of the run (exported as ``best.keras`` only after the checkpoint
    that records them) and, for phases with ``init=best``, the best weights of the current
    phase together with the optimizer's slots: the authors' Keras 2.2.4 ``load_model``
    restored both. ``val_acc`` is -1 until a first copy is taken.
    """

    def __init__(self, model: keras.Model, name: str, optimizer=None):
        super().__init__(name=name)
        sources = list(model.weights) + (optimizer_slots(optimizer) if optimizer else [])
        self._sources = lambda: sources  # a function: not a checkpoint dependency
        self.values = [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False)
                       for w in model.weights]
        if optimizer is not None:
            self.slots = [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False)
                          for w in optimizer_slots(optimizer)]
        self.val_acc = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="val_acc")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")

    def _copies(self) -> list:
        return self.values + getattr(self, "slots", [])

    def record(self) -> rules.Record:
        return rules.Record(float(self.val_acc.numpy()), int(self.epoch.numpy()))

    def take(self, val_acc: float, epoch: int) -> None:
        for v, w in zip(self._copies(), self._sources(), strict=True):
            v.assign(w.value)
        self.val_acc.assign(val_acc)
        self.epoch.assign(epoch)

    def put(self) -> None:
        for v, w in zip(self._copies(), self._sources(), strict=True):
            w.assign(v)

    def set_record(self, record: rules.Record) -> None:
        """Sets the val top-1 and epoch the copy stands for (``rules.Record()``: none)."""
        self.val_acc.assign(record.val_acc)
        self.epoch.assign(record.epoch)
