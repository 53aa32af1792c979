"""The test harness's own mechanics (``conftest.py``) that save the suite time: a build the
pytest-xdist workers share is made once per run, and only there; workers end with ``os._exit``
without losing a result."""

import os
import pathlib
import subprocess
import sys
import types

import conftest
import pytest


def _config(worker: bool):
    return types.SimpleNamespace(**({"workerinput": {"workerid": "gw0"}} if worker else {}))


class _Factory:
    """tmp_path_factory's two methods that ``_built_once`` uses, for one worker's base temp."""

    def __init__(self, run_dir, worker_id):
        self.base = run_dir / f"popen-{worker_id}"
        self.base.mkdir(parents=True)

    def getbasetemp(self):
        return self.base

    def mktemp(self, name):
        path = self.base / name
        path.mkdir()
        return path


def _make(calls):
    def make(out):
        calls.append(out)
        pathlib.Path(out).mkdir(parents=True)
        (pathlib.Path(out) / "manifest.json").write_text("{}")
    return make


def test_a_shared_build_is_made_once_per_run_by_the_first_worker_that_asks(tmp_path):
    calls = []
    first = conftest._built_once(_config(True), _Factory(tmp_path, "gw0"), "demo",
                                 _make(calls))
    second = conftest._built_once(_config(True), _Factory(tmp_path, "gw1"), "demo",
                                  _make(calls))
    assert first == second == str(tmp_path / "shared-demo" / "build") and calls == [first]


def test_outside_pytest_xdist_a_session_makes_its_own_build_in_its_temp(tmp_path):
    """A plain pytest, or the two-CPU child a worker starts (it inherits the worker's
    environment, not its role), does not touch the workers' shared folder."""
    calls = []
    out = conftest._built_once(_config(False), _Factory(tmp_path, "solo"), "demo",
                               _make(calls))
    assert out == str(tmp_path / "popen-solo" / "demo" / "build") and calls == [out]
    assert not (tmp_path / "shared-demo").exists()


PROBE = '''
def test_that_passes():
    pass


def test_that_fails():
    assert 1 == 2
'''


@pytest.mark.slow  # three pytest processes
@pytest.mark.subprocess  # a pytest-xdist run of its own
def test_workers_that_end_early_still_report_every_result_and_the_failing_status(tmp_path):
    """The workers' ``os._exit`` comes after their session is over: a run of two workers with
    this conftest as a plugin reports one pass and one failure, exit 1 (a worker that ended
    sooner would show as crashed, its test failed twice)."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TIN_TEST_"))}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), conftest.ROOT])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "conftest",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", os.devnull,
         str(tmp_path / "test_probe.py")],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 failed, 1 passed" in proc.stdout.strip().splitlines()[-1], proc.stdout[-3000:]
