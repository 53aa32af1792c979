"""A build is opened once (``manifest.open_build``) and read by two readers
(``pipeline.training_stream``, ``pipeline.eval_dataset``) whose batches are bit-identical to
the legacy ``pipeline.make_dataset`` for the same arguments (issue 17, items 1 and 2).

The builds are test_input's small ones (labels unique per example), written here in both
storages.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tinyimagenet_tfrecords import features
from tinyimagenet_tfrecords import manifest as manifest_lib
from tinyimagenet_tfrecords import pipeline

from test_contracts import _code_signature, _contract_signature
from test_input import N, _image, write_build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _four_shards(tmp_path_factory, storage):
    d = tmp_path_factory.mktemp(f"readers-{storage}")
    write_build(d, [_image(i, gray=(i % 4 == 0)) for i in range(N)], storage=storage, shards=4)
    return str(d)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    """20 examples per split in 4 shards of lossless PNGs (jpeg storage), some grayscale."""
    return _four_shards(tmp_path_factory, "jpeg")


@pytest.fixture(scope="module", params=["jpeg", "raw"])
def each_storage(request, tmp_path_factory):
    """The same build in each storage (the slow tier's equality matrix)."""
    return _four_shards(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def one_shard_dir(tmp_path_factory):
    """One shard per split: several input pipelines share it example by example."""
    d = tmp_path_factory.mktemp("readers-one-shard")
    write_build(d, [_image(i, 16, 16) for i in range(N)], storage="raw", shards=1)
    return str(d)


def _batches(ds, n=None):
    ds = ds.take(n) if n is not None else ds
    return [tuple(t.numpy() for t in element) for element in ds]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


# ------------------------------------------------------------------------- open_build ---

def test_open_build_gives_splits_shards_classes_and_storage_from_one_manifest(build_dir):
    build = manifest_lib.open_build(build_dir)
    raw = json.load(open(os.path.join(build_dir, "manifest.json")))
    assert build.path == build_dir
    assert build.manifest_path == os.path.join(build_dir, "manifest.json")
    assert build.storage == raw["storage"]
    assert build.schema_version == features.SCHEMA_VERSION
    assert build.split_names == ("train", "val")
    assert build.wnids == tuple(f"n{i:08d}" for i in range(N))
    assert build.names == tuple(str(i) for i in range(N))
    assert [c.label for c in build.classes] == list(range(N))
    assert build.num_classes == N
    val = build.split("val")
    assert val.num_examples == N and len(val.shards) == 4
    assert val.paths == tuple(manifest_lib.shard_paths(build_dir, raw, "val"))
    assert [s.num_examples for s in val.shards] == [5, 5, 5, 5]
    assert val.shards[0].bytes is None  # this build records no sizes (an old build)
    assert val.shards[0].file == "val-00000-of-00004.tfrecord"
    assert build.manifest == raw  # the raw fields, for what truly needs them


def test_a_build_is_immutable_and_its_manifest_view_a_copy(build_dir):
    build = manifest_lib.open_build(build_dir)
    with pytest.raises(dataclasses.FrozenInstanceError):
        build.storage = "jpeg"
    with pytest.raises(dataclasses.FrozenInstanceError):
        build.split("val").shards[0].num_examples = 3
    build.manifest["splits"].clear()
    assert build.split("val").num_examples == N and build.manifest["splits"]
    assert build == manifest_lib.open_build(build_dir)  # a value: equal builds compare equal
    assert hash(build) == hash(manifest_lib.open_build(build_dir))


def test_part_sizes_follow_the_readers_sharding(build_dir, one_shard_dir):
    four = manifest_lib.open_build(build_dir).split("train")
    one = manifest_lib.open_build(one_shard_dir).split("train")
    assert [four.part_size(2, p) for p in range(2)] == [10, 10]  # whole files
    assert [four.part_size(3, p) for p in range(3)] == [10, 5, 5]
    assert [one.part_size(3, p) for p in range(3)] == [7, 7, 6]  # every 3rd example
    assert [manifest_lib.part_size_of([3, 9], 2, p) for p in range(2)] == [3, 9]
    assert [manifest_lib.part_size_of([3, 9], 3, p) for p in range(3)] == [4, 4, 4]
    raw = json.load(open(os.path.join(one_shard_dir, "manifest.json")))
    assert [pipeline.part_size(raw, "train", 3, p) for p in range(3)] == [7, 7, 6]


def _write_manifest(folder, change):
    write_build(folder, [_image(i, 8, 8) for i in range(3)], splits=("val",))
    path = os.path.join(str(folder), "manifest.json")
    m = json.load(open(path))
    change(m)
    with open(path, "w") as f:
        json.dump(m, f)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(schema_version=features.SCHEMA_VERSION + 1), "schema version"),
    (lambda m: m.update(storage="png"), "unknown storage 'png'"),
    (lambda m: m["splits"]["val"]["shards"][0].pop("file"), "malformed"),
    (lambda m: m["splits"]["val"].update(num_examples=4), "num_examples 4 but its shards"),
    (lambda m: m["classes"][0].update(label=5), "labels"),
    (lambda m: m.update(classes="x"), "malformed"),
])
def test_open_build_refuses_a_bad_manifest_in_one_line_naming_it(tmp_path, change, message):
    path = _write_manifest(tmp_path, change)
    with pytest.raises(manifest_lib.BuildError, match=message) as e:
        manifest_lib.open_build(str(tmp_path))
    assert str(e.value).startswith(path) and "\n" not in str(e.value)


def test_open_build_refuses_missing_unfinished_builds_and_unbuilt_splits(tmp_path, build_dir):
    with pytest.raises(manifest_lib.BuildError, match="no such build"):
        manifest_lib.open_build(str(tmp_path / "nope"))
    with pytest.raises(manifest_lib.BuildError, match="not a finished build"):
        manifest_lib.open_build(str(tmp_path))
    build = manifest_lib.open_build(build_dir)
    with pytest.raises(manifest_lib.BuildError, match=r"split 'test' not built \(has \['train"):
        build.split("test")
    with pytest.raises(manifest_lib.BuildError, match="split 'test' not built"):
        pipeline.eval_dataset(build, "test", batch_size=4, image_size=64)


def test_check_shards_of_a_build_names_a_missing_or_resized_shard(tmp_path):
    write_build(tmp_path, [_image(i, 8, 8) for i in range(6)], shards=2, splits=("val",))
    path = os.path.join(str(tmp_path), "manifest.json")
    m = json.load(open(path))
    shard = os.path.join(str(tmp_path), m["splits"]["val"]["shards"][1]["file"])
    m["splits"]["val"]["shards"][1]["bytes"] = os.path.getsize(shard)
    json.dump(m, open(path, "w"))
    build = manifest_lib.open_build(str(tmp_path))
    build.check_shards(["val"])  # fine
    with open(shard, "ab") as f:
        f.write(b"x")
    with pytest.raises(manifest_lib.BuildError, match=rf"{shard}: \d+ bytes, .* says"):
        build.check_shards(["val"])
    os.remove(shard)
    with pytest.raises(manifest_lib.BuildError, match=rf"{shard}: missing shard"):
        build.check_shards(["val"])
    with pytest.raises(manifest_lib.BuildError, match="split 'train' not built"):
        build.check_shards(["train"])


def test_open_build_reads_a_gfile_url(tmp_path):
    write_build(tmp_path, [_image(i, 8, 8) for i in range(3)], splits=("val",))
    url = "ram://readers-open-build/b"
    for name in os.listdir(tmp_path):
        tf.io.gfile.copy(os.path.join(str(tmp_path), name), f"{url}/{name}", overwrite=True)
    build = manifest_lib.open_build(url)
    assert build.split("val").paths == (f"{url}/val-00000-of-00001.tfrecord",)
    x, y = _batches(pipeline.eval_dataset(build, "val", batch_size=2, image_size=8))[0]
    assert x.shape == (2, 8, 8, 3)


def test_open_build_of_a_local_folder_imports_no_tensorflow(build_dir):
    code = ("import sys; from tinyimagenet_tfrecords import manifest as m; "
            f"b = m.open_build({build_dir!r}); b.check_shards(b.split_names); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# ------------------------------------------------------------- one manifest read per open ---

def test_readers_never_reread_the_manifest_of_an_opened_build(build_dir):
    before = manifest_lib.read_count()
    build = manifest_lib.open_build(build_dir)
    assert manifest_lib.read_count() == before + 1
    # Making a reader is what could read it; iterating reads shards only.
    pipeline.training_stream(build, batch_size=4, image_size=64, seed=1)
    pipeline.eval_dataset(build, "val", batch_size=4, image_size=64)
    build.check_shards(build.split_names)
    pipeline.make_dataset(build, "val", batch_size=4)  # the legacy reader takes a build too
    assert manifest_lib.read_count() == before + 1
    fn = pipeline.make_input_fn(build_dir, "val", global_batch_size=4)  # opens it once
    assert manifest_lib.read_count() == before + 2
    fn(tf.distribute.InputContext(2, 1, 2))
    assert manifest_lib.read_count() == before + 2
    manifest_lib.load_manifest(build_dir)  # the converter's raw read counts too
    assert manifest_lib.read_count() == before + 3


# ------------------------------------------------- the training stream = make_dataset's ---

def _same_training_batches(folder, parts, start, pids=None):
    build = manifest_lib.open_build(folder)
    for pid in range(parts) if pids is None else pids:
        kw = dict(batch_size=3, image_size=32, seed=5, start_example=start,
                  num_input_pipelines=parts, input_pipeline_id=pid)
        new = _batches(pipeline.training_stream(build, **kw), 9)
        old = _batches(pipeline.make_dataset(folder, "train", training=True, **kw), 9)
        _assert_same(new, old)


def test_training_stream_equals_make_dataset(build_dir):
    _same_training_batches(build_dir, 2, 13, pids=[1])  # 9 batches of 3 cross two passes


@pytest.mark.slow
@pytest.mark.parametrize("parts, start", [(1, 0), (1, 7), (1, 23), (2, 0), (2, 13), (3, 5)])
def test_training_stream_equals_make_dataset_for_each_storage_part_and_start(
        each_storage, parts, start):
    _same_training_batches(each_storage, parts, start)


@pytest.mark.slow
@pytest.mark.parametrize("parts, start", [(1, 3), (3, 11)])
def test_training_stream_equals_make_dataset_when_pipelines_share_a_shard(one_shard_dir,
                                                                          parts, start):
    build = manifest_lib.open_build(one_shard_dir)
    for pid in range(parts):
        kw = dict(batch_size=4, image_size=16, seed=2, start_example=start,
                  num_input_pipelines=parts, input_pipeline_id=pid)
        _assert_same(_batches(pipeline.training_stream(build, **kw), 6),
                     _batches(pipeline.make_dataset(one_shard_dir, "train", **kw), 6))


def _seed_stamp(images, seed):
    value = tf.cast(tf.math.floormod(seed[0] ^ seed[1], 251), tf.uint8)
    return tf.zeros_like(images) + value


@pytest.mark.slow
def test_training_stream_augments_like_make_dataset(build_dir):
    build = manifest_lib.open_build(build_dir)
    kw = dict(batch_size=4, image_size=16, seed=9, input_pipeline_id=1, num_input_pipelines=2)
    new = _batches(pipeline.training_stream(build, augment=_seed_stamp, **kw), 4)
    _assert_same(new, _batches(pipeline.make_dataset(build_dir, "train", augment=_seed_stamp,
                                                     **kw), 4))
    assert len({int(x[0, 0, 0, 0]) for x, _ in new}) > 1  # the stamp is really applied
    plain = _batches(pipeline.training_stream(build, augment=_seed_stamp, jit_augment=False,
                                              **kw), 4)
    _assert_same(new, plain)


def test_training_stream_batches_are_static_and_reject_bad_arguments(build_dir):
    build = manifest_lib.open_build(build_dir)
    ds = pipeline.training_stream(build, batch_size=8, image_size=32, seed=0)
    assert ds.element_spec[0].shape[1:] == (32, 32, 3)
    assert ds.element_spec[1].dtype == tf.int32
    with pytest.raises(ValueError, match="start_example"):
        pipeline.training_stream(build, batch_size=8, image_size=32, seed=0, start_example=-1)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.training_stream(build, batch_size=0, image_size=32, seed=0)
    with pytest.raises(TypeError, match="augment"):
        pipeline.training_stream(build, batch_size=8, image_size=32, seed=0, augment="flip")
    with pytest.raises(TypeError, match="open_build"):
        pipeline.training_stream(build_dir, batch_size=8, image_size=32, seed=0)


# ---------------------------------------------------- the evaluation reader = make_dataset's ---

def _same_eval_batches(folder, parts, size, pids=None):
    build = manifest_lib.open_build(folder)
    for pid in range(parts) if pids is None else pids:
        kw = dict(batch_size=3, image_size=size, num_input_pipelines=parts,
                  input_pipeline_id=pid)
        _assert_same(_batches(pipeline.eval_dataset(build, "val", **kw)),
                     _batches(pipeline.make_dataset(folder, "val", training=False, **kw)))


def test_eval_dataset_equals_make_dataset(build_dir):
    _same_eval_batches(build_dir, 3, 24, pids=[2])


@pytest.mark.slow
@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("size", [64, 24])
def test_eval_dataset_equals_make_dataset_for_each_storage_part_and_size(each_storage, parts,
                                                                         size):
    _same_eval_batches(each_storage, parts, size)


@pytest.mark.slow
def test_eval_dataset_equals_make_dataset_when_pipelines_share_a_shard(one_shard_dir):
    build = manifest_lib.open_build(one_shard_dir)
    for pid in range(3):
        kw = dict(batch_size=4, image_size=8, num_input_pipelines=3, input_pipeline_id=pid)
        _assert_same(_batches(pipeline.eval_dataset(build, "val", **kw)),
                     _batches(pipeline.make_dataset(one_shard_dir, "val", **kw)))


def test_one_eval_reader_serves_every_epoch_with_the_same_batches_in_any_batch_size(build_dir):
    """Iterating a reader again restarts it; its order does not depend on the batch size, so
    the misclassified grid picks images by index from the reader evaluation used."""
    build = manifest_lib.open_build(build_dir)
    reader = pipeline.eval_dataset(build, "val", batch_size=7, image_size=32)
    first, second = _batches(reader), _batches(reader)
    assert [x.shape[0] for x, _ in first] == [7, 7, 6]  # the last partial batch is kept
    _assert_same(first, second)
    assert sorted(np.concatenate([y for _, y in first])) == list(range(N))
    big = _batches(pipeline.eval_dataset(build, "val", batch_size=256, image_size=32))
    for i in range(2):
        np.testing.assert_array_equal(np.concatenate([b[i] for b in first]), big[0][i])


def test_eval_dataset_with_filenames_serves_predictions_of_an_unlabelled_split(tmp_path):
    images = [_image(i, 16, 16) for i in range(5)]
    write_build(tmp_path, images, splits=("test",), shards=2, labels=[-1] * 5)
    build = manifest_lib.open_build(str(tmp_path))
    plain = _batches(pipeline.eval_dataset(build, "test", batch_size=2, image_size=16))
    named = _batches(pipeline.eval_dataset(build, "test", batch_size=2, image_size=16,
                                           with_filenames=True))
    _assert_same(plain, [b[:2] for b in named])
    labels = np.concatenate([b[1] for b in named])
    assert labels.tolist() == [-1] * 5
    for x, _, names in named:
        for img, name in zip(x, names):  # img<i>.png holds image i
            i = int(name.decode()[3:-4])
            np.testing.assert_array_equal(img, images[i])


# ------------------------------------------------------------------------------ contracts ---

@pytest.mark.parametrize("module, name", [
    ("tinyimagenet_tfrecords.manifest", "open_build"),
    ("tinyimagenet_tfrecords.manifest", "read_count"),
    ("tinyimagenet_tfrecords.pipeline", "training_stream"),
    ("tinyimagenet_tfrecords.pipeline", "eval_dataset"),
])
def test_contracts_give_the_readers_signatures_as_the_code_has_them(module, name):
    import importlib
    fn = getattr(importlib.import_module(module), name)
    assert _code_signature(fn) == _contract_signature(name)
