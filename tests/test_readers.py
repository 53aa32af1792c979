"""A build is opened once (``manifest.open_build``) and read by two readers
(``pipeline.training_stream``, ``pipeline.eval_dataset``) that keep the order of the legacy
``pipeline.make_dataset`` they replaced (issue 17, items 1 and 2): the training stream's
orders below were recorded from it before its removal, the evaluation order is its rule.

The builds are test_input's small ones (labels unique per example), written here in both
storages.
"""

from __future__ import annotations

import dataclasses
import itertools
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


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def build_dir(tmp_path_factory):
    """20 examples per split in 4 shards of lossless PNGs (jpeg storage), some grayscale."""
    return _four_shards(tmp_path_factory, "jpeg")


@pytest.fixture(scope="session", params=["jpeg", "raw"])
def each_storage(request, tmp_path_factory):
    """The same build in each storage (the slow tier's equality matrix)."""
    return _four_shards(tmp_path_factory, request.param)


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
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


@pytest.mark.subprocess
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
    assert manifest_lib.read_count() == before + 1
    manifest_lib.load_manifest(build_dir)  # the converter's raw read counts too
    assert manifest_lib.read_count() == before + 2


# ------------------------------------------- the training stream keeps the legacy order ---

# Labels of the first batches of each part's stream, (shards, parts, start, part id) ->
# labels, recorded from the legacy ``pipeline.make_dataset(..., training=True)`` (commit
# b61d6e9) on these builds (label i = example i; seed 5, batch 3, 9 batches with 4 shards;
# seed 2, batch 4, 6 batches with 1 shard). The order depends on the records, not storage.
_LEGACY_TRAIN_ORDER = {
    (4, 1, 0, 0): [3, 19, 14, 7, 17, 11, 2, 1, 6, 10, 16, 4, 0, 5, 13, 18, 12, 9, 8, 15, 16, 14, 2, 9, 3, 13, 15],
    (4, 1, 7, 0): [1, 6, 10, 16, 4, 0, 5, 13, 18, 12, 9, 8, 15, 16, 14, 2, 9, 3, 13, 15, 7, 8, 11, 19, 1, 12, 5],
    (4, 1, 23, 0): [9, 3, 13, 15, 7, 8, 11, 19, 1, 12, 5, 17, 0, 18, 6, 4, 10, 7, 3, 11, 9, 4, 16, 12, 19, 14, 6],
    (4, 2, 0, 0): [4, 2, 18, 8, 10, 14, 0, 16, 6, 12, 12, 16, 14, 10, 2, 18, 6, 8, 4, 0, 12, 18, 16, 4, 8, 2, 10],
    (4, 2, 0, 1): [5, 3, 19, 9, 11, 15, 1, 17, 7, 13, 13, 17, 15, 11, 3, 19, 7, 9, 5, 1, 13, 19, 17, 5, 9, 3, 11],
    (4, 2, 13, 0): [10, 2, 18, 6, 8, 4, 0, 12, 18, 16, 4, 8, 2, 10, 14, 0, 6, 8, 16, 0, 14, 2, 4, 6, 18, 12, 10],
    (4, 2, 13, 1): [11, 3, 19, 7, 9, 5, 1, 13, 19, 17, 5, 9, 3, 11, 15, 1, 7, 9, 17, 1, 15, 3, 5, 7, 19, 13, 11],
    (4, 3, 5, 0): [15, 0, 16, 7, 12, 12, 16, 15, 11, 3, 19, 7, 8, 4, 0, 12, 19, 16, 4, 8, 3, 11, 15, 0, 7, 8, 16],
    (4, 3, 5, 1): [5, 1, 17, 9, 13, 9, 5, 1, 13, 17, 17, 13, 1, 9, 5, 13, 5, 9, 1, 17, 17, 5, 9, 13, 1, 13, 5],
    (4, 3, 5, 2): [6, 2, 18, 10, 14, 10, 6, 2, 14, 18, 18, 14, 2, 10, 6, 14, 6, 10, 2, 18, 18, 6, 10, 14, 2, 14, 6],
    (1, 1, 3, 0): [2, 10, 8, 12, 9, 5, 13, 1, 15, 14, 3, 6, 7, 0, 11, 19, 16, 13, 17, 7, 11, 1, 16, 14],
    (1, 3, 11, 0): [9, 12, 3, 0, 3, 18, 12, 9, 15, 6, 18, 9, 15, 12, 6, 3, 0, 9, 3, 0, 15, 18, 6, 12],
    (1, 3, 11, 1): [10, 13, 4, 1, 4, 19, 13, 10, 16, 7, 19, 10, 16, 13, 7, 4, 1, 10, 4, 1, 16, 19, 7, 13],
    (1, 3, 11, 2): [14, 5, 17, 2, 14, 11, 8, 14, 11, 2, 8, 5, 17, 5, 2, 14, 8, 11, 17, 8, 5, 2, 17, 11],
}


def _labels(ds, n=None):
    ds = ds.take(n) if n is not None else ds
    return [int(v) for element in ds for v in np.asarray(element[1])]


def _assert_legacy_training_order(folder, shards, parts, start, pids=None):
    build = manifest_lib.open_build(folder)
    batch, seed, n = (3, 5, 9) if shards == 4 else (4, 2, 6)
    for pid in range(parts) if pids is None else pids:
        ds = pipeline.training_stream(build, batch_size=batch, image_size=16, seed=seed,
                                      start_example=start, num_input_pipelines=parts,
                                      input_pipeline_id=pid)
        assert _labels(ds, n) == _LEGACY_TRAIN_ORDER[(shards, parts, start, pid)], (
            parts, start, pid)


def test_training_stream_keeps_the_legacy_order(build_dir):
    _assert_legacy_training_order(build_dir, 4, 2, 13, pids=[1])  # 9 batches cross two passes


@pytest.mark.slow
@pytest.mark.parametrize("parts, start", [(1, 0), (1, 7), (1, 23), (2, 0), (2, 13), (3, 5)])
def test_training_stream_keeps_the_legacy_order_for_each_storage_part_and_start(
        each_storage, parts, start):
    _assert_legacy_training_order(each_storage, 4, parts, start)


@pytest.mark.slow
@pytest.mark.parametrize("parts, start", [(1, 3), (3, 11)])
def test_training_stream_keeps_the_legacy_order_when_pipelines_share_a_shard(one_shard_dir,
                                                                            parts, start):
    _assert_legacy_training_order(one_shard_dir, 1, parts, start)


def _seed_stamp(images, seed):
    value = tf.cast(tf.math.floormod(seed[0] ^ seed[1], 251), tf.uint8)
    return tf.zeros_like(images) + value


@pytest.mark.slow
def test_training_stream_augments_each_batch_with_its_batch_seed(build_dir):
    build = manifest_lib.open_build(build_dir)
    kw = dict(batch_size=4, image_size=16, seed=9, input_pipeline_id=1, num_input_pipelines=2)
    new = _batches(pipeline.training_stream(build, augment=_seed_stamp, **kw), 4)
    plain = _batches(pipeline.training_stream(build, **kw), 4)
    for i, ((x, y), (_, y0)) in enumerate(zip(new, plain)):
        np.testing.assert_array_equal(y, y0)  # augmentation leaves the order alone
        s = pipeline.batch_seed(9, 1, i).numpy()
        assert (x == (s[0] ^ s[1]) % 251).all()
    assert len({int(x[0, 0, 0, 0]) for x, _ in new}) > 1  # the stamp is really applied
    unjitted = _batches(pipeline.training_stream(build, augment=_seed_stamp, jit_augment=False,
                                                 **kw), 4)
    _assert_same(new, unjitted)


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


# ---------------------------------------------- the evaluation reader keeps the legacy order ---

def _expected_eval_order(num_shards, parts, pid, interleave=True):
    """The legacy order: a part's shards (every ``parts``-th file, or every ``parts``-th
    example when files are fewer than parts) read record by record in turn (up to 8 at
    once), or one after another; write_build puts example i into shard i % num_shards."""
    shards = [list(range(s, N, num_shards)) for s in range(num_shards)]
    if parts > 1 and num_shards >= parts:
        shards = shards[pid::parts]
    if interleave:
        order = [i for row in itertools.zip_longest(*shards) for i in row if i is not None]
    else:
        order = [i for shard in shards for i in shard]
    return order[pid::parts] if parts > 1 and num_shards < parts else order


def _assert_eval_order(folder, num_shards, parts, size, pids=None):
    build = manifest_lib.open_build(folder)
    for pid in range(parts) if pids is None else pids:
        kw = dict(batch_size=3, image_size=size, num_input_pipelines=parts,
                  input_pipeline_id=pid)
        got = _batches(pipeline.eval_dataset(build, "val", **kw))
        assert [x.shape[1] for x, _ in got] == [size] * len(got)
        assert _labels(got) == _expected_eval_order(num_shards, parts, pid), (parts, pid)


def test_eval_dataset_reads_a_parts_shards_in_turn(build_dir):
    assert _expected_eval_order(4, 3, 0) == [0, 3, 4, 7, 8, 11, 12, 15, 16, 19]  # as recorded
    _assert_eval_order(build_dir, 4, 3, 24, pids=[0])  # two shards, record by record


@pytest.mark.slow
@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("size", [64, 24])
def test_eval_dataset_reads_a_parts_shards_in_turn_for_each_storage_part_and_size(
        each_storage, parts, size):
    _assert_eval_order(each_storage, 4, parts, size)


@pytest.mark.slow
def test_eval_dataset_reads_every_nth_example_when_pipelines_share_a_shard(one_shard_dir):
    _assert_eval_order(one_shard_dir, 1, 3, 8)
    assert _expected_eval_order(1, 3, 1) == [1, 4, 7, 10, 13, 16, 19]  # as recorded


def test_eval_dataset_without_interleave_reads_shard_after_shard_in_manifest_order(build_dir):
    """The predictions' order (the legacy ``predict_split`` read the files one by one)."""
    build = manifest_lib.open_build(build_dir)
    got = _labels(pipeline.eval_dataset(build, "val", batch_size=6, image_size=8,
                                         interleave=False))
    assert got == _expected_eval_order(4, 1, 0, interleave=False) == [
        0, 4, 8, 12, 16, 1, 5, 9, 13, 17, 2, 6, 10, 14, 18, 3, 7, 11, 15, 19]


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
