"""The run folder: another run refused, one training at a time, nothing half-made left."""

import json
import os
import socket
import subprocess

import pytest

from training import run_folder
from training.errors import RunError, RunFailure

FP = {"model": "net2", "seed": 0}


def test_output_folder_check_allows_resume_and_refuses_other_runs(tmp_path):
    assert run_folder.check_output_folder(str(tmp_path / "new"), FP) is False
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(FP))
    assert run_folder.check_output_folder(str(tmp_path / "run"), FP) is True
    with pytest.raises(RunError, match="seed"):
        run_folder.check_output_folder(str(tmp_path / "run"), {**FP, "seed": 1})


def test_second_training_into_the_same_folder_is_refused(tmp_path):
    out = str(tmp_path / "run")
    with run_folder.RunFolder(out, FP, ["a", "b"]):
        # Another process (a live pid on this host) holding the lock is refused, and its
        # files are left alone.
        with pytest.raises(RunError, match=r"in use by another training \(pid \d+ on "):
            with run_folder.RunFolder(out, FP, ["a", "b"]):
                pass
        assert os.path.isfile(os.path.join(out, run_folder.LOCK_NAME))
        with open(os.path.join(out, run_folder.LOCK_NAME)) as f:
            assert json.load(f) == {"pid": os.getpid(), "host": socket.gethostname()}
    assert not os.path.exists(os.path.join(out, run_folder.LOCK_NAME))  # released


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / run_folder.LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with run_folder.RunFolder(str(out), FP, ["a"]):
        with open(out / run_folder.LOCK_NAME) as f:
            assert json.load(f)["pid"] == os.getpid()


def test_lock_from_another_host_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / run_folder.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunError, match="elsewhere"):
        run_folder.RunFolder(str(out), FP, ["a"]).__enter__()


def test_failure_before_the_first_checkpoint_removes_what_this_invocation_created(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunFailure):
        with run_folder.RunFolder(str(out), FP, ["a"]):
            (out / "config.json").write_text(json.dumps(FP))
            (out / "checkpoints" / "ckpt-1_temp").mkdir(parents=True)
            raise RunFailure("boom")
    assert not out.exists()
    # An empty folder given as --out is kept, and emptied again.
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with run_folder.RunFolder(str(out), FP, ["a"]):
            (out / "config.json").write_text(json.dumps(FP))
            raise KeyboardInterrupt
    assert out.is_dir() and not os.listdir(out)


def test_failure_of_a_resumed_run_keeps_it_and_removes_checkpoint_temps(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(FP))
    with pytest.raises(RunFailure):
        with run_folder.RunFolder(str(out), FP, ["a"]):
            (out / "checkpoints" / "ckpt-2_temp").mkdir()
            raise RunFailure("disk full")
    assert sorted(os.listdir(out)) == ["checkpoints", "classes.json", "config.json"]
    assert os.listdir(out / "checkpoints") == []


def test_resume_on_a_build_with_other_classes_is_refused(tmp_path):
    out = str(tmp_path / "run")
    with run_folder.RunFolder(out, FP, ["a", "b"]):
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(FP, f)
    with pytest.raises(RunError, match="classes.json"):
        run_folder.RunFolder(out, FP, ["a", "c"]).__enter__()


@pytest.mark.parametrize("sub", ["", "run"])
def test_read_only_out_is_one_line_bad_input(read_only_dir, sub):
    out = str(read_only_dir / sub) if sub else str(read_only_dir)
    with pytest.raises(RunError, match=r"--out=.*cannot write .*(not permitted|denied)"):
        with run_folder.RunFolder(out, FP, ["a"]):
            pass
    assert os.listdir(read_only_dir) == []
