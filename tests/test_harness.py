"""The test harness's own mechanics that save the suite time: a build the pytest-xdist workers
share is made once per run, and only there; workers end with ``os._exit`` without losing a
result (``conftest.py``); entry points run forked from a server that imported TensorFlow
(``forkserver.py``)."""

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


# --- tests/forkserver.py: entry points forked from a server that imported TensorFlow -------

FORK_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(conftest.ROOT)}


@pytest.mark.slow  # the server imports TensorFlow (once per test process)
@pytest.mark.subprocess
def test_a_forked_child_runs_like_a_started_interpreter(tmp_path):
    import forkserver
    before = dict(forkserver.FORKED)
    # (Run first: the server, if this starts it, has another TMPDIR than the script's below.)
    # Uncaught exceptions exit 1 with their traceback, Ctrl-C's exits by SIGINT, -m runs the
    # module as __main__ without finding it imported (no runpy RuntimeWarning).
    cases = {("-c", "raise ValueError('boom')"): (1, "ValueError: boom"),
             ("-c", "raise KeyboardInterrupt"): (-2, "KeyboardInterrupt"),
             ("-m", "training.evaluate", "--no_such_flag=1"): (
                 2, "__main__: error: Unknown command line flag 'no_such_flag'")}
    for args, (status, said) in cases.items():
        done = forkserver.run([sys.executable, *args], env=FORK_ENV, cwd=str(conftest.ROOT),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == status and said in done.stderr, (args, done)
        assert "RuntimeWarning" not in done.stderr
    script = tmp_path / "tool.py"
    script.write_text(
        "import os, sys, tempfile\n"
        "print(sys.argv, sys.path[0], os.getcwd(), tempfile.gettempdir(), os.environ['MINE'],\n"
        "      'tensorflow' in sys.modules, __name__, __file__)\n"
        "sys.stderr.write('to stderr\\n')\n"
        "sys.exit(3)\n")
    (tmp_path / "tmp").mkdir()
    env = {**FORK_ENV, "MINE": "yes", "TMPDIR": str(tmp_path / "tmp")}
    done = forkserver.run([sys.executable, str(script), "--a=1"], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3 and done.stderr == "to stderr\n", done
    assert done.stdout.split() == [
        f"['{script}',", "'--a=1']", str(tmp_path), str(tmp_path), str(tmp_path / "tmp"), "yes",
        "True", "__main__", str(script)], done.stdout
    assert forkserver.FORKED["forked"] == before["forked"] + 4


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_forked_child_takes_signals_sessions_and_an_ignored_sigint_as_a_started_one():
    import signal
    import forkserver
    sleeper = [sys.executable, "-c",
               "import signal, time; h = signal.getsignal(signal.SIGINT); "
               "print('ignored' if h == signal.SIG_IGN else h.__name__, flush=True); "
               "time.sleep(60)"]
    for ignored in (False, True):
        proc = forkserver.Popen(sleeper, env=FORK_ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                sigint_ignored=ignored)
        try:
            assert proc.stdout.readline().strip() == (
                "ignored" if ignored else "default_int_handler")
            assert os.getpgid(proc.pid) == proc.pid  # its own session and process group
            assert proc.poll() is None
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL


def test_what_a_fork_cannot_reproduce_runs_as_a_real_subprocess(monkeypatch):
    """Interpreter options, another program, or an environment that acts at import time."""
    import forkserver
    monkeypatch.setattr(forkserver, "_server",
                        lambda env: None if env.get("TF_CPP_MIN_LOG_LEVEL") != "2" else "server")
    assert forkserver._target([sys.executable, "-I", "x.py"]) is None
    assert forkserver._target(["/bin/true"]) is None
    assert forkserver._target([sys.executable, "x.py", "-v"]) == ("script", "x.py", ["x.py", "-v"])
    assert forkserver._target([sys.executable, "-m", "pkg.mod", "-v"]) == (
        "-m", "pkg.mod", ["pkg.mod", "-v"])
    # GRPC_VERBOSITY: set in os.environ by any entry point imported or run in-process (the
    # server sets it too), so the environments the test modules capture may or may not have it.
    assert forkserver._import_env({"TF_CONFIG": "{}", "PYTEST_CURRENT_TEST": "t", "HOME": "/",
                                   "GRPC_VERBOSITY": "ERROR", "TF_CPP_MIN_LOG_LEVEL": "2"}
                                  ) == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    before = dict(forkserver.FORKED)
    done = forkserver.run(["/bin/sh", "-c", "exit 4"], env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 4
    done = forkserver.run([sys.executable, "-c", "import sys; sys.exit(5)"],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 5
    assert forkserver.FORKED == {"forked": before["forked"],
                                 "subprocess": before["subprocess"] + 2}
