"""The command-line convention of every tool: absl flags, exit 2 for usage, 1 for failures.

Every tool's ``main(argv)`` (the data tools, ``augment.grid``, ``train_main``, evaluation,
export, predictions, the benchmarks) maps its flags to one library call with explicit
arguments and returns :data:`EXIT_OK`, :data:`EXIT_FAILURE` (a failure while running),
:data:`EXIT_BAD_INPUT` (bad input or usage) or :data:`EXIT_INTERRUPTED` (Ctrl-C, as a shell
reports SIGINT); :func:`run` starts it so that ``--help`` lists
the tool's flags even under a console-script wrapper and exits 0 (absl alone exits 1), a flag
error is one line and exit 2 (absl alone exits 1), and output into a closed pipe
(``--help | head -1``) ends quietly instead of with a ``BrokenPipeError`` traceback.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import typing

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

# TensorFlow's start-up lines that say nothing about this run (some printed once per loaded
# library, so twice): dropped by :func:`import_tensorflow_quietly`.
_TF_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"cpu_feature_guard|This TensorFlow binary is optimized|To enable the following "
    r"instructions|rebuild TensorFlow with the appropriate compiler flags|Unable to register "
    r"cu(DNN|FFT|BLAS) factory|computation placer already registered|TF-TRT Warning|"
    r"Could not find cuda drivers|cuda_executor.cc.*NUMA node")


def quiet_tensorflow() -> None:
    """Silences TensorFlow's C++ startup INFO/WARNING lines (set before TF is imported) and
    Python-side INFO logging, so each command prints its own output and errors only."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import logging  # pylint: disable=import-outside-toplevel
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up noise filtered out of stderr.

    TF 2.21 logs through absl before ``TF_CPP_MIN_LOG_LEVEL`` applies, once per shared
    library; the lines are captured from file descriptor 2 during the import and every line
    that is not known noise is written back.
    """
    if "tensorflow" in sys.modules:
        return
    quiet_tensorflow()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if line and not _TF_NOISE.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


class _Interrupt:
    """The SIGINT/SIGTERM handler: raises KeyboardInterrupt, and remembers that it was asked
    so that :func:`raise_if_interrupted` can raise it again where code it ran in dropped it
    (a Ctrl-C that a dependency swallowed once let a run train on)."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):  # noqa: ARG002 - signal handler signature
        self.requested = True
        raise KeyboardInterrupt


def interrupt_on_signals() -> None:
    """Makes Ctrl-C (SIGINT) and SIGTERM raise KeyboardInterrupt, which a tool turns into one
    line and :data:`EXIT_INTERRUPTED`.

    SIGINT gets a handler back even where it was ignored: a job started in the background
    (``&``, ``nohup``, some CI runners) inherits SIGINT *ignored*, yet its user still expects
    ``kill -INT`` (or Ctrl-C after ``fg``) to stop it cleanly.
    """
    handler = _Interrupt()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def raise_if_interrupted() -> None:
    """Raises KeyboardInterrupt if a signal asked the tool to stop, also when the first
    KeyboardInterrupt was lost; long loops call this between their steps."""
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, _Interrupt) and handler.requested:
        raise KeyboardInterrupt


def exit_now(status: int) -> None:
    """Flushes stdout/stderr and ends the process at once, skipping interpreter shutdown.

    For command-line entry points only, after everything that matters is written: collecting
    TensorFlow's objects at shutdown can take tens of seconds. A reader that has gone away
    (closed pipe) is not an error here.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)  # pylint: disable=protected-access


def _quiet_after_closed_pipe(status: int) -> typing.NoReturn:
    """Exits with ``status`` without Python's "Exception ignored ... BrokenPipeError" at
    shutdown: what is still buffered for the closed stdout goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(status)


def run(main, module_name: str) -> None:
    """``app.run(main)`` with the tool's flags listed by ``--help`` and usage errors exit 2.

    Args:
      main: ``main(argv) -> int`` of the tool.
      module_name: ``__name__`` of the module that defined the tool's flags.
    """
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    fv = flags.FLAGS
    # absl's --help lists the flags "key" to sys.argv[0]'s module; under a console script
    # that is the wrapper, so register the tool's flags for it too.
    for flag in fv.get_key_flags_for_module(sys.modules[module_name]):
        fv.register_key_flag_for_module(sys.argv[0], flag)
    name = os.path.basename(sys.argv[0]).removesuffix(".py")

    def run_main(argv):
        status = main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's shutdown
        sys.exit(status)

    try:
        app.run(run_main, flags_parser=lambda argv: parse(argv, name))
    except BrokenPipeError:  # the reader of stdout went away (``| head``): nothing to report
        _quiet_after_closed_pipe(EXIT_FAILURE)


def parse(argv: list[str], name: str) -> list[str]:
    """absl's flag parsing with this project's statuses: a flag error is one line and exit 2;
    ``--help``/``--helpfull`` print the flags and exit 0, also into a closed pipe.
    """
    from absl import flags  # pylint: disable=import-outside-toplevel
    try:
        try:
            return flags.FLAGS(argv)
        except SystemExit:  # only absl's help flags exit while parsing (absl's status is 1)
            sys.stdout.flush()
            sys.exit(EXIT_OK)
    except flags.Error as e:
        print(f"{name}: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except BrokenPipeError:
        _quiet_after_closed_pipe(EXIT_OK)
