"""Training: schedules, strategy, the compiled steps, the fit loop, reports and evaluation.

The only package that imports all the others (``tinyimagenet_tfrecords``, ``augment``,
``models``); ``train_main.py`` parses flags and calls :func:`run` with a
:class:`config.RunConfig`. ``run`` and ``make_synthetic_build`` are imported on first use
(PEP 562), so ``import training.config`` stays light and ``python -m training.evaluate`` runs
its module once, without a ``found in sys.modules`` warning.
"""

from training.config import ConfigError, Phase, RunConfig
from training.errors import Diverged, Interrupted, RunError, RunFailure

__all__ = ["BuildError", "ConfigError", "Diverged", "Interrupted", "Phase", "RunConfig", "RunError",
           "RunFailure", "make_synthetic_build", "run"]


def __getattr__(name):
    if name == "run":
        from training.runner import run
        return run
    if name == "BuildError":  # a data build that cannot be read (exit 2, as RunError)
        from tinyimagenet_tfrecords.manifest import BuildError
        return BuildError
    if name == "make_synthetic_build":
        from training.data import make_synthetic_build
        return make_synthetic_build
    raise AttributeError(f"module 'training' has no attribute {name!r}")
