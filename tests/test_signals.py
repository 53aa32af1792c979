"""Ctrl-C and SIGTERM stop ``train_main`` with one line and exit 130, promptly, however it was
started: also as a background job (``&``, ``nohup``, some CI runners), whose children inherit
SIGINT *ignored*.

Each run is a subprocess (signals go to a whole process); every exit path kills what a test
started, so a failing test leaves no training running.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import forkserver
import pytest
from conftest import committed_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# PYTHONFAULTHANDLER: a child that does not stop is sent SIGABRT, and shows where it was.
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT,
       "PYTHONFAULTHANDLER": "1"}
# Long enough never to finish before the test signals it (each epoch takes a fraction of a second).
LONG_ARGS = ["--model=smoke", "--image_size=16", "--val_image_size=16",
             "--batch_size=32", "--steps_per_epoch=2", "--epochs=1000", "--noxla",
             "--progress=false", "--misclassified=0"]
INTERRUPTED = re.compile(r"train_main: error: interrupted after epoch (\d+); run the same "
                         r"command to resume")
GONE_WITHIN_S = 5.0  # after its one line; an interpreter shutdown took 18-41 s


class Run:
    """A ``train_main`` subprocess whose stderr lines are read (and timed) as they come."""

    def __init__(self, data, out, *, sigint):
        self.out = out
        self.lines: list[tuple[float, str]] = []
        # Forked from the test server (tests/forkserver.py), a real process whose SIGINT is
        # ignored from its start as after ``preexec_fn``, or handled.
        self.proc = forkserver.Popen(
            [sys.executable, os.path.join(ROOT, "train_main.py"), f"--data={data}",
             f"--out={out}", *LONG_ARGS], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, sigint_ignored=sigint == signal.SIG_IGN)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for_checkpoint(self, epoch, timeout=300):
        end = time.monotonic() + timeout
        while committed_checkpoint(self.out) < epoch:
            assert self.proc.poll() is None, self.text()[-3000:]
            assert time.monotonic() < end, f"{self.out}: no checkpoint of epoch {epoch}"
            time.sleep(0.05)

    def wait(self, timeout=120) -> float:
        """Waits for the exit; returns when it happened (``time.monotonic``)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # its Python stacks, into self.lines
            self.proc.wait(timeout=30)
            self.reader.join(timeout=10)
            pytest.fail(f"still running {timeout} s after the signal:\n{self.text()[-6000:]}")
        gone = time.monotonic()
        self.reader.join(timeout=10)
        return gone

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_and_sigterm_stop_with_one_line_exit_130_and_are_gone_at_once(
        synthetic_build, tmp_path):
    # The SIGINT run starts with SIGINT ignored, as a background job does: train_main itself
    # gives Ctrl-C its meaning back. The SIGTERM run starts with SIGINT at its default.
    runs = {signal.SIGINT: Run(synthetic_build, str(tmp_path / "int"), sigint=signal.SIG_IGN),
            signal.SIGTERM: Run(synthetic_build, str(tmp_path / "term"), sigint=signal.SIG_DFL)}
    try:
        for run in runs.values():
            run.wait_for_checkpoint(1)
        for sig, run in runs.items():  # one at a time: the other one's exit is not timed here
            run.proc.send_signal(sig)
            gone = run.wait()
            err = run.text()
            assert run.proc.returncode == 130, (sig, err[-3000:])
            assert "Traceback" not in err, err[-3000:]
            said, last = run.lines[-1]
            m = INTERRUPTED.fullmatch(last)
            assert m, (sig, last)
            assert int(m.group(1)) == committed_checkpoint(run.out) >= 1
            assert not os.path.exists(os.path.join(run.out, "run.lock"))
            assert gone - said < GONE_WITHIN_S, (sig, f"exited {gone - said:.1f} s after "
                                                      "its one line")
    finally:
        for run in runs.values():
            run.kill()
