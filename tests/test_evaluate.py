"""training.evaluate: a model is checked against the build (classes, input size), unlabelled
splits give predictions instead of a score, and the CLI exits 2 with one line on bad input."""

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import handlers_put_back

from training import evaluate
from training.config import ConfigError
from training.errors import RunError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def test_build(tmp_path_factory):
    """3 classes with an unlabelled test split of 5 images."""
    from tinyimagenet_tfrecords import build as build_lib
    from tinyimagenet_tfrecords import synthetic
    root = tmp_path_factory.mktemp("evalbuild")
    src = synthetic.make_synthetic_dataset(str(root / "src"), num_classes=3, train_per_class=4,
                                           num_val=6, num_test=5, workers=1)
    out = str(root / "build")
    build_lib.build_dataset(src, out, shards=1, workers=1, splits=("train", "val", "test"),
                            progress=False)
    return out


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def saved_model(test_build, tmp_path_factory):
    """A tiny 16 px model saved as a run saves it: best.keras beside classes.json (the smoke
    network: what is checked is evaluation around the model, not its architecture)."""
    import models
    from tinyimagenet_tfrecords import manifest as manifest_lib
    run = tmp_path_factory.mktemp("run")
    model = models.build("smoke", num_classes=3, image_size=16)
    path = str(run / "best.keras")
    model.save(path)
    wnids = list(manifest_lib.open_build(test_build).wnids)
    (run / "classes.json").write_text(json.dumps({"wnids": wnids}))
    return path


def test_model_trained_on_other_classes_is_refused(test_build, saved_model, tmp_path):
    from tinyimagenet_tfrecords import manifest as manifest_lib
    build = manifest_lib.open_build(test_build)
    evaluate.check_classes(saved_model, 3, build)
    other = tmp_path / "copy.keras"
    other.write_bytes(b"")
    (tmp_path / "copy.keras.classes.json").write_text(
        json.dumps({"wnids": ["n00000001", "n00000002", "n00000003"]}))
    with pytest.raises(RunError, match=r"copy.keras.classes.json: .*differ.*not in the build"):
        evaluate.check_classes(str(other), 3, build)


def test_model_input_size_is_used_and_a_size_it_cannot_take_is_refused():
    import models
    fixed = models.build("smoke", num_classes=3, image_size=16)
    any_size = models.build("smoke", num_classes=3)
    assert evaluate.resolve_image_size(fixed, None, "m.keras") == 16
    assert evaluate.resolve_image_size(any_size, None, "m.keras") == 64
    assert evaluate.resolve_image_size(any_size, 32, "m.keras") == 32
    for model, size, match in [(fixed, 64, r"--image_size=64: m.keras takes 16 px"),
                               (any_size, 60, r"--image_size=60: .*multiple of 8")]:
        with pytest.raises(RunError, match=match):
            evaluate.resolve_image_size(model, size, "m.keras")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(worst_classes=0), ConfigError, r"--worst_classes=0: must be >= 1"),
    (dict(misclassified=-1), ConfigError, r"--misclassified=-1: must be >= 0"),
    (dict(batch_size=0), ConfigError, r"--batch_size=0: must be >= 1"),
    (dict(image_size=60), ConfigError, r"--image_size=60: must be a multiple of 8 in 8..512"),
    (dict(image_size=4), ConfigError, r"--image_size=4: must be a multiple of 8"),
    (dict(out=None), RunError, r"give --out .* and/or --predictions"),
    (dict(model="nothing.keras"), RunError, r"--model=.*nothing.keras: no such model file"),
    (dict(split="train2"), RunError, r"--split=train2: .* has \['test', 'train', 'val'\]"),
    (dict(split="test"), RunError, r"--split=test: .*unlabelled.*--predictions"),
])
def test_bad_input_is_refused_before_the_model_is_loaded(test_build, tmp_path, monkeypatch,
                                                         kwargs, error, match):
    def no_load(path):
        raise AssertionError("the model was loaded before the inputs were checked")
    monkeypatch.setattr(evaluate, "load_model", no_load)
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    args = {"out": str(tmp_path / "r"), "model": str(model), **kwargs}
    with pytest.raises(error, match=match):
        evaluate.evaluate_model(args.pop("model"), test_build, xla=False, **args)
    assert not (tmp_path / "r").exists()


def test_unlabelled_split_gets_predictions(test_build, saved_model, tmp_path):
    csv_path = str(tmp_path / "pred.csv")
    res = evaluate.evaluate_model(saved_model, test_build, predictions=csv_path, split="test",
                                  xla=False)
    assert res["predictions"] == 5 and res["image_size"] == 16
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    wnids = {c["wnid"] for c in json.load(open(os.path.join(test_build, "manifest.json")))
             ["classes"]}
    assert len(rows) == 5 and len({r["filename"] for r in rows}) == 5
    assert all(r["filename"].startswith("test_") for r in rows), rows
    for r in rows:
        top = r["top5"].split()
        assert top[0] == r["wnid"] and set(top) == wnids  # 3 classes: all of them, ranked


@pytest.mark.subprocess  # runpy's RuntimeWarning shows only in a fresh interpreter
def test_cli_refuses_with_one_line_and_exit_2_and_no_module_warning(test_build, saved_model,
                                                                     tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "training.evaluate", f"--model={saved_model}",
         f"--data={test_build}", "--split=test", f"--out={tmp_path}/r"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unlabelled" in lines[0], lines
    assert "RuntimeWarning" not in proc.stderr


def test_corrupt_shard_is_a_failure_naming_the_shard(test_build, saved_model, tmp_path):
    import shutil

    from training.errors import RunFailure
    data = tmp_path / "data"
    shutil.copytree(test_build, data)
    shard = data / "val-00000-of-00001.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 16] = b"\0" * 16
    shard.write_bytes(bytes(raw))
    with pytest.raises(RunFailure, match=r"val-00000-of-00001.tfrecord: corrupt shard"):
        evaluate.evaluate_model(saved_model, str(data), out=str(tmp_path / "r"), xla=False,
                                misclassified=0)


def test_ctrl_c_during_evaluation_is_one_line_and_exit_130_at_once(
        test_build, saved_model, tmp_path, fresh_flags, monkeypatch, capsys):
    """``python -m training.evaluate``, interrupted while it evaluates: Ctrl-C works even when
    started in the background (SIGINT ignored), one line, and the process leaves at once
    (``exit_now``, not an interpreter shutdown that collects TensorFlow's objects)."""
    import runpy
    import signal

    from plumbing import cli as cli_lib

    def interrupted(*args, **kwargs):
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # a Ctrl-C now: raises
        raise AssertionError("SIGINT's handler did not raise KeyboardInterrupt")

    class Exited(BaseException):
        pass

    def exit_now(status):
        raise Exited(status)

    monkeypatch.setattr(evaluate, "evaluate_model", interrupted)
    monkeypatch.setattr(cli_lib, "exit_now", exit_now)
    monkeypatch.setattr(sys, "argv", ["evaluate", f"--model={saved_model}",
                                      f"--data={test_build}", f"--out={tmp_path}/r"])
    with handlers_put_back():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with pytest.raises(Exited) as done:
            runpy.run_module("training.evaluate", run_name="__main__", alter_sys=False)
    assert done.value.args == (cli_lib.EXIT_INTERRUPTED,)
    assert capsys.readouterr().err == "evaluate: error: interrupted\n"
    assert not (tmp_path / "r").exists()
