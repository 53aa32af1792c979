"""Runs on any tf.io.gfile storage: a whole run on ``ram://`` paths, and a build read from one.
(Atomic writes, local and on a URL: tests/test_plumbing.py.)"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def _copy_tree_to(src: str, dst: str) -> None:
    import tensorflow as tf
    tf.io.gfile.makedirs(dst)
    for name in tf.io.gfile.listdir(src):
        tf.io.gfile.copy(os.path.join(src, name), os.path.join(dst, name), overwrite=True)


def test_build_opens_from_a_gfile_url_and_names_a_missing_one(synthetic_build):
    from tinyimagenet_tfrecords import manifest as manifest_lib
    _copy_tree_to(synthetic_build, "ram://manifest-test/build")
    build = manifest_lib.open_build("ram://manifest-test/build")
    assert build.split("train").num_examples == 1000
    assert build.split("train").paths[0].startswith("ram://manifest-test/build/")
    build.check_shards(("train", "val"))
    with pytest.raises(manifest_lib.BuildError, match="ram://nowhere"):
        manifest_lib.open_build("ram://nowhere/build")


@pytest.mark.slow
def test_whole_run_reads_its_build_and_writes_checkpoints_and_reports_on_ram_urls(
        synthetic_build):
    import tensorflow as tf
    import training
    from training import config as config_lib
    data, out = "ram://gfile-run/build", "ram://gfile-run/run"
    _copy_tree_to(synthetic_build, data)
    phase = config_lib.Phase(epochs=2, image_size=16, batch_size=16, augment="none",
                             plateau=False)
    cfg = config_lib.RunConfig(
        data=data, out=out, model="smoke", phases=(phase,), steps_per_epoch=2,
        val_image_size=16, eval_batch_size=64, bn_momentum=0.9, xla=False, progress=False,
        misclassified=4, worst_classes=3, strategy="default")
    summary = training.run(cfg, flags_text="--model=smoke\n")
    assert summary["epochs"] == 2
    names = set(tf.io.gfile.listdir(out))
    for want in ("config.json", "flags.txt", "history.csv", "history.json", "loss.png",
                 "accuracy.png", "best.keras", "summary.json"):
        assert want in names, names
    assert tf.io.gfile.glob(out + "/checkpoints/ckpt-2.index")
    assert tf.io.gfile.glob(out + "/tensorboard/events.out.tfevents*")
    with tf.io.gfile.GFile(out + "/eval/report.json") as f:
        assert json.load(f)["count"] == 200
    with tf.io.gfile.GFile(out + "/history.json") as f:
        history = json.load(f)
    assert [r["epoch"] for r in history] == [1, 2]
    assert not [n for n in names if n.startswith(".tmp-")] and "run.lock" not in names
    assert "classes.json" in names
    # The same command again finds the run finished in its ram:// checkpoints.
    again = training.run(cfg)
    assert again["epochs"] == 2 and again["last"] == summary["last"]
    tf.io.gfile.rmtree("ram://gfile-run")
