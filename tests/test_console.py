"""Run output: progress on stderr, no control characters in a log, compile time left out."""

import io
import os
import subprocess
import sys

import pytest

from training import console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_log_has_no_control_characters_and_few_lines():
    stream, clock = io.StringIO(), FakeClock()
    bar = console.Progress(100, batch_size=10, compiling=True, stream=stream, clock=clock,
                           interval=30)
    clock.t = 20.0                       # the first call: tracing + XLA compile
    bar.update(1, loss=2.0)
    for step in range(2, 101):
        clock.t += 1.0
        bar.update(step, loss=1.0)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text and "\x08" not in text
    lines = text.splitlines()
    assert lines[0].startswith("compiling") and lines[1] == "compiled in 20.0 s"
    assert 2 <= len(lines) - 2 <= 4, lines   # one line per 30 s of a 99 s epoch


def test_the_compiling_line_says_how_long_and_what_compiles_faster():
    stream = io.StringIO()
    console.Progress(10, batch_size=1, compiling=True, stream=stream)
    line = stream.getvalue().splitlines()[0]
    assert "1-2.5 min on 2 CPU cores" in line and "--noxla" in line and "aug=none" in line


def test_rate_and_eta_leave_the_compiling_call_out():
    clock = FakeClock()
    bar = console.Progress(11, batch_size=32, compiling=True, enabled=False, clock=clock)
    clock.t = 300.0                     # a five-minute compile
    bar.update(1)
    assert bar.rate(1) == 0.0 and bar.eta(1) is None
    clock.t = 302.0                     # then 2 s per step
    bar.update(2)
    assert bar.rate(2) == 16.0          # 32 images / 2 s, not 64 images / 302 s
    assert bar.eta(2) == 18.0           # 9 steps left x 2 s


def test_progress_on_a_terminal_rewrites_one_line():
    stream, clock = Tty(), FakeClock()
    bar = console.Progress(3, batch_size=1, compiling=True, stream=stream, clock=clock)
    for step in (1, 2, 3):
        clock.t += 1
        bar.update(step, loss=0.5)
    text = stream.getvalue()
    assert text.count("\n") == 2          # "compiled in" and the finished bar
    assert "compiling" in text and "3/3" in text and "\x1b" not in text


@pytest.mark.slow  # a subprocess importing TensorFlow
@pytest.mark.subprocess
def test_tensorflow_start_up_noise_is_not_printed():
    proc = subprocess.run(
        [sys.executable, "-c", "from training import console; "
         "console.import_tensorflow_quietly(); import tensorflow as tf; "
         "print(int(tf.constant(3)))"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
        timeout=120)
    assert proc.stdout.strip() == "3"
    assert "oneDNN" not in proc.stderr and "absl::InitializeLog" not in proc.stderr, proc.stderr
