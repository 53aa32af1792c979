"""Hooks: the fit loop's public seam for watching (or stopping) a run from outside.

``training.run(cfg, hooks=...)`` calls these at fixed points of every epoch, so tests and
tools observe the loop without reaching into its private names. The base class does nothing.
"""

from __future__ import annotations


class Hooks:
    """Override the methods you need; each is called on the chief and the other workers."""

    def model_built(self, model) -> None:
        """The model exists (built under the strategy, BatchNorm settings applied)."""

    def epoch_started(self, epoch: int, model) -> None:
        """Epoch ``epoch`` (1-based) is about to train; its phase's start is done."""

    def checkpoint_saved(self, epoch: int) -> None:
        """The checkpoint of epoch ``epoch`` has been written."""

    def best_exported(self, path: str, epoch: int) -> None:
        """``best.keras`` at ``path`` now holds the best weights, those of epoch ``epoch``."""

    def epoch_recorded(self, row: dict, model) -> None:
        """Epoch ``row["epoch"]`` is fully recorded (checkpoint if due, best.keras, history,
        summaries); ``model`` holds its weights."""
