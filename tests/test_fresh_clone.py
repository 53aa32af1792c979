"""A clone from the internet holds the tracked files only: no real sample beside it, no builds,
no caches, no installed package. These tests check what that changes, not the whole suite again:

* every test module imports there and the real-sample tests skip saying how to get a sample
  (one pytest process in a copy of the tracked files, with no ``TIN_SAMPLE`` and no
  ``../shared`` beside it, so conftest's default path is the one that is missing);
* nothing else can need the sample: conftest refuses a test that reads the sample's path
  without the ``sample_dir`` fixture or ``needs_sample`` (checked here by breaking it once);
* the files the README's commands name are tracked.

The mechanics tests run on synthetic builds the tests make themselves, so everything else passes
in a clone exactly as it does here.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def _tracked_files() -> list:
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if proc.returncode or not proc.stdout:
        pytest.skip("not a git checkout: no list of tracked files")
    return [p for p in proc.stdout.decode().split("\0") if p]


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def clone(tmp_path_factory):
    """The working tree's tracked files (edits included, untracked files left out) in a folder
    with nothing beside it: what ``git clone`` gives, without needing a commit."""
    dest = tmp_path_factory.mktemp("fresh") / "clone"
    for rel in _tracked_files():
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):  # a tracked file deleted in the working tree is gone
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return dest


def _pytest_in(clone, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("TIN_SAMPLE", "PYTHONPATH")}
    env.update(PYTHONPATH=str(clone), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "-p", "no:randomly", *args], cwd=str(clone), env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # collects every test module in a child (imports TensorFlow): ~15 s CPU
@pytest.mark.subprocess
def test_a_clone_imports_every_test_module_and_skips_the_sample_tests_saying_why(clone):
    proc = _pytest_in(clone, "-m", "sample", "tests")
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail  # a module that fails to import is a collection error
    missing = str(clone.parent / "shared" / "data" / "tiny-imagenet-sample")
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips, tail
    assert all("no real Tiny ImageNet sample" in line and missing in line and "TIN_SAMPLE" in line
               for line in skips), "\n".join(skips)
    counts = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ skipped", counts) and not re.search(r"passed|failed|error", counts), \
        counts


@pytest.mark.subprocess
def test_a_test_reading_the_sample_path_without_asking_for_it_is_refused(clone, tmp_path):
    tests = tmp_path / "tests"
    shutil.copytree(clone / "tests", tests, ignore=shutil.ignore_patterns("test_*.py"))
    (tests / "test_sneaky.py").write_text(
        "import os\nfrom conftest import SAMPLE\n\n\n"
        "def test_lists_the_sample():\n    assert os.listdir(SAMPLE)\n", encoding="utf-8")
    proc = _pytest_in(clone, "--co", str(tests))
    assert proc.returncode != 0
    assert "test_sneaky.py::test_lists_the_sample" in proc.stdout + proc.stderr, proc.stderr


def test_the_files_the_readme_commands_name_are_tracked():
    tracked = set(_tracked_files())
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    flagfiles = set(re.findall(r"--flagfile[= ](flags/[\w.]+)", readme))
    modules = set(re.findall(r"python -m ((?:training|tinyimagenet_tfrecords|benchmarks|augment)"
                             r"\.\w+)", readme))
    assert flagfiles and modules
    def module_file(m):  # a module, or a package run through its __main__
        path = m.replace(".", "/")
        return path + "/__main__.py" if path + "/__main__.py" in tracked else path + ".py"
    wanted = flagfiles | {module_file(m) for m in modules} | {"train_main.py"}
    assert not wanted - tracked, sorted(wanted - tracked)
