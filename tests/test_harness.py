"""The test harness's own mechanics (``conftest.py``) that save the suite time: a build the
pytest-xdist workers share is made once per run, and only there."""

import types

import conftest


def _request(worker: bool):
    config = types.SimpleNamespace(**({"workerinput": {"workerid": "gw0"}} if worker else {}))
    return types.SimpleNamespace(config=config)


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
        conftest.Path(out).mkdir(parents=True)
        (conftest.Path(out) / "manifest.json").write_text("{}")
    return make


def test_a_shared_build_is_made_once_per_run_by_the_first_worker_that_asks(tmp_path):
    calls = []
    first = conftest._built_once(_request(True), _Factory(tmp_path, "gw0"), "demo",
                                 _make(calls))
    second = conftest._built_once(_request(True), _Factory(tmp_path, "gw1"), "demo",
                                  _make(calls))
    assert first == second == str(tmp_path / "shared-demo" / "build") and calls == [first]


def test_outside_pytest_xdist_a_session_makes_its_own_build_in_its_temp(tmp_path):
    """A plain pytest, or the two-CPU child a worker starts (it inherits the worker's
    environment, not its role), does not touch the workers' shared folder."""
    calls = []
    out = conftest._built_once(_request(False), _Factory(tmp_path, "solo"), "demo",
                               _make(calls))
    assert out == str(tmp_path / "popen-solo" / "demo" / "build") and calls == [out]
    assert not (tmp_path / "shared-demo").exists()
