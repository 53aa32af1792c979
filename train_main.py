"""Train a Tiny ImageNet DenseNet-style network: ``train_main --flagfile=flags/net2.flags``.

Parses flags into a :class:`training.config.RunConfig` and calls :func:`training.run` — nothing
else reads flags. Every :class:`~training.config.RunConfig` field is a flag of the same name,
defined here from the field's type, default and help (``training.config.setting``).

Curriculum phases are repeated ``--phase`` flags (see ``training/config.py``)::

    --phase=epochs=15,size=32,batch=256,aug=none,plateau=on
    --phase=epochs=24,min_lr=1e-4,max_lr=6e-4,step_epochs=6

``--phase`` flags given on the command line replace a flagfile's; ``--epochs=N`` with phases
trains the first N epochs of the curriculum. A flag that cannot apply is refused.

Exit status: 0 done, 2 bad input or usage (one line on stderr, nothing written), 1 the run
failed while running (one line; the last checkpoint is kept), 130 interrupted (Ctrl-C or
SIGTERM; re-running the same command resumes from the last checkpoint).
"""

from __future__ import annotations

import os
import signal
import sys
import typing

from absl import flags
from absl import logging

from tinyimagenet_tfrecords import cli as cli_lib
from training import config as config_lib
from training import console

console.quiet_tensorflow()

FLAGS = flags.FLAGS

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def _define_config_flags() -> None:
    """One flag per RunConfig field (type, default, help and choices from the field)."""
    hints = typing.get_type_hints(config_lib.RunConfig)
    definers = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_bool,
                str: flags.DEFINE_string}
    for field in config_lib.flag_fields():
        help_text = field.metadata["help"]
        if field.metadata.get("choices"):
            flags.DEFINE_enum(field.name, field.default, list(field.metadata["choices"]),
                              help_text)
        else:
            definers[hints[field.name]](field.name, field.default, help_text)


_define_config_flags()
# Phase defaults: the values a --phase leaves out (or the single phase when none is given).
flags.DEFINE_integer("epochs", 1, "epochs of the single phase when no --phase is given; with "
                     "phases, train only the curriculum's first N epochs")
flags.DEFINE_multi_string("phase", [], "a curriculum phase 'epochs=N[,size=S][,batch=B]"
                          "[,aug=RECIPE][,plateau=on|off][,min_lr=..,max_lr=..,step_epochs=..]'"
                          "; repeat in order. On the command line they replace a flagfile's")
flags.DEFINE_integer("image_size", 64, "training image size of phases that set no size=")
flags.DEFINE_string("augment", "none", "augmentation recipe of phases that set no aug= "
                    "(augment.RECIPE_NAMES)")
flags.DEFINE_bool("plateau", False, "ReduceLROnPlateau on val_loss in phases that set no "
                  "plateau=")
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

# Run-wide flag -> the phase key that overrides it.
_PHASE_DEFAULTS = {"image_size": "size", "batch_size": "batch", "augment": "aug",
                   "plateau": "plateau"}


def command_line_phases(argv: list[str]) -> list[str]:
    """The ``--phase`` values typed on the command line itself (not read from a flagfile)."""
    found, args = [], list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("--phase="):
            found.append(arg[len("--phase="):])
        elif arg == "--phase" and i + 1 < len(args):
            found.append(args[i + 1])
    return found


def _present(f, name: str) -> bool:
    return bool(f[name].present)


def build_config(f, cli_phases: list[str] | None = None) -> config_lib.RunConfig:
    """The run settings from parsed flags ``f``.

    Args:
      f: parsed absl flag values.
      cli_phases: the ``--phase`` values given on the command line; when any, they replace
        the flagfile's.

    Raises:
      config.ConfigError: a bad value, or a flag that cannot apply to these phases.
    """
    specs = list(cli_phases) if cli_phases else list(f.phase)
    defaults = dict(image_size=f.image_size, batch_size=f.batch_size, augment=f.augment,
                    plateau=f.plateau)
    if specs:
        phases = tuple(config_lib.parse_phase(s, **defaults) for s in specs)
        for flag_name, key in _PHASE_DEFAULTS.items():
            if _present(f, flag_name) and all(_sets_key(s, key) for s in specs):
                raise config_lib.ConfigError(
                    f"--{flag_name}={f[flag_name].value}: does not apply, every --phase sets "
                    f"{key}=")
        if _present(f, "epochs"):
            phases = config_lib.first_epochs(phases, f.epochs)
    else:
        if f.epochs < 1:
            raise config_lib.ConfigError(f"--epochs={f.epochs}: must be >= 1")
        phases = (config_lib.Phase(epochs=f.epochs, image_size=f.image_size,
                                   batch_size=f.batch_size, augment=f.augment,
                                   plateau=f.plateau),)
    if f.lr_schedule == "triangular2" and _present(f, "learning_rate"):
        raise config_lib.ConfigError(
            f"--learning_rate={f.learning_rate}: does not apply with --lr_schedule=triangular2 "
            "(each --phase sets min_lr/max_lr)")
    if not f.make_synthetic_data:
        for name in ("synthetic_classes", "synthetic_train_per_class",
                     "synthetic_val_per_class"):
            if _present(f, name):
                raise config_lib.ConfigError(f"--{name}: does not apply without "
                                             "--make_synthetic_data")
    kwargs = {field.name: f[field.name].value for field in config_lib.flag_fields()}
    from training import fileio
    for key in ("data", "out"):
        if kwargs[key]:
            kwargs[key] = fileio.abspath(kwargs[key])  # URLs (gs://, ram://, ...) unchanged
    return config_lib.RunConfig(phases=phases, **kwargs)


def _sets_key(spec: str, key: str) -> bool:
    return any(item.partition("=")[0].strip() == key for item in spec.split(","))


def exit_status(error: BaseException) -> int:
    """The exit status for an error a run ended with (README, "Exit status")."""
    import training  # pylint: disable=import-outside-toplevel
    from tinyimagenet_tfrecords import manifest as manifest_lib
    if isinstance(error, training.Interrupted):
        return EXIT_INTERRUPTED
    if isinstance(error, training.RunFailure):
        return EXIT_FAILED
    if isinstance(error, (config_lib.ConfigError, manifest_lib.BuildError, training.RunError)):
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


def _sigterm_as_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def interrupt_on_signals() -> None:
    """Makes Ctrl-C (SIGINT) and SIGTERM raise KeyboardInterrupt, which the run turns into
    "interrupted after epoch N" and exit 130.

    SIGINT gets Python's own handler back: a job started in the background (``&``, ``nohup``,
    some CI runners) inherits SIGINT *ignored*, yet its user still expects ``kill -INT`` (or
    Ctrl-C after ``fg``) to stop it cleanly.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TF's per-step INFO lines drown the progress bar
    interrupt_on_signals()
    console.import_tensorflow_quietly()
    import training
    from tinyimagenet_tfrecords import manifest as manifest_lib
    try:
        cfg = build_config(FLAGS, command_line_phases(sys.argv))
        if FLAGS.num_logical_cpus > 1:
            from training import strategy as strategy_lib
            strategy_lib.configure_logical_cpus(FLAGS.num_logical_cpus)
        if FLAGS.make_synthetic_data and cfg.data and not os.path.exists(cfg.data):
            training.make_synthetic_build(
                cfg.data, num_classes=FLAGS.synthetic_classes,
                train_per_class=FLAGS.synthetic_train_per_class,
                val_per_class=FLAGS.synthetic_val_per_class, seed=FLAGS.seed)
        own = FLAGS.get_flags_for_module(sys.modules[__name__])
        flags_text = "".join(fl.serialize() + "\n" for fl in sorted(own, key=lambda x: x.name)
                             if fl.serialize())
        summary = training.run(cfg, flags_text=flags_text)
    except (config_lib.ConfigError, manifest_lib.BuildError, training.RunError,
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
