"""What a run prints: one stream (stderr) for progress and summaries, readable in a log file.

On a terminal the progress bar rewrites its line; anywhere else (``> log.txt 2>&1``, a CI log)
it writes a plain line at most every ``interval`` seconds and no control characters, so a log
holds the epoch summaries and a few progress lines, not a bar redrawn a thousand times.

The first call of a newly built train step includes tracing and the XLA compile (seconds to
minutes): the bar says "compiling" until it returns, and images/s and the ETA are measured
from after it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time

# TensorFlow's start-up lines that say nothing about this run (some printed once per loaded
# library, so twice): dropped by :func:`import_tensorflow_quietly`.
_TF_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"cpu_feature_guard|This TensorFlow binary is optimized|To enable the following "
    r"instructions|rebuild TensorFlow with the appropriate compiler flags|Unable to register "
    r"cu(DNN|FFT|BLAS) factory|computation placer already registered|TF-TRT Warning|"
    r"Could not find cuda drivers|cuda_executor.cc.*NUMA node")


def log(msg: str, stream=None) -> None:
    """One line of run output on stderr (the stream progress also uses)."""
    stream = stream or sys.stderr
    print(msg, file=stream, flush=True)


def is_terminal(stream) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


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


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of one epoch of ``total`` steps.

    Args:
      total: steps in the epoch.
      batch_size: images per step (for images/s).
      compiling: the first update follows the step's first call, which traced and compiled it.
      enabled: False prints nothing.
      stream: defaults to stderr.
      interval: seconds between plain lines when the stream is not a terminal.
      clock: ``time.perf_counter`` (tests pass a fake one).
    """

    def __init__(self, total: int, *, batch_size: int, compiling: bool = False,
                 enabled: bool = True, stream=None, interval: float = 30.0,
                 clock=time.perf_counter, prefix: str = ""):
        self.total = total
        self.batch_size = batch_size
        self.compiling = compiling
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = is_terminal(self.stream)
        self.interval = interval
        self.clock = clock
        self.prefix = prefix
        self.t_begin = clock()
        self.t_first = None      # time at the end of the first call (excluded from rates)
        self.done_first = 0      # steps done by the first call
        self.last_print = self.t_begin
        self.width = 0
        if enabled and compiling:
            self._emit(f"{prefix}compiling the train step (the first step includes it)...",
                       final=not self.tty)

    def rate(self, done: int) -> float:
        """Images/s since the end of the first call (0 before a second call)."""
        if self.t_first is None or done <= self.done_first:
            return 0.0
        elapsed = self.clock() - self.t_first
        return (done - self.done_first) * self.batch_size / elapsed if elapsed > 0 else 0.0

    def eta(self, done: int) -> float | None:
        """Seconds left, from the steps after the first call (None before a second call)."""
        if self.t_first is None or done <= self.done_first:
            return None
        per_step = (self.clock() - self.t_first) / (done - self.done_first)
        return per_step * (self.total - done)

    def update(self, done: int, **metrics: float) -> None:
        """Records that ``done`` steps are finished; shows ``metrics`` (e.g. loss, acc)."""
        now = self.clock()
        if self.t_first is None:
            self.t_first, self.done_first = now, done
            if self.compiling and self.enabled:
                self._emit(f"{self.prefix}compiled in {now - self.t_begin:.1f} s",
                           final=True)
        if not self.enabled:
            return
        last = done >= self.total
        if not self.tty and (last or now - self.last_print < self.interval):
            return  # a log gets a line per interval; the epoch summary follows the last step
        self.last_print = now
        parts = [f"{self.prefix}{done}/{self.total}"]
        parts += [f"{k} {v:.4f}" for k, v in metrics.items()]
        rate = self.rate(done)
        if rate:
            parts.append(f"{rate:.0f} img/s")
        eta = self.eta(done)
        if eta is not None and not last:
            parts.append(f"ETA {format_duration(eta)}")
        self._emit("  ".join(parts), final=last)

    def _emit(self, line: str, *, final: bool) -> None:
        if self.tty:
            pad = max(0, self.width - len(line))
            self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            self.width = 0 if final else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
