"""A clone from the internet has no real sample beside it: the suite must pass there too.

Runs the fast tier in a subprocess with ``TIN_SAMPLE`` pointed at an empty folder and checks
that it passes and that every test it skips is a real-sample test skipped with conftest's
reason (how to get a sample), so nothing that checks mechanics depends on the sample.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_fast_tier_passes_without_the_sample_and_skips_only_real_sample_tests(tmp_path):
    empty = tmp_path / "no-sample"
    empty.mkdir()
    env = {**os.environ, "TIN_SAMPLE": str(empty), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-rs", "-p",
         "no:cacheprovider", "--durations=0", "tests"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-3000:]
    assert proc.returncode == 0, tail
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("no real Tiny ImageNet sample" in line and str(empty) in line
               for line in skips), "\n".join(skips)
    # The training mechanics really ran: the in-process run is in the passed tests' timings.
    assert re.search(r"call\s+tests/test_training\.py::test_in_process_run", proc.stdout), tail
