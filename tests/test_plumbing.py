"""The bottom floor (``plumbing``): what it may import, one definition of a URL, atomic
writes, one command-line runner, and the one progress line (terminal redraw vs a log)."""

import ast
import io
import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from plumbing import cli, paths
from plumbing.progress import Progress

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = ("augment", "benchmarks", "models", "plumbing", "tinyimagenet_tfrecords", "training",
           "train_main")
# Every project module except plumbing itself, the tests and the imgaug reference copy.
OTHERS = sorted(p for pkg in PROJECT if pkg not in ("plumbing", "train_main")
                for p in (ROOT / pkg).glob("*.py")) + [ROOT / "train_main.py"]


def _imports(path, top_level_only=False):
    """(module, line) of every import in ``path``; only the module-level ones if asked."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module, node.lineno))
    return found


# --- What plumbing may import ----------------------------------------------------------------


def test_plumbing_imports_no_other_project_package_and_no_tensorflow_at_import():
    files = sorted((ROOT / "plumbing").glob("*.py"))
    assert {f.name for f in files} >= {"paths.py", "cli.py", "progress.py"}
    project = [(f.name, m, line) for f in files for m, line in _imports(f)
               if m.split(".")[0] in PROJECT and m.split(".")[0] != "plumbing"]
    assert not project, f"plumbing must import no other project package: {project}"
    eager_tf = [(f.name, m, line) for f in files for m, line in _imports(f, True)
                if m.split(".")[0] in ("tensorflow", "keras", "numpy")]
    assert not eager_tf, f"plumbing imports these at import time: {eager_tf}"


@pytest.mark.subprocess
def test_importing_plumbing_and_local_paths_start_no_tensorflow(tmp_path):
    code = ("import sys\nfrom plumbing import cli, paths, progress\n"
            f"paths.atomic_write_json({str(tmp_path / 'a.json')!r}, {{'a': 1}})\n"
            f"assert paths.isfile({str(tmp_path / 'a.json')!r})\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in "
            "('training', 'augment', 'models', 'tinyimagenet_tfrecords', 'benchmarks')]\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr


def test_the_entry_point_imports_training_and_plumbing_only():
    project = {m.split(".")[0] for m, _ in _imports(ROOT / "train_main.py")} & set(PROJECT)
    assert project == {"training", "plumbing"}


# --- One definition of a URL ------------------------------------------------------------------


@pytest.mark.parametrize("path, url, web", [
    ("gs://bucket/build", True, False),
    ("ram://runs/a", True, False),
    ("s3://b/k", True, False),
    ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", False, True),
    ("HTTPS://host/x.zip", False, True),
    ("/data/build", False, False),
    ("relative/build", False, False),
])
def test_a_url_is_a_gfile_scheme_and_a_web_address_is_something_to_download(path, url, web):
    assert paths.is_url(path) is url
    assert paths.is_web_address(path) is web


def test_a_web_address_is_a_missing_path_everywhere_but_the_downloader():
    # tf.io.gfile has no http filesystem: a web address must not reach it (TensorFlow's
    # "scheme not implemented" traceback); os says it does not exist, by name.
    address = "http://example.invalid/build"
    assert not paths.exists(address) and not paths.isdir(address)
    assert paths.abspath(address) == address and paths.abspath("gs://b/x") == "gs://b/x"


def test_no_module_outside_plumbing_defines_what_a_url_is():
    own = []
    for f in OTHERS:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in (
                    "is_url", "is_web_address", "is_remote"):
                own.append(f"{f.relative_to(ROOT)}:{node.lineno} def {node.name}")
            if isinstance(node, ast.Constant) and node.value in ("://", "http://", "https://"):
                own.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not own, own


def test_join_keeps_a_url_a_url():
    assert paths.join("gs://b/build/", "m.json") == "gs://b/build/m.json"
    assert paths.join("gs://b/build", "x", "y") == "gs://b/build/x/y"
    assert paths.join("/data", "m.json") == os.path.join("/data", "m.json")


# --- Atomic writes -----------------------------------------------------------------------------


def test_atomic_writes_respect_the_umask_not_a_private_temporary_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = str(tmp_path / "history.json")
        paths.atomic_write_json(path, {"a": 1})
        paths.atomic_write_json(path, {"a": 2})  # replacing keeps the umask's mode
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with open(path) as f:
        assert json.load(f) == {"a": 2}
    assert os.listdir(tmp_path) == ["history.json"]  # no temporary file left


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "summary.json")
    paths.atomic_write_text(path, "old\n")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        paths.atomic_write_text(path, "new\n")
    assert open(path).read() == "old\n" and os.listdir(tmp_path) == ["summary.json"]


def test_atomic_writes_work_on_a_gfile_url():
    import tensorflow as tf
    path = "ram://plumbing-test/sub/x.json"
    paths.atomic_write_bytes(path, b"one")
    paths.atomic_write_bytes(path, b"two")
    assert paths.read_bytes(path) == b"two"
    assert paths.isfile(path) and paths.isdir("ram://plumbing-test/sub")
    assert paths.listdir("ram://plumbing-test/sub") == ["x.json"]
    assert paths.getsize(path) == 3
    assert paths.abspath(path) == path
    tf.io.gfile.rmtree("ram://plumbing-test")


# --- One command-line runner --------------------------------------------------------------------


def test_exit_statuses_are_the_readmes():
    assert (cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_BAD_INPUT, cli.EXIT_INTERRUPTED) == (
        0, 1, 2, 130)


def test_a_flag_error_is_one_line_and_status_2(monkeypatch, capsys):
    from absl import flags
    fv = flags.FlagValues()
    flags.DEFINE_integer("n", 1, "a number", lower_bound=0, flag_values=fv)
    monkeypatch.setattr(flags, "FLAGS", fv)
    with pytest.raises(SystemExit) as done:
        cli.parse(["tool", "--n=-3"], "tool")
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert err.startswith("tool: error: ") and err.count("\n") == 1, err


def test_no_command_has_its_own_runner():
    """Every tool starts through ``plumbing.cli.run``: no other module calls ``app.run`` or
    parses absl flags with its own statuses (``augment.grid`` once had a copy)."""
    own = []
    for f in OTHERS:
        text = f.read_text(encoding="utf-8")
        if "app.run(" in text or "except flags.Error" in text or "flags_parser=" in text:
            own.append(str(f.relative_to(ROOT)))
    assert not own, own


# --- One progress line ---------------------------------------------------------------------------


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
    bar = Progress(100, per_step=10, wait_note="compiling...", wait_done="compiled",
                   stream=stream, clock=clock, interval=30)
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
    assert "10 img/s" in lines[-1] and "loss 1.0000" in lines[-1]


def test_the_compiling_note_says_how_long_and_what_compiles_faster():
    from training import steps
    stream = io.StringIO()
    Progress(10, wait_note=steps.COMPILING, stream=stream)
    line = stream.getvalue().splitlines()[0]
    assert "30 s to 2 min on 2 CPU cores" in line and "--noxla" in line and "aug=none" in line


def test_rate_and_eta_leave_the_first_call_out():
    clock = FakeClock()
    bar = Progress(11, per_step=32, wait_note="compiling", enabled=False, clock=clock)
    clock.t = 300.0                     # a five-minute compile
    bar.update(1)
    assert bar.rate(1) == 0.0 and bar.eta(1) is None
    clock.t = 302.0                     # then 2 s per step
    bar.update(2)
    assert bar.rate(2) == 16.0          # 32 images / 2 s, not 64 images / 302 s
    assert bar.eta(2) == 18.0           # 9 steps left x 2 s


def test_progress_on_a_terminal_rewrites_one_line():
    stream, clock = Tty(), FakeClock()
    bar = Progress(3, wait_note="compiling", wait_done="compiled", stream=stream, clock=clock)
    for step in (1, 2, 3):
        clock.t += 1
        bar.update(step, loss=0.5)
    bar.close(3)                          # already ended by the last step: no second line
    text = stream.getvalue()
    assert text.count("\n") == 2          # "compiled in" and the finished bar
    assert "compiling" in text and "3/3" in text and "\x1b" not in text


def test_a_watched_counter_ends_with_one_final_line_in_a_log():
    stream, counter = io.StringIO(), {"n": 0}
    bar = Progress(50, stream=stream, interval=10.0, prefix="build jpeg ")
    with bar.watching(lambda: counter["n"], every=0.001):
        counter["n"] = 50
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("build jpeg 50/50") and "\r" not in stream.getvalue()
    assert len(lines) == 1               # a short build in a log: just the final line


def test_a_watched_counter_on_a_terminal_ends_its_line_before_an_error():
    stream = Tty()
    bar = Progress(50, stream=stream, prefix="build ")
    with pytest.raises(RuntimeError):
        with bar.watching(lambda: 7, every=0.001):
            import time
            time.sleep(0.05)
            raise RuntimeError("worker failed")
    assert stream.getvalue().endswith("\n")  # the error message starts on its own line


def test_amounts_in_other_units_and_an_unknown_total():
    clock = FakeClock()
    bar = Progress(237.0, unit="MB", count_unit="MB", prefix="download ", clock=clock,
                   enabled=False)
    bar.update(0.0)
    clock.t = 2.0
    assert bar.line(3.0).startswith("download 3.0/237.0 MB  1.5 MB/s  ETA 2:36")
    unknown = Progress(None, unit="MB", count_unit="MB", prefix="download ", enabled=False)
    assert unknown.line(3.0) == "download 3.0 MB" and unknown.eta(3.0) is None


def test_no_module_outside_plumbing_draws_its_own_progress_line():
    drawn = []
    for f in OTHERS:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    node.value.startswith("\r")):  # a carriage return redraws a line
                drawn.append(f"{f.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.ClassDef) and "Progress" in node.name:
                drawn.append(f"{f.relative_to(ROOT)}:{node.lineno} class {node.name}")
    assert not drawn, drawn


@pytest.mark.slow  # a subprocess importing TensorFlow
@pytest.mark.subprocess
def test_tensorflow_start_up_noise_is_not_printed():
    proc = subprocess.run(
        [sys.executable, "-c", "from plumbing import cli; "
         "cli.import_tensorflow_quietly(); import tensorflow as tf; "
         "print(int(tf.constant(3)))"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120)
    assert proc.stdout.strip() == "3"
    assert "oneDNN" not in proc.stderr and "absl::InitializeLog" not in proc.stderr, proc.stderr
