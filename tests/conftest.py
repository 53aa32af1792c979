"""Shared test fixtures: one sample path, one build of it, one synthetic build.

The real 10-class sample is optional: ``TIN_SAMPLE`` names it, else
``../shared/data/tiny-imagenet-sample`` beside the checkout is used when present. Tests that
check mechanics run on the synthetic builds made here, so a clone from the internet with no
sample runs them all; real-sample tests are extra coverage and skip with a reason saying how
to get a sample.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
import runpy
import shutil
import signal
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

ROOT = str(Path(__file__).resolve().parents[1])
SAMPLE = os.environ.get("TIN_SAMPLE") or str(
    Path(ROOT).parent / "shared" / "data" / "tiny-imagenet-sample")
SAMPLE_PRESENT = os.path.isdir(os.path.join(SAMPLE, "train"))
SKIP_REASON = (f"no real Tiny ImageNet sample at {SAMPLE}: set TIN_SAMPLE to a folder in the "
               "official layout (README, 'A real sample for the tests')")

needs_sample = pytest.mark.skipif(not SAMPLE_PRESENT, reason=SKIP_REASON)


# Tests marked ``two_cpus`` run in ONE child pytest for the whole session, started with this
# variable set: its conftest splits the CPU into two logical devices before TensorFlow starts
# (a process can do that once, before its first op). The parent reports the child's outcomes.
TWO_CPUS_CHILD = os.environ.get("TIN_TEST_TWO_CPUS_RESULTS", "")


def pytest_configure(config):
    if TWO_CPUS_CHILD:
        from training import strategy  # pylint: disable=import-outside-toplevel
        strategy.configure_logical_cpus(2)
    config.addinivalue_line(
        "markers", "two_cpus: runs on two logical CPUs (MirroredStrategy, 2 replicas); every "
        "such test of a session runs in one child pytest (implies subprocess)")
    config.addinivalue_line(
        "markers", "slow: long tests (trainings, recipe compiles, whole builds of the real "
        "sample); deselect with -m 'not slow'")
    config.addinivalue_line(
        "markers", "subprocess: needs a process of its own (signals, several processes, "
        "logical devices configured before TensorFlow starts, a clean interpreter); "
        "deselect with -m 'not subprocess'")
    config.addinivalue_line(
        "markers", "sample: reads the real sample (set by conftest on every test that asks for "
        "sample_dir or carries needs_sample); these skip without one")


def _reads_sample_directly(function) -> bool:
    """Whether a test's code (nested functions included) names conftest's sample path."""
    codes, seen = [getattr(function, "__code__", None)], set()
    while codes:
        code = codes.pop()
        if code is None or code in seen:
            continue
        seen.add(code)
        if {"SAMPLE", "SAMPLE_PRESENT"} & set(code.co_names):
            return True
        codes += [c for c in code.co_consts if hasattr(c, "co_names")]
    return False


def _xdist_group(item) -> str | None:
    """Under ``pytest -n 2 --dist loadgroup`` (the README's command), the tests that must share a
    worker: all ``two_cpus`` tests (one child pytest runs them) and the tests that share a
    module- or session-scoped fixture their module defines (a training made once, not once
    per worker). Such a fixture should be session-scoped when it is expensive: a worker runs
    other modules' tests in between, and pytest tears a module's fixtures down when it leaves
    the module."""
    if item.get_closest_marker("two_cpus"):
        return "two_cpus"
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    for d in (d for ds in defs.values() for d in ds):
        if d.scope in ("module", "session") and d.baseid.endswith(".py"):
            return d.baseid
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Marks the real-sample tests ``sample`` and refuses a test that reads the sample's path
    without asking for it (it would fail, not skip, in a clone with no sample beside it)."""
    del config
    unmarked = []
    for item in items:
        by_mark = any(m.kwargs.get("reason") == SKIP_REASON for m in item.iter_markers("skipif"))
        if by_mark or "sample_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.sample)
        elif _reads_sample_directly(getattr(item, "function", None)):
            unmarked.append(item.nodeid)
        if item.get_closest_marker("two_cpus"):
            item.add_marker(pytest.mark.subprocess)
        group = _xdist_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if unmarked:
        raise pytest.UsageError(
            "these tests read conftest.SAMPLE without the sample_dir fixture or needs_sample, so "
            "they fail instead of skipping where there is no sample: " + ", ".join(unmarked))


# The shared trainings that take longest (minutes on 2 cores): their groups start first.
LONGEST_FIXTURES = {"learned_run", "two_worker_run", "mirrored_run"}


# A second implementation of the hook (specname), run last: after pytest's fixture ordering.
@pytest.hookimpl(specname="pytest_collection_modifyitems", trylast=True)
def pytest_collection_modifyitems_long_units_first(config, items):
    """Under pytest-xdist, which hands out work one unit at a time in collection order
    (``--no-loadscope-reorder`` in setup.cfg): the long units first, so that the many short
    tests fill the end of the run instead of one long training ending it alone on one worker.
    Long: the groups sharing a training in a child process, then other groups with a slow
    test, then slow tests."""
    if not _is_xdist_worker(config):
        return
    group_of = {item: _xdist_group(item) for item in items}
    groups = {}
    for item, group in group_of.items():
        if group is None:
            continue
        marks = groups.setdefault(group, set())
        marks.update(m.name for m in item.iter_markers() if m.name in ("slow", "subprocess"))
        if LONGEST_FIXTURES & set(getattr(item, "fixturenames", ())):
            marks.add("longest")

    def rank(item):
        marks = groups.get(group_of[item], set())
        if "longest" in marks:
            return -1
        if {"slow", "subprocess"} <= marks:
            return 0
        if "slow" in marks:
            return 1
        return 2 if item.get_closest_marker("slow") else 3
    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _scoped_recipe_registrations():
    """A recipe a test registers is gone after it (``augment.temporary_recipes``); augment is
    imported only by tests that already imported it, so TensorFlow-free tests stay so."""
    recipes = sys.modules.get("augment.recipes")
    if recipes is None:
        yield
        return
    with recipes.temporary_recipes():
        yield


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no one may create files in, even root (chattr +i)."""
    path = tmp_path / "ro"
    path.mkdir()
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)],
                                                    capture_output=True).returncode:
        pytest.skip("chattr +i not available here")
    yield path
    subprocess.run(["chattr", "-i", str(path)], check=True)


def _copy(value):
    if isinstance(value, dict):
        return {k: list(v) if isinstance(v, list) else v for k, v in value.items()}
    return value


def forget_tool_flags(fv) -> None:
    """Drops every flag absl did not define and the parse state, so the next tool run in this
    process defines and parses its flags as in a fresh process."""
    for name, _ in list(fv._flags().items()):  # pylint: disable=protected-access
        if not (fv.find_module_defining_flag(name) or "").startswith("absl"):
            delattr(fv, name)
    fv.unparse_flags()


@pytest.fixture
def fresh_flags(monkeypatch):
    """absl's flag registry with only absl's own flags (as a new process has it), so a tool
    runs in-process as ``python -m <tool>`` would (``runpy`` as ``__main__``); the registry is
    put back afterwards."""
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    fv = flags.FLAGS
    app.define_help_flags()
    saved = {k: _copy(v) for k, v in fv.__dict__.items()}
    forget_tool_flags(fv)
    monkeypatch.setattr(app._run_init, "done", True)  # no absl logging/faulthandler set-up
    yield fv
    fv.__dict__.clear()
    fv.__dict__.update(saved)


@contextlib.contextmanager
def handlers_put_back():
    """Puts back the SIGINT/SIGTERM handlers that code run in this process (a tool's
    ``interrupt_on_signals``) installs, so they do not outlive the test."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def op_determinism_undone():
    """Switches TensorFlow's op determinism off again after an in-process ``--deterministic``
    run: it is process-wide, and the other tests of this worker run as a user's would. The
    switch-off is TensorFlow's private function (there is no public one)."""
    try:
        yield
    finally:
        # pylint: disable-next=import-outside-toplevel
        from tensorflow.python.framework import config as tf_config
        tf_config.disable_op_determinism()


@pytest.fixture
def run_tool(fresh_flags, monkeypatch, capsys):
    """``run_tool(target, *args)`` runs ``python TARGET ARGS`` (a ``.py`` path) or ``python -m
    TARGET ARGS`` (a module) in this process as a fresh process would: absl's registry made
    fresh for each call, the SIGINT/SIGTERM handlers a tool installs put back. Returns (exit
    status, stdout, stderr); an exception other than SystemExit fails the test where raised."""
    def run(target: str, *args: str):
        forget_tool_flags(fresh_flags)
        capsys.readouterr()
        is_path = target.endswith(".py")
        monkeypatch.setattr(sys, "argv", [target if is_path else target.rsplit(".", 1)[-1],
                                          *args])
        with handlers_put_back(), pytest.raises(SystemExit) as done:
            if is_path:
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=False)
        out = capsys.readouterr()
        code = done.value.code
        return 0 if code is None else code, out.out, out.err
    return run


@pytest.fixture(scope="session")
def sample_dir() -> str:
    """The real sample's folder (skips the test when there is none)."""
    if not SAMPLE_PRESENT:
        pytest.skip(SKIP_REASON)
    return SAMPLE


@pytest.fixture(scope="session")
def sample_build(sample_dir, tmp_path_factory, request) -> str:
    """The real sample converted once (raw storage, 2 shards, train + val) for every test."""
    from tinyimagenet_tfrecords import build as build_lib
    return _built_once(request.config, tmp_path_factory, "sample",
                       lambda out: build_lib.build_dataset(sample_dir, out, shards=2, workers=1,
                                                           splits=("train", "val"),
                                                           progress=False))


@pytest.fixture(scope="session")
def synthetic_build(tmp_path_factory, request) -> str:
    """A small class-learnable synthetic build (10 classes x 100 train, 20 val each)."""
    from training.data import make_synthetic_build
    return _built_once(request.config, tmp_path_factory, "synthetic",
                       lambda out: make_synthetic_build(out, num_classes=10, train_per_class=100,
                                                        val_per_class=20, seed=0))


def _is_xdist_worker(config) -> bool:
    """Whether this process is a pytest-xdist worker (not the controller, and not a child
    pytest a worker started, which inherits its environment)."""
    return hasattr(config, "workerinput")


def _built_once(config, tmp_path_factory, name: str, make) -> str:
    """``make(out)`` run once per pytest run, its folder shared read-only: under pytest-xdist
    the first worker to ask makes it (the others wait on a file lock) in the folder all of
    the run's workers share, the parent of each one's base temp (pytest-xdist's documented
    pattern)."""
    import fcntl  # pylint: disable=import-outside-toplevel
    if not _is_xdist_worker(config):
        out = str(tmp_path_factory.mktemp(name) / "build")
        make(out)
        return out
    root = tmp_path_factory.getbasetemp().parent
    out = root / f"shared-{name}" / "build"
    with open(root / f"shared-{name}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").exists():  # written last: a finished build
            make(str(out))
    return str(out)


class SimulatedKill(BaseException):
    """Raised by :func:`kill_after_epoch`; a BaseException so no ``except Exception`` in the
    product swallows it, as nothing can catch a real SIGKILL."""


def loop_spy(kill_after: int = 0):
    """A :class:`training.hooks.Hooks` for ``training.run(cfg, hooks=...)`` that records the
    loop's checkpoint and best.keras writes in order (``events``), the model's weights at the
    start (``starts``) and end (``ends``) of every epoch, keyed by 1-based epoch. With
    ``kill_after=N`` it stops the run dead once epoch N is fully recorded (checkpoint,
    best.keras, history, summaries), as a kill at that moment would."""
    from training.hooks import Hooks  # pylint: disable=import-outside-toplevel

    class Spy(Hooks):
        def __init__(self):
            self.events, self.starts, self.ends = [], {}, {}

        def epoch_started(self, epoch, model):
            self.starts[epoch] = [w.numpy().copy() for w in model.weights]

        def checkpoint_saved(self, epoch):
            self.events.append(("checkpoint", epoch))

        def best_exported(self, path, epoch):
            self.events.append(("best.keras", os.path.basename(path)))

        def epoch_recorded(self, row, model):
            self.ends[row["epoch"]] = [w.numpy().copy() for w in model.weights]
            if row["epoch"] == kill_after:
                raise SimulatedKill(f"killed after epoch {kill_after}")
    return Spy()


def kill_after_epoch(epoch: int):
    """Hooks that stop the next ``training.run`` dead once epoch ``epoch`` is recorded."""
    return loop_spy(kill_after=epoch)


def committed_checkpoint(out: str) -> int:
    """The epoch of the newest checkpoint the run folder ``out`` has committed: the one its
    ``checkpoints/checkpoint`` state file names, which TensorFlow writes after the files
    (``ckpt-N.index`` alone can exist while the state file still names the one before)."""
    import re  # pylint: disable=import-outside-toplevel
    try:
        with open(os.path.join(out, "checkpoints", "checkpoint"), encoding="utf-8") as f:
            match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', f.read(), re.M)
    except FileNotFoundError:
        return 0
    return int(match.group(1)) if match else 0


# --- the two-logical-CPU child -----------------------------------------------------------------


def _plain_id(item) -> str:
    """The test's id without the ``@group`` pytest-xdist appends under ``--dist loadgroup``
    (the child pytest runs without xdist)."""
    return item.nodeid[:-len("@two_cpus")] if item.nodeid.endswith("@two_cpus") else item.nodeid


def _two_cpus_results(session) -> dict:
    """Runs every ``two_cpus`` test of ``session`` in one child pytest (once) and returns
    ``{nodeid: (outcome, text)}`` from the reports it wrote."""
    cached = getattr(session, "_two_cpus_results", None)
    if cached is not None:
        return cached
    import json  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel
    ids = [_plain_id(i) for i in session.items if i.get_closest_marker("two_cpus")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "reports.jsonl")
        env = {**os.environ, "TIN_TEST_TWO_CPUS_RESULTS": path, "PYTHONPATH": ROOT,
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        import forkserver  # pylint: disable=import-outside-toplevel
        proc = forkserver.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-o", "addopts=", *ids], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900, check=False)
        results = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    report = json.loads(line)
                    if report["outcome"] != "passed" or report["nodeid"] not in results:
                        results[report["nodeid"]] = (report["outcome"], report["text"])
    tail = (f"two-CPU child pytest exited {proc.returncode} without a report:\n"
            f"{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    session._two_cpus_results = {i: results.get(i, ("failed", tail)) for i in ids}
    return session._two_cpus_results


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """In the parent, a ``two_cpus`` test's body ran in the child: report what it did there."""
    if TWO_CPUS_CHILD or pyfuncitem.get_closest_marker("two_cpus") is None:
        return None
    outcome, text = _two_cpus_results(pyfuncitem.session)[_plain_id(pyfuncitem)]
    if outcome == "skipped":
        pytest.skip(text)
    if outcome != "passed":
        pytest.fail(f"in the two-CPU child:\n{text}", pytrace=False)
    return True


def pytest_runtest_logreport(report):
    """In the child, records every phase's outcome for the parent (failures with their text)."""
    if not TWO_CPUS_CHILD or (report.when != "call" and report.passed):
        return
    import json  # pylint: disable=import-outside-toplevel
    text = report.longreprtext if not report.passed else ""
    if report.skipped and isinstance(report.longrepr, tuple):
        text = report.longrepr[2]
    with open(TWO_CPUS_CHILD, "a", encoding="utf-8") as f:
        f.write(json.dumps({"nodeid": report.nodeid, "outcome": report.outcome,
                            "text": text}) + "\n")


# ``TIN_TEST_CPU=FILE`` appends one line per test: CPU seconds (user+sys, of this process and
# of the children it waited for) and wall seconds, setup and teardown included, then the start
# (Unix time) and the pytest-xdist worker, so a run's timeline can be laid out worker by worker.
# On a shared machine CPU time is the stable figure to compare tests by; pytest's --durations
# is wall time.
_CPU_LOG = os.environ.get("TIN_TEST_CPU", "")


def _cpu_seconds() -> float:
    import resource  # pylint: disable=import-outside-toplevel
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    forked = sys.modules.get("forkserver")  # children the fork server waited for
    return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
            + (forked.CHILD_CPU[0] if forked else 0.0))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    del nextitem
    if not _CPU_LOG:
        yield
        return
    import time  # pylint: disable=import-outside-toplevel
    cpu, wall, start = _cpu_seconds(), time.monotonic(), time.time()
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "-")
    with open(_CPU_LOG, "a", encoding="utf-8") as f:
        f.write(f"{_cpu_seconds() - cpu:9.2f} {time.monotonic() - wall:9.2f} {start:.2f} "
                f"{worker} {item.nodeid}\n")


def pytest_sessionfinish(session, exitstatus):
    session.config.tin_exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """The two-CPU child and each pytest-xdist worker end without the interpreter's teardown
    of TensorFlow's modules and threads (about a CPU-second each, MirroredStrategy's threads
    more): their results are already reported (the child's in its file, a worker's sent to
    the controller at session finish). Exit handlers still run."""
    if TWO_CPUS_CHILD or _is_xdist_worker(config):
        import atexit  # pylint: disable=import-outside-toplevel
        atexit._run_exitfuncs()  # pylint: disable=protected-access
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(config, "tin_exit_status", 1))


def save_tiny_net2(path: str, wnids, names, image_size: int = 32) -> str:
    """A random-init tiny Network 2 saved at ``path`` with its class list inside (the export
    and predict tests' model: what is checked is the plumbing around it, not its accuracy)."""
    import models  # pylint: disable=import-outside-toplevel
    from training import classes  # pylint: disable=import-outside-toplevel
    models.build("net2", num_classes=len(wnids), image_size=image_size, width=1 / 16).save(path)
    classes.embed(path, classes.info(list(wnids), list(names), image_size))
    return path
