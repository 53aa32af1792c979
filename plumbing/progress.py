"""The one progress line of every command, on stderr, readable in a log file.

On a terminal the line is rewritten in place; anywhere else (``> log.txt 2>&1``, a CI log) it
becomes a plain line at most every ``interval`` seconds and no control characters, so a log
holds a few progress lines, not a bar redrawn a thousand times.

Rates and the ETA are measured from the first update, so a start-up cost the caller names
(``wait_note``: tracing and compiling a train step, starting worker processes) is not counted
as slow progress. A caller either calls :meth:`Progress.update` itself (a training epoch,
predictions, a download) or lets :meth:`Progress.watching` poll a counter from a thread (the
converter's worker processes).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time


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


def _count(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


class Progress:
    """Progress towards ``total`` counted steps.

    Args:
      total: steps to do (None: unknown, no ETA).
      per_step: units per step, for the rate (e.g. a batch's images).
      unit: the rate's unit ("img" gives "img/s").
      count_unit: written after ``done/total`` (e.g. "MB"), empty for none.
      wait_note: printed before the first update, which the caller expects to be slow
        (e.g. a compile); empty for none.
      wait_done: after the first update, "<prefix><wait_done> in <s> s" is printed.
      enabled: False prints nothing.
      stream: defaults to stderr.
      interval: seconds between plain lines when the stream is not a terminal.
      clock: ``time.perf_counter`` (tests pass a fake one).
      prefix: the start of every line (e.g. "epoch 3: ").
    """

    def __init__(self, total, *, per_step: float = 1.0, unit: str = "img",
                 count_unit: str = "", wait_note: str = "", wait_done: str = "ready",
                 enabled: bool = True, stream=None, interval: float = 30.0,
                 clock=time.perf_counter, prefix: str = ""):
        self.total, self.per_step, self.unit, self.count_unit = total, per_step, unit, count_unit
        self.wait_note, self.wait_done = wait_note, wait_done
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = is_terminal(self.stream)
        self.interval, self.clock, self.prefix = interval, clock, prefix
        self.t_begin = clock()
        self.t_first = None      # time of the first update (rates are measured from it)
        self.done_first = 0      # steps done at the first update
        self.last_print = self.t_begin
        self.width = 0
        self.closed = False
        if enabled and wait_note:
            self._emit(f"{prefix}{wait_note}", final=not self.tty)

    def rate(self, done) -> float:
        """Units/s since the first update (0 before a second one)."""
        if self.t_first is None or done <= self.done_first:
            return 0.0
        elapsed = self.clock() - self.t_first
        return (done - self.done_first) * self.per_step / elapsed if elapsed > 0 else 0.0

    def eta(self, done) -> float | None:
        """Seconds left, from the steps after the first update (None before a second one)."""
        if self.total is None or self.t_first is None or done <= self.done_first:
            return None
        per_step = (self.clock() - self.t_first) / (done - self.done_first)
        return per_step * (self.total - done)

    def update(self, done, **metrics: float) -> None:
        """Records that ``done`` steps are finished; shows ``metrics`` (e.g. loss, acc).

        The last step ends a terminal's line; a log gets no line for it (the caller's
        summary follows; :meth:`close` writes one when it is wanted).
        """
        now = self.clock()
        if self.t_first is None:
            self.t_first, self.done_first = now, done
            if self.wait_note and self.enabled:
                self._emit(f"{self.prefix}{self.wait_done} in {now - self.t_begin:.1f} s",
                           final=True)
        if not self.enabled or self.closed:
            return
        last = self.total is not None and done >= self.total
        if not self.tty and (last or now - self.last_print < self.interval):
            return  # a log gets a line per interval
        self.last_print = now
        self._emit(self.line(done, **metrics), final=last)
        self.closed = last

    def close(self, done, **metrics: float) -> None:
        """Writes the final line (also into a log) unless the last update already ended it."""
        if self.enabled and not self.closed:
            self._emit(self.line(done, **metrics), final=True)
        self.closed = True

    def line(self, done, **metrics: float) -> str:
        """``<prefix><done>/<total>  <metric> <value>  <rate> <unit>/s  ETA m:ss``."""
        count = _count(done) if self.total is None else f"{_count(done)}/{_count(self.total)}"
        parts = [f"{self.prefix}{count}{' ' + self.count_unit if self.count_unit else ''}"]
        parts += [f"{k} {v:.4f}" for k, v in metrics.items()]
        rate = self.rate(done)
        if rate:
            parts.append(f"{rate:.1f} {self.unit}/s" if rate < 10 else
                         f"{rate:.0f} {self.unit}/s")
        eta = self.eta(done)
        if eta is not None and done < self.total:
            parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    @contextlib.contextmanager
    def watching(self, read_done, every: float = 0.25):
        """Updates from ``read_done()`` every ``every`` seconds in a thread while the block
        runs (for work counted elsewhere, e.g. in worker processes); then the final line."""
        stop = threading.Event()

        def poll():
            while not stop.wait(every):
                self.update(read_done())

        thread = threading.Thread(target=poll, daemon=True)
        if self.enabled:
            thread.start()
        try:
            yield self
        except BaseException:
            self._stop(stop, thread)
            if self.tty and self.width:
                self._emit("", final=True)  # end the half-drawn line before the error
            raise
        self._stop(stop, thread)
        self.close(read_done())

    @staticmethod
    def _stop(stop: threading.Event, thread: threading.Thread) -> None:
        stop.set()
        if thread.is_alive():
            thread.join()

    def _emit(self, line: str, *, final: bool) -> None:
        if self.tty:
            pad = max(0, self.width - len(line))
            self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            self.width = 0 if final else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
