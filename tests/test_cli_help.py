"""``--help`` of every command lists its flags and exits 0, and a closed pipe
(``--help | head -1``) ends quietly, without a ``BrokenPipeError`` traceback.

Each tool runs in-process as ``python -m <tool> --help`` would (``runpy`` as ``__main__``),
on a flag registry holding only absl's own flags, as in a fresh process; the registry is put
back afterwards. Only the closed pipe needs a subprocess.
"""

import os
import runpy
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}

# Every command (README, "Commands and exit status") and a flag its --help must list.
TOOLS = [
    ("train_main", "--phase"),
    ("training.evaluate", "--predictions"),
    ("tinyimagenet_tfrecords.build", "--[no]skip_corrupt"),
    ("tinyimagenet_tfrecords.verify", "--[no]decode"),
    ("tinyimagenet_tfrecords.sample", "--test_images"),
    ("tinyimagenet_tfrecords.synthetic", "--train_per_class"),
    ("augment.grid", "--repeats"),
    ("benchmarks.build", "--storage"),
    ("benchmarks.pipeline", "--data"),
    ("benchmarks.augment", "--recipes"),
    ("benchmarks.models", "--backend_neutral"),
    ("benchmarks.train_step", "--precisions"),
]


@pytest.mark.parametrize("module, flag", TOOLS)
def test_help_lists_the_flags_and_exits_0(fresh_flags, monkeypatch, capsys, module, flag):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    out = capsys.readouterr().out
    assert done.value.code == 0, out[-2000:]
    assert flag in out, out[-2000:]


def test_every_benchmark_command_is_checked():
    benchmarks = {name[:-3] for name in os.listdir(os.path.join(ROOT, "benchmarks"))
                  if name.endswith(".py") and name not in ARGPARSE_BENCHMARKS + ("__init__.py",)}
    assert {f"benchmarks.{b}" for b in benchmarks} <= {m for m, _ in TOOLS}


# Run inside other venvs (imgaug's, the peers'), which have no absl: argparse, same statuses.
ARGPARSE_BENCHMARKS = ("old_way_imgaug.py", "peers.py")


@pytest.mark.parametrize("name", ARGPARSE_BENCHMARKS)
@pytest.mark.subprocess
def test_argparse_benchmarks_help_exits_0(name):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), "--help"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


@pytest.mark.subprocess
def test_help_into_a_closed_pipe_ends_quietly():
    """One process for every tool: each starts through ``plumbing.cli.run`` (test_plumbing's
    ``test_no_command_has_its_own_runner``), whose closed-pipe handling this exercises with
    the longest help, train_main's (absl's own write is caught, its next print is not).
    ``augment.grid`` was once checked here too, when it had a parser of its own."""
    command = ["train_main.py"]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, as after `| head -1`
    try:
        proc = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, env=ENV,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr[-2000:]
