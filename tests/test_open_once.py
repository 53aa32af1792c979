"""A run opens its build once and builds each evaluation reader once (issue 17, items 1, 2):
``manifest.json`` is read once per process per run, the validation reader is made once and
iterated every epoch (also by the final report and its misclassified grid), and predictions
list the files shard after shard in manifest order, as before the readers were shared."""

from __future__ import annotations

import csv
import json

import pytest

from tinyimagenet_tfrecords import manifest as manifest_lib
from tinyimagenet_tfrecords import pipeline
from training import readers as readers_lib

from test_input import N, _image, write_build


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def four_shards(tmp_path_factory):
    """20 examples in 4 shards per split (example i in shard i % 4), test split unlabelled."""
    d = tmp_path_factory.mktemp("open-once")
    write_build(d, [_image(i, 16, 16) for i in range(N)], storage="raw", shards=4,
                splits=("val", "test"))
    return str(d)


def _count_eval_readers(monkeypatch):
    made = []
    real = pipeline.eval_dataset

    def counting(build, split, **kwargs):
        made.append((split, kwargs["image_size"], kwargs["batch_size"]))
        return real(build, split, **kwargs)
    monkeypatch.setattr(pipeline, "eval_dataset", counting)
    return made


def test_eval_readers_are_built_once_per_split_size_batch_and_part(four_shards, monkeypatch):
    made = _count_eval_readers(monkeypatch)
    build = manifest_lib.open_build(four_shards)
    readers = readers_lib.EvalReaders(build)
    first = readers.get("val", image_size=16, batch_size=8)
    assert readers.get("val", image_size=16, batch_size=8) is first
    assert readers.built == 1 and made == [("val", 16, 8)]
    readers.get("val", image_size=16, batch_size=4)
    readers.get("val", image_size=16, batch_size=8, num_parts=2, part_id=1)
    readers.get("test", image_size=16, batch_size=8, with_filenames=True, interleave=False)
    assert readers.built == 4 == len(made)
    assert readers_lib.readers_of(build, readers) is readers
    assert readers_lib.readers_of(build, None).built == 0
    with pytest.raises(TypeError, match="open_build"):
        readers_lib.EvalReaders(four_shards)  # a path is not an opened build
    other = manifest_lib.open_build(four_shards)
    assert readers_lib.readers_of(other, readers) is readers  # an equal build
    with pytest.raises(ValueError, match="readers of"):
        readers_lib.readers_of(manifest_lib.Build(**{**vars(build), "path": "elsewhere"}),
                               readers)


def test_predictions_list_the_files_shard_after_shard_in_manifest_order(four_shards, tmp_path):
    import models
    from training import evaluate
    build = manifest_lib.open_build(four_shards)
    model = models.build("net2", num_classes=N, image_size=16, width=0.0625)
    path = str(tmp_path / "pred.csv")
    assert evaluate.write_predictions(model, build, path, split="test", image_size=16,
                                      batch_size=6) == N
    with open(path, newline="") as f:
        names = [r["filename"] for r in csv.DictReader(f)]
    in_files = [i for shard in range(4) for i in range(shard, N, 4)]  # shard 0, then 1, ...
    assert names == [f"img{i}.raw" for i in in_files]


@pytest.mark.slow  # trains a tiny network for 3 epochs in-process
def test_a_training_run_reads_the_manifest_once_and_builds_its_val_reader_once(
        synthetic_build, tmp_path, monkeypatch):
    import training
    from training import config as config_lib
    phases = (config_lib.Phase(epochs=2, image_size=16, batch_size=8, augment="none",
                               plateau=False),
              config_lib.Phase(epochs=1, image_size=16, batch_size=4, augment="none",
                               plateau=False))
    cfg = config_lib.RunConfig(
        data=synthetic_build, out=str(tmp_path / "run"), model="smoke",
        phases=phases, steps_per_epoch=2, val_image_size=16, eval_batch_size=50, xla=False,
        progress=False, misclassified=4, export=False, seed=1)
    made = _count_eval_readers(monkeypatch)
    before = manifest_lib.read_count()
    summary = training.run(cfg)
    assert manifest_lib.read_count() - before == 1
    # Validation of 3 epochs, the final report and its misclassified grid: one reader.
    assert made == [("val", 16, 50)]
    assert summary["epochs"] == 3
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert report["count"] == 200 and report["misclassified"]
