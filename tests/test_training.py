"""The training package end to end: XLA under MirroredStrategy learns, resume is exact,
reports are complete, bad input fails cleanly.

Multi-replica runs need logical CPU devices configured before TensorFlow initialises, so they
run ``train_main.py`` in a subprocess (``--num_logical_cpus=2``) and read what it writes.
"""

import csv
import json
import os
from pathlib import Path
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared sample lies beside the checkout (../shared), in development and in CI.
SAMPLE = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-sample")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}

# The accuracy run: tiny Network 2 at 32 px, 2 replicas, XLA, the students' augmentation.
LEARN_ARGS = ["--num_logical_cpus=2", "--model=net2", "--width=0.125", "--bn_momentum=0.9",
              "--image_size=32", "--val_image_size=32", "--batch_size=64", "--epochs=3",
              "--steps_per_epoch=30", "--steps_per_call=10", "--augment=student_net2",
              "--learning_rate=2e-3", "--xla", "--progress=false", "--misclassified=12"]
# The resume runs: smaller still, two Triangular2 phases (augmentation in the second).
# One replica: resume logic does not depend on the replica count, and tracing a 2-replica step
# three times (three processes) would double this test's time.
RESUME_ARGS = ["--model=net2", "--width=0.0625", "--image_size=16",
               "--val_image_size=16", "--batch_size=32", "--steps_per_epoch=3",
               "--lr_schedule=triangular2", "--deterministic", "--noxla", "--progress=false",
               "--phase=epochs=2,aug=none,min_lr=1e-3,max_lr=4e-3,step_epochs=1",
               "--phase=epochs=1,aug=student_net2,min_lr=1e-4,max_lr=1e-3,step_epochs=0.5",
               "--misclassified=0"]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """The real 10-class sample, converted once for this module."""
    if not os.path.isdir(SAMPLE):
        pytest.skip(f"{SAMPLE} not available")
    from tinyimagenet_tfrecords import build as build_lib
    out = str(tmp_path_factory.mktemp("data") / "build")
    build_lib.build_dataset(SAMPLE, out, shards=2, workers=1, splits=("train", "val"),
                            progress=False)
    return out


def train_main(*args, timeout=400, wait=True):
    cmd = [sys.executable, os.path.join(ROOT, "train_main.py"), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_net2_learns_under_mirrored_strategy_with_xla_and_writes_every_report(
        build, tmp_path):
    out = str(tmp_path / "run")
    proc = train_main(f"--data={build}", f"--out={out}", *LEARN_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    # Two replicas, and the per-replica step really was XLA-compiled.
    assert summary["replicas"] == 2
    assert summary["xla_compiled"] and all(summary["xla_compiled"].values()), summary
    # Learned: chance is 10% on 10 classes.
    assert summary["best_val_acc"] >= 0.25, summary
    assert summary["top1"] == pytest.approx(summary["best_val_acc"], abs=1e-6)

    rows = read_csv(os.path.join(out, "history.csv"))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "phase", "image_size", "batch_size", "lr", "loss", "acc",
                            "val_loss", "val_acc", "val_top5", "images_per_s", "seconds"}
    assert all(float(r["images_per_s"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])

    with open(os.path.join(build, "manifest.json")) as f:
        classes = {c["wnid"]: c["name"] for c in json.load(f)["classes"]}
    eval_dir = os.path.join(out, "eval")
    with open(os.path.join(eval_dir, "report.json")) as f:
        report = json.load(f)
    assert report["count"] == 500 and report["top5"] >= report["top1"]
    per_class = read_csv(os.path.join(eval_dir, "per_class.csv"))
    assert {r["wnid"]: r["name"] for r in per_class} == classes
    assert sum(int(r["count"]) for r in per_class) == 500
    # Per-class accuracies average (equal counts) to the overall top-1.
    assert np.mean([float(r["accuracy"]) for r in per_class]) == pytest.approx(
        report["top1"], abs=1e-3)
    worst = report["worst_classes"]
    assert len(worst) == 10 and [w["accuracy"] for w in worst] == sorted(
        w["accuracy"] for w in worst)
    assert all(w["name"] == classes[w["wnid"]] for w in worst)
    assert len(report["misclassified"]) == 12
    assert all(m["true"] != m["pred"] for m in report["misclassified"])
    for png in ("loss.png", "accuracy.png", "eval/worst_classes.png", "eval/misclassified.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    assert any(n.startswith("events.out.tfevents") for n in
               os.listdir(os.path.join(out, "tensorboard")))
    with open(os.path.join(out, "flags.txt")) as f:
        assert "--model=net2" in f.read()

    # The evaluate CLI reproduces the report from the saved best model.
    eval2 = str(tmp_path / "eval2")
    proc = subprocess.run(
        [sys.executable, "-m", "training.evaluate", f"--model={out}/best.keras",
         f"--data={build}", f"--out={eval2}", "--image_size=32", "--noxla",
         "--misclassified=4"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(eval2, "report.json")) as f:
        again = json.load(f)
    assert again["top1"] == pytest.approx(report["top1"], abs=0.01)  # XLA vs not: rare flips
    assert os.path.isfile(os.path.join(eval2, "misclassified.png"))


def test_killed_run_resumes_with_the_same_epochs_and_metrics(build, tmp_path):
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    # The reference and the first half of the interrupted run in parallel (2 cores).
    p_ref = train_main(f"--data={build}", f"--out={ref}", *RESUME_ARGS, wait=False)
    p_cut = train_main(f"--data={build}", f"--out={cut}", *RESUME_ARGS,
                       "--stop_after_epoch=1", wait=False)
    for p in (p_ref, p_cut):
        _, err = p.communicate(timeout=400)
        assert p.returncode == (0 if p is p_ref else 3), err[-3000:]
    assert [int(r["epoch"]) for r in read_csv(os.path.join(cut, "history.csv"))] == [1]
    assert not os.path.exists(os.path.join(cut, "summary.json"))

    proc = train_main(f"--data={build}", f"--out={cut}", *RESUME_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "after epoch 1" in proc.stderr
    a, b = (read_csv(os.path.join(d, "history.csv")) for d in (ref, cut))
    assert [(r["epoch"], r["phase"]) for r in a] == [(r["epoch"], r["phase"]) for r in b] == [
        ("1", "1"), ("2", "1"), ("3", "2")]
    for key in ("lr", "loss", "acc", "val_loss", "val_acc", "val_top5"):
        np.testing.assert_allclose([float(r[key]) for r in b], [float(r[key]) for r in a],
                                   rtol=1e-5, atol=1e-7, err_msg=key)


def test_bad_input_gives_one_clear_line_and_nonzero_exit(build, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model": "net1"}\n')
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine\n")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    common = ["--epochs=1", "--width=0.0625", "--image_size=16", "--val_image_size=16"]
    cases = {
        "missing": ([f"--data={tmp_path}/nope", f"--out={tmp_path}/o1"], "no such build"),
        "unfinished": ([f"--data={unfinished}", f"--out={tmp_path}/o2"], "not a finished"),
        "range": ([f"--data={build}", f"--out={tmp_path}/o3", "--batch_size=0"], "batch"),
        "phase": ([f"--data={build}", f"--out={tmp_path}/o4", "--phase=epochs=2,size=x"],
                  "--phase"),
        "other_run": ([f"--data={build}", f"--out={other}"], "holds another run"),
        "stranger": ([f"--data={build}", f"--out={stranger}"], "not empty"),
    }
    procs = {k: train_main(*args, *common, wait=False) for k, (args, _) in cases.items()}
    for name, p in procs.items():
        _, err = p.communicate(timeout=200)
        lines = [line for line in err.splitlines() if line.strip()
                 and not line.startswith(("WARNING: All log", "I0000", "E0000", "W0000"))]
        assert p.returncode == 2, (name, err[-2000:])
        assert "Traceback" not in err, (name, err[-2000:])
        assert len(lines) == 1 and cases[name][1] in lines[0], (name, lines)
    # Nothing was written or overwritten.
    assert (other / "config.json").read_text() == '{"model": "net1"}\n'
    assert sorted(os.listdir(stranger)) == ["notes.txt"]
    assert not any(os.path.exists(tmp_path / f"o{i}") for i in range(1, 5))


def test_train_step_is_xla_compiled_and_xla_flag_turns_it_off():
    import keras
    import tensorflow as tf

    import augment
    import models
    from training import steps as steps_lib

    model = models.build("net2", num_classes=10, image_size=16, width=0.0625)
    opt = keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    args = (tf.zeros([4, 16, 16, 3], tf.uint8), tf.zeros([4], tf.int32),
            tf.constant([1, 2], tf.int32))
    compiled = {}
    for xla in (True, False):
        step = steps_lib.make_train_step(
            model, opt, tf.distribute.get_strategy(), recipe=augment.get_recipe("student_net2"),
            global_batch_size=4, base_seed=0, xla=xla)
        assert steps_lib.is_xla_compiled(step.compute, *args) is xla
        compiled[xla] = step
    # XLA accepts the whole step (augmentation + forward + loss + gradients): it lowers to HLO.
    hlo = compiled[True].compute.experimental_get_compiler_ir(*args)(stage="hlo")
    assert "HloModule" in hlo and "ENTRY" in hlo


def test_ranks_of_true_class_give_top_k_like_in_top_k():
    import tensorflow as tf

    from training import steps as steps_lib
    rng = np.random.default_rng(0)
    probs = tf.constant(rng.dirichlet(np.ones(20), size=64), tf.float32)
    labels = tf.constant(rng.integers(0, 20, size=64), tf.int32)
    rank = steps_lib.ranks_of_true_class(labels, probs).numpy()
    for k in (1, 5):
        np.testing.assert_array_equal(rank < k, tf.math.in_top_k(labels, probs, k).numpy())


def flagfile_phases(name):
    from training import config as config_lib
    with open(os.path.join(ROOT, "flags", name)) as f:
        lines = [line.strip() for line in f]
    specs = [line.split("=", 1)[1] for line in lines if line.startswith("--phase=")]
    return [config_lib.parse_phase(s, image_size=64, batch_size=128, augment="none",
                                   plateau=False) for s in specs]


def test_net1_flagfile_is_the_original_245_epoch_curriculum():
    phases = flagfile_phases("net1.flags")
    assert sum(p.epochs for p in phases) == 245
    assert [(p.epochs, p.image_size, p.batch_size) for p in phases[:5]] == [
        (15, 32, 256), (15, 64, 64), (15, 64, 64), (10, 16, 256), (15, 64, 64)]
    assert [p.plateau for p in phases] == [True, True, False, False, False, False] + [True] * 5
    assert [p.augment for p in phases] == ["none"] * 5 + ["original_net1"] * 6


def test_phase_spec_inherits_run_defaults_and_rejects_unknown_keys():
    from training import config as config_lib
    p = config_lib.parse_phase("epochs=3,size=32", image_size=64, batch_size=128,
                               augment="student_net2", plateau=True)
    assert (p.epochs, p.image_size, p.batch_size, p.augment, p.plateau) == (
        3, 32, 128, "student_net2", True)
    for bad in ("size=32", "epochs=3,colour=red", "epochs=3,plateau=maybe", "epochs=x"):
        with pytest.raises(config_lib.ConfigError):
            config_lib.parse_phase(bad, image_size=64, batch_size=128, augment="none",
                                   plateau=False)


def test_output_folder_check_allows_resume_and_refuses_other_runs(tmp_path):
    from training import loop
    fp = {"model": "net2", "seed": 0}
    assert loop.check_output_folder(str(tmp_path / "new"), fp) is False
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(fp))
    assert loop.check_output_folder(str(tmp_path / "run"), fp) is True
    with pytest.raises(loop.RunError, match="seed"):
        loop.check_output_folder(str(tmp_path / "run"), {**fp, "seed": 1})
