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
import sys
import time

# One implementation for every command (the converter's included): see tinyimagenet_tfrecords.cli.
from tinyimagenet_tfrecords.cli import import_tensorflow_quietly, quiet_tensorflow  # noqa: F401


# What a user waits for: a figure measured on this project's 2 loaded CPU cores (README).
COMPILING = ("compiling the train step (the first step includes it; an augmented phase "
             "typically takes about 1-2.5 min on 2 CPU cores, and --noxla or aug=none trial "
             "runs compile faster on a CPU)...")


def log(msg: str, stream=None) -> None:
    """One line of run output on stderr (the stream progress also uses)."""
    stream = stream or sys.stderr
    print(msg, file=stream, flush=True)


def is_terminal(stream) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


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
            self._emit(f"{prefix}{COMPILING}", final=not self.tty)

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
