"""Training: schedules, strategy, the compiled steps, the fit loop, reports and evaluation.

The only package that imports all the others (``tinyimagenet_tfrecords``, ``augment``,
``models``); ``train_main.py`` parses flags and calls :func:`run` with a
:class:`config.RunConfig`.
"""

from training.config import ConfigError, Phase, RunConfig
from training.data import make_synthetic_build
from training.errors import Diverged, RunError, RunFailure
from training.loop import run

__all__ = ["ConfigError", "Diverged", "Phase", "RunConfig", "RunError", "RunFailure",
           "make_synthetic_build", "run"]
