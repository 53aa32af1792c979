"""Train a Tiny ImageNet DenseNet-style network: ``train_main --flagfile=flags/net2.flags``.

Parses flags into a :class:`training.config.RunConfig` and calls :func:`training.run` — nothing
else reads flags. Every setting is declared once in ``training/config.py``; its flag (type,
default, help) and the phase-default rules come from ``training.settings``. Settings are checked
before TensorFlow is imported, so a bad value is refused in about a second.

Curriculum phases are repeated ``--phase`` flags (see ``training/config.py``)::

    --phase=epochs=15,size=32,batch=256,aug=none,plateau=on
    --phase=epochs=24,min_lr=1e-4,max_lr=6e-4,step_epochs=6

``--phase`` flags given on the command line replace a flagfile's; ``--epochs=N`` with phases
trains the first N epochs of the curriculum. A flag typed on the command line that cannot apply
is refused; a flagfile's run-wide phase flags only fill keys the phases leave out.
``<out>/flags.txt`` is a flagfile that reproduces the run.

Exit status: 0 done, 2 bad input or usage (one line on stderr, nothing written), 1 the run
failed while running (one line; the last checkpoint is kept), 130 interrupted (Ctrl-C or
SIGTERM; re-running the same command resumes from the last checkpoint).
"""

from __future__ import annotations

import os
import sys

from absl import flags
from absl import logging

from plumbing import cli as cli_lib
from training import config as config_lib
from training import settings

cli_lib.quiet_tensorflow()

FLAGS = flags.FLAGS

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = (cli_lib.EXIT_BAD_INPUT, cli_lib.EXIT_FAILURE,
                                                 cli_lib.EXIT_INTERRUPTED)


# One flag per setting, derived from its declaration (training.config; training.settings).
settings.define_run_flags(FLAGS, __name__)
# Demo data (not part of the run's settings).
flags.DEFINE_bool("make_synthetic_data", False,
                  "if --data is missing, generate a small learnable synthetic dataset and "
                  "build it there (demos)")
flags.DEFINE_integer("synthetic_classes", 10, "classes of the synthetic dataset")
flags.DEFINE_integer("synthetic_train_per_class", 100, "training images per synthetic class")
flags.DEFINE_integer("synthetic_val_per_class", 20, "val images per synthetic class")
# Multi-replica tests on a CPU.
flags.DEFINE_integer("num_logical_cpus", 0,
                     "split the CPU into N logical devices (multi-replica tests on CPU)")
_OWN_FLAGS = ("make_synthetic_data", *settings.SYNTHETIC_FLAGS, "num_logical_cpus")


def config_and_flags_text(argv: list[str]) -> tuple[config_lib.RunConfig, str]:
    """The checked run settings from the parsed flags and ``argv``, and the flagfile text that
    reproduces them (``<out>/flags.txt``). Imports no TensorFlow.

    Raises:
      config.ConfigError: a bad value, or a flag typed on the command line that cannot apply.
    """
    cfg = settings.config_from_flags(FLAGS, argv)
    config_lib.validate_flags(cfg)
    return cfg, settings.flags_text(cfg, [FLAGS[name] for name in _OWN_FLAGS])


def exit_status(error: BaseException) -> int:
    """The exit status for an error a run ended with (README, "Exit status")."""
    import training  # pylint: disable=import-outside-toplevel
    if isinstance(error, training.Interrupted):
        return EXIT_INTERRUPTED
    if isinstance(error, training.RunFailure):
        return EXIT_FAILED
    if isinstance(error, (config_lib.ConfigError, training.BuildError, training.RunError)):
        return EXIT_BAD_INPUT
    raise TypeError(f"not a run error: {type(error).__name__}")


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _fail(msg: str, status: int = EXIT_BAD_INPUT) -> None:
    print(f"train_main: error: {msg}", file=sys.stderr, flush=True)
    if status == EXIT_INTERRUPTED:
        # Leave at once: the checkpoint is committed and run.lock released by now, while
        # unwinding would free the interrupted run's model and input pipeline (whose threads
        # are joined) and the interpreter's shutdown collect TensorFlow's objects: 10-40 s
        # that on a terminal look like a hang.
        cli_lib.exit_now(status)
    sys.exit(status)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TF's per-step INFO lines drown the progress bar
    cli_lib.interrupt_on_signals()
    try:  # settings first: a bad value is refused before TensorFlow starts (seconds)
        cfg, flags_text = config_and_flags_text(sys.argv)
    except config_lib.ConfigError as e:
        _fail(_one_line(e))
    cli_lib.import_tensorflow_quietly()
    import training
    try:
        if FLAGS.num_logical_cpus > 1:
            from training import strategy as strategy_lib
            strategy_lib.configure_logical_cpus(FLAGS.num_logical_cpus)
        if FLAGS.make_synthetic_data and cfg.data and not os.path.exists(cfg.data):
            training.make_synthetic_build(
                cfg.data, num_classes=FLAGS.synthetic_classes,
                train_per_class=FLAGS.synthetic_train_per_class,
                val_per_class=FLAGS.synthetic_val_per_class, seed=FLAGS.seed)
        summary = training.run(cfg, flags_text=flags_text)
    except (config_lib.ConfigError, training.BuildError, training.RunError,
            training.RunFailure, training.Interrupted) as e:
        _fail(_one_line(e), exit_status(e))
    except KeyboardInterrupt:  # before the run started: nothing was written
        _fail("interrupted before training started", EXIT_INTERRUPTED)
    print(f"done: {summary['epochs']} epochs, best val top-1 {summary['best_val_acc']:.4f}; "
          f"outputs in {cfg.out}", file=sys.stderr)


def run():
    """Console-script entry point (``train_main`` in setup.cfg): ``--help`` lists the flags;
    a flag error is one line and exit 2."""
    cli_lib.run(main, __name__)


if __name__ == "__main__":
    run()
