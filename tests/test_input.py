"""Tests of the graph-mode input pipeline (tinyimagenet_tfrecords.pipeline): its two readers
of an opened build, ``training_stream`` and ``eval_dataset`` (``tests/test_readers.py`` checks
that they keep the order of the legacy ``make_dataset`` they replaced).

Most tests use small builds written here with ``features.serialize_example`` (so they can hold
odd cases the real data lacks: PNG, non-64 sizes, raw storage) whose labels are unique per
example, so a label identifies an example. The integration tests at the end read conftest's
session build of the real sample (extra coverage; skipped without a sample).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tinyimagenet_tfrecords import features
from tinyimagenet_tfrecords import manifest as manifest_lib
from tinyimagenet_tfrecords import pipeline

from conftest import SAMPLE

PY_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "GeneratorDataset"}


# ------------------------------------------------------------------------------- fixtures ---

def _image(i: int, h: int = 64, w: int = 64, gray: bool = False) -> np.ndarray:
    """A smooth, distinct test image (smooth so JPEG round trips stay close)."""
    y, x = np.mgrid[0:h, 0:w]
    base = (x * (3 + i % 5) + y * (2 + i % 3) + 17 * i) % 256
    img = np.stack([base, (base + 85) % 256, 255 - base], -1).astype(np.uint8)
    return img[..., :1] if gray else img


def _encode(img: np.ndarray, fmt: str) -> bytes:
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    buf = io.BytesIO()
    pil.save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    return buf.getvalue()


def write_build(out_dir, images, *, storage="jpeg", fmts=None, shards=1, splits=("train",
                "val"), labels=None, legacy=False) -> dict:
    """Writes a finished build: each split holds ``images`` (label i for image i, unless
    ``labels`` gives them). Each split lists its image sizes as the builder does; ``legacy``
    leaves them out, as builds made before the builder recorded them."""
    os.makedirs(out_dir, exist_ok=True)
    fmts = fmts or ["png"] * len(images)
    labels = list(range(len(images))) if labels is None else list(labels)
    split_info = {}
    for split in splits:
        shard_list = []
        for s in range(shards):
            name = f"{split}-{s:05d}-of-{shards:05d}.tfrecord"
            idx = list(range(s, len(images), shards))
            with tf.io.TFRecordWriter(os.path.join(str(out_dir), name)) as w:
                for i in idx:
                    img = images[i]
                    if storage == "raw":
                        rgb = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
                        data, fmt = rgb.tobytes(), "raw"
                    else:
                        data, fmt = _encode(img, fmts[i]), fmts[i]
                    w.write(features.serialize_example(
                        image=data, image_format=fmt, height=img.shape[0], width=img.shape[1],
                        label=labels[i], wnid=f"n{i:08d}", filename=f"img{i}.{fmt}"))
            shard_list.append({"file": name, "num_examples": len(idx), "sha256": ""})
        split_info[split] = {"num_examples": len(images), "per_class": {},
                             "shards": shard_list}
        if not legacy:
            split_info[split]["image_sizes"] = [
                list(hw) for hw in sorted({tuple(img.shape[:2]) for img in images})]
    manifest = {"schema_version": features.SCHEMA_VERSION, "storage": storage,
                "num_classes": len(images),
                "classes": [{"label": i, "wnid": f"n{i:08d}", "name": str(i)}
                            for i in range(len(images))],
                "splits": split_info, "args": {}, "skipped": [], "source": "test",
                "created_utc": ""}
    with open(manifest_lib.manifest_path(str(out_dir)), "w") as f:
        json.dump(manifest, f)
    return manifest


N = 20  # examples per split of the small builds


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def png_build(tmp_path_factory):
    """20 lossless 64x64 images in 4 shards (every 4th one grayscale)."""
    d = tmp_path_factory.mktemp("png")
    images = [_image(i, gray=(i % 4 == 0)) for i in range(N)]
    write_build(d, images, shards=4)
    return str(d), images


def _rgb(img):
    return np.repeat(img, 3, -1) if img.shape[-1] == 1 else img


def _collect(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _open(build_dir):
    return manifest_lib.open_build(build_dir)


def _eval(build_dir, split="val", *, batch_size, image_size=64, **kwargs):
    return pipeline.eval_dataset(_open(build_dir), split, batch_size=batch_size,
                                 image_size=image_size, **kwargs)


def _train(build_dir, *, batch_size, image_size=64, seed=0, **kwargs):
    return pipeline.training_stream(_open(build_dir), batch_size=batch_size,
                                    image_size=image_size, seed=seed, **kwargs)


def _resized(img, size):
    out = tf.image.resize(_rgb(img)[None].astype(np.float32), [size, size], "bilinear",
                          antialias=False)[0]
    return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------ build checking ---

def test_missing_unfinished_and_other_schema_builds_raise_build_error(tmp_path, png_build):
    with pytest.raises(manifest_lib.BuildError, match="no such build"):
        _open(str(tmp_path / "nope"))
    with pytest.raises(manifest_lib.BuildError, match="not a finished build"):
        _open(str(tmp_path))
    other = tmp_path / "other"
    write_build(other, [_image(0)])
    m = json.loads((other / "manifest.json").read_text())
    m["schema_version"] = features.SCHEMA_VERSION + 1
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(manifest_lib.BuildError, match="schema"):
        _open(str(other))
    with pytest.raises(manifest_lib.BuildError, match="not built"):
        _eval(png_build[0], "test", batch_size=4)


def test_invalid_arguments_are_rejected(png_build):
    with pytest.raises(ValueError):
        _eval(png_build[0], batch_size=0)
    with pytest.raises(ValueError):
        _eval(png_build[0], batch_size=4, image_size=0)
    with pytest.raises(ValueError):
        _eval(png_build[0], batch_size=4, input_pipeline_id=2, num_input_pipelines=2)
    with pytest.raises(TypeError):
        _train(png_build[0], batch_size=4, augment="flip")
    with pytest.raises(TypeError):  # the evaluation reader has no augmentation
        _eval(png_build[0], batch_size=4, augment="flip")


# ------------------------------------------------------------------------------ eval order ---

def test_eval_pipeline_sees_every_example_once_in_the_same_order(png_build):
    ds = _eval(png_build[0], batch_size=7)
    shapes = [tuple(x.shape) for x, _ in ds]
    assert shapes == [(7, 64, 64, 3), (7, 64, 64, 3), (6, 64, 64, 3)]  # keeps the remainder
    _, labels1 = _collect(ds)
    _, labels2 = _collect(_eval(png_build[0], batch_size=7))
    assert sorted(labels1) == list(range(N))
    np.testing.assert_array_equal(labels1, labels2)  # deterministic


# ---------------------------------------------------------------------------------- decode ---

@pytest.mark.parametrize("legacy", [False, True], ids=["one-size decoder", "old build"])
def test_png_and_grayscale_decode_to_the_exact_rgb_pixels(png_build, tmp_path, legacy):
    """Through the one-size decoder of a build that lists its sizes, and through the general
    decoder of an old build that does not."""
    build, images = png_build
    if legacy:
        build = str(tmp_path)
        write_build(build, images, shards=4, splits=("val",), legacy=True)
    assert manifest_lib.open_build(build).split("val").uniform_size == (
        None if legacy else (64, 64))
    x, y = _collect(_eval(build, batch_size=8))
    assert x.dtype == np.uint8 and y.dtype == np.int32
    for img, label in zip(x, y):
        np.testing.assert_array_equal(img, _rgb(images[label]))


def test_jpeg_decodes_close_to_source_and_grayscale_jpeg_gives_three_equal_channels(tmp_path):
    images = [_image(i, gray=(i % 2 == 1)) for i in range(6)]
    write_build(tmp_path, images, fmts=["jpeg"] * 6, splits=("val",))
    x, y = _collect(_eval(str(tmp_path), batch_size=4))
    for img, label in zip(x, y):
        # The accurate IDCT matches PIL (Keras' load_img) exactly; allow one level for other
        # libjpeg builds. (TF's default IDCT differs by up to 4 and fails this.)
        pil = Image.open(io.BytesIO(_encode(images[label], "jpeg"))).convert("RGB")
        diff = np.abs(img.astype(int) - np.asarray(pil).astype(int))
        assert diff.max() <= 1, (diff.mean(), diff.max())
        if label % 2 == 1:
            np.testing.assert_array_equal(img[..., 0], img[..., 1])
            np.testing.assert_array_equal(img[..., 0], img[..., 2])


@pytest.mark.parametrize("storage", ["jpeg", "raw"])
@pytest.mark.parametrize("size", [64, 32, 16, 48])
def test_mixed_size_images_are_resized_bilinear_and_rounded(tmp_path, storage, size):
    sizes = [(64, 64), (40, 48), (64, 64), (17, 90), (64, 64)]
    images = [_image(i, h, w, gray=(i == 1)) for i, (h, w) in enumerate(sizes)]
    write_build(tmp_path, images, storage=storage, splits=("val",))
    x, y = _collect(_eval(str(tmp_path), batch_size=5, image_size=size))
    assert x.shape == (5, size, size, 3)
    for img, label in zip(x, y):
        np.testing.assert_array_equal(img, _resized(images[label], size))


@pytest.mark.parametrize("size", [64, 24])
def test_raw_storage_uniform_batches_match_the_source(tmp_path, size):
    images = [_image(i) for i in range(N)]
    write_build(tmp_path, images, storage="raw", shards=2, splits=("val",))
    x, y = _collect(_eval(str(tmp_path), batch_size=6, image_size=size))
    for img, label in zip(x, y):
        np.testing.assert_array_equal(img, _resized(images[label], size))


def test_resize_to_the_stored_size_is_skipped():
    images = tf.zeros([2, 64, 64, 3], tf.uint8)
    assert pipeline.resize_images(images, 64) is images
    assert pipeline.resize_images(images, 32).shape == (2, 32, 32, 3)


# -------------------------------------------------------------------------------- training ---

def test_training_shuffles_repeats_by_whole_epochs_and_drops_the_remainder(png_build):
    ds = _train(png_build[0], batch_size=8, image_size=32)
    batches = list(ds.take(5))  # 40 examples = exactly two epochs of 20
    for x, y in batches:
        assert x.shape == (8, 32, 32, 3) and x.dtype == tf.uint8 and y.dtype == tf.int32
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert np.bincount(labels, minlength=N).tolist() == [2] * N
    assert labels[:N].tolist() != list(range(N))  # shuffled
    assert sorted(labels[:N]) == list(range(N))  # the first epoch is complete before the next
    assert labels[:N].tolist() != labels[N:].tolist()  # reshuffled per epoch
    assert ds.element_spec[0].shape == (8, 32, 32, 3)  # static shape (drop remainder)


def _seed_stamp(images, seed):
    """An augmentation whose output reveals the seed it was given (TF ops only)."""
    value = tf.cast(tf.math.floormod(seed[0] ^ seed[1], 251), tf.uint8)
    return tf.zeros_like(images) + value


def _first_batches(build, n=4, **kwargs):
    ds = _train(build, batch_size=8, image_size=16, **kwargs)
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


@pytest.mark.slow
def test_same_seed_gives_the_same_batches_and_another_seed_differs(png_build):
    flip = lambda images, seed: tf.where(  # noqa: E731
        tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], seed) < 0.5,
        tf.reverse(images, [2]), images)
    a = _first_batches(png_build[0], seed=3, augment=flip)
    b = _first_batches(png_build[0], seed=3, augment=flip)
    c = _first_batches(png_build[0], seed=4, augment=flip)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


def test_augment_gets_a_stateless_seed_per_batch_from_seed_pipeline_and_index(png_build):
    batches = _first_batches(png_build[0], n=5, seed=7, augment=_seed_stamp)
    stamps = [int(x[0, 0, 0, 0]) for x, _ in batches]
    for x, _ in batches:
        assert (x == x[0, 0, 0, 0]).all()  # applied to the whole batch with one seed
    expected = []
    for i in range(5):
        s = pipeline.batch_seed(7, 0, i).numpy()
        expected.append(int((s[0] ^ s[1]) % 251))
    assert stamps == expected
    assert len(set(stamps)) > 1
    other_pipeline = pipeline.batch_seed(7, 1, 0).numpy()
    assert not np.array_equal(other_pipeline, pipeline.batch_seed(7, 0, 0).numpy())


# --------------------------------------------------------------------- graph has no Python ---

def _graph_ops(ds) -> set:
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(ds._as_serialized_graph().numpy())
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
        ops |= {n.op for n in fn.node_def}
    return ops


def test_pipeline_graph_has_no_python_functions(png_build):
    flip = lambda images, seed: tf.image.stateless_random_flip_left_right(images, seed)  # noqa
    build = png_build[0]
    for ds in [_train(build, batch_size=4, augment=flip, deterministic=False),
               _eval(build, batch_size=4, image_size=32, with_filenames=True),
               _eval(build, batch_size=4, image_size=32, interleave=False)]:
        ops = _graph_ops(ds)
        assert "ParseExample" in ops or "ParseExampleV2" in ops  # the walk sees functions
        assert not ops & PY_OPS, ops & PY_OPS
    # The check itself can fail: a py_function augmentation is caught.
    bad = lambda images, seed: tf.py_function(lambda x: x, [images], tf.uint8)  # noqa: E731
    ops = _graph_ops(_train(build, batch_size=4, augment=bad))
    assert ops & PY_OPS


def test_pipelines_run_no_autotune_thread_and_one_parallel_call_per_core(png_build):
    # With TensorFlow's autotune optimizer on, freeing the training stream's iterator (the
    # end of a run, a phase change) waited for that optimizer thread's sleep: 23-31 s after
    # the last report of a 90 s run on 2 busy cores, with the GIL held.
    build = png_build[0]
    for ds in [_train(build, batch_size=4), _train(build, batch_size=4, deterministic=False),
               _eval(build, batch_size=4, image_size=32)]:
        autotune = ds.options().autotune
        assert autotune.enabled is False
        assert autotune.initial_parallelism == len(os.sched_getaffinity(0))


def _xla_functions(ds) -> int:
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(ds._as_serialized_graph().numpy())
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return sum(1 for n in nodes if n.attr["_XlaMustCompile"].b)


@pytest.mark.slow
def test_augmentation_is_xla_compiled_unless_disabled(png_build):
    flip = lambda images, seed: tf.image.stateless_random_flip_left_right(images, seed)  # noqa
    kwargs = dict(batch_size=4, image_size=16, augment=flip)
    assert _xla_functions(_train(png_build[0], **kwargs)) >= 1
    assert _xla_functions(_train(png_build[0], jit_augment=False, **kwargs)) == 0
    x, _ = next(iter(_train(png_build[0], **kwargs)))
    assert x.shape == (4, 16, 16, 3) and x.dtype == tf.uint8


# ------------------------------------------------------------------------ multiple replicas ---

@pytest.mark.slow
def test_input_pipelines_partition_the_examples(tmp_path):
    for shards in (4, 1):  # shard files / shard examples
        write_build(tmp_path / str(shards), [_image(i, 8, 8) for i in range(N)], shards=shards)
        build = _open(str(tmp_path / str(shards)))
        for split in ("val", "train"):
            seen = []
            for pid in range(2):
                part = dict(num_input_pipelines=2, input_pipeline_id=pid)
                if split == "val":
                    ds = pipeline.eval_dataset(build, split, batch_size=3, image_size=8, **part)
                else:  # one data pass of this part, one example per batch
                    ds = pipeline.training_stream(build, batch_size=1, image_size=8, seed=0,
                                                  **part).take(build.split(split).part_size(2,
                                                                                            pid))
                seen.append(_collect(ds)[1].tolist())
            assert not set(seen[0]) & set(seen[1]), (shards, split)
            assert sorted(seen[0] + seen[1]) == list(range(N)), (shards, split)


@pytest.mark.slow  # joins the session's two-CPU child pytest (the other two_cpus tests are slow)
@pytest.mark.two_cpus  # logical devices are configured before TensorFlow starts: the child
def test_mirrored_strategy_replicas_read_disjoint_parts_of_the_training_stream(tmp_path):
    from training import multiworker  # pylint: disable=import-outside-toplevel
    write_build(tmp_path, [_image(i, 16, 16) for i in range(36)], shards=3)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    build = _open(str(tmp_path))
    # Per-replica batches of 8 / 2; 3 steps stay within one pass of each replica's part.
    fn = multiworker.per_replica_input_fn(lambda n, i: pipeline.training_stream(
        build, batch_size=4, image_size=16, seed=0, num_input_pipelines=n,
        input_pipeline_id=i).take(3))
    per_replica, shapes = [[], []], set()
    for images, labels in strategy.distribute_datasets_from_function(fn):
        for r, (x, y) in enumerate(zip(strategy.experimental_local_results(images),
                                       strategy.experimental_local_results(labels))):
            per_replica[r] += y.numpy().tolist()
            shapes.add(tuple(x.shape))
    assert strategy.num_replicas_in_sync == 2
    a, b = per_replica
    assert a and b  # both replicas get data
    assert not set(a) & set(b)  # replica r reads part r: shards 0 and 2, shard 1
    assert sorted(b) == list(range(1, 36, 3))  # 3 steps x 4 = all of shard 1
    assert len(a) == 12 and set(a) <= {i for i in range(36) if i % 3 != 1}
    assert shapes == {(4, 16, 16, 3)}  # per-replica batch = 8 / 2


# ---------------------------------------------------------- the real sample, real converter ---

@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def sample_pair(sample_build):
    """conftest's session build of the real sample, opened, with its manifest."""
    build = manifest_lib.open_build(sample_build)
    return build, build.manifest


def _pil_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.slow
def test_real_sample_val_pixels_and_labels_match_the_source_files(sample_pair):
    build, manifest = sample_pair
    labels_of = {c["wnid"]: c["label"] for c in manifest["classes"]}
    expected = {}  # pixel bytes -> label, from the dataset folder via PIL (as Keras loads it)
    with open(os.path.join(SAMPLE, "val", "val_annotations.txt")) as f:
        for line in f:
            name, wnid = line.split("\t")[:2]
            img = _pil_rgb(os.path.join(SAMPLE, "val", "images", name))
            expected[img.tobytes()] = labels_of[wnid]
    x, y = _collect(pipeline.eval_dataset(build, "val", batch_size=64, image_size=64))
    assert len(y) == manifest["splits"]["val"]["num_examples"] == len(expected)
    got = {img.tobytes(): int(label) for img, label in zip(x, y)}
    assert got == expected  # every image once, decoded exactly as PIL does, right label


@pytest.mark.slow
def test_real_sample_training_epoch_has_the_manifest_class_balance(sample_pair):
    build, manifest = sample_pair
    per_class = manifest["splits"]["train"]["per_class"]
    counts = np.zeros(manifest["num_classes"], int)
    ds = pipeline.training_stream(build, batch_size=100, image_size=32, seed=0)
    for x, y in ds.take(manifest["splits"]["train"]["num_examples"] // 100):
        assert x.shape == (100, 32, 32, 3) and x.dtype == tf.uint8
        counts += np.bincount(y.numpy(), minlength=len(counts))
    expected = [per_class[c["wnid"]] for c in manifest["classes"]]
    assert counts.tolist() == expected  # one whole epoch, before any example repeats


def test_a_split_of_one_image_size_reads_exactly_as_the_three_branch_decoder_does(
        synthetic_build):
    """The manifest's one ``image_sizes`` entry lets the readers trace only that decode (and a
    resize); every batch must be what the general decoder gives."""
    import dataclasses
    build = manifest_lib.open_build(synthetic_build)
    assert build.split("train").uniform_size == build.split("val").uniform_size == (64, 64)
    general = dataclasses.replace(build, splits=tuple(
        dataclasses.replace(s, image_sizes=None) for s in build.splits))
    assert general.split("train").uniform_size is None
    for size in (64, 16):
        fast, slow = (_collect(pipeline.eval_dataset(b, "val", batch_size=64, image_size=size))
                      for b in (build, general))
        np.testing.assert_array_equal(fast[0], slow[0])
        np.testing.assert_array_equal(fast[1], slow[1])
    fast, slow = ([x.numpy() for x, _ in pipeline.training_stream(
        b, batch_size=32, image_size=16, seed=1).take(2)] for b in (build, general))
    np.testing.assert_array_equal(np.stack(fast), np.stack(slow))


@pytest.mark.parametrize("storage", ["raw", "jpeg"])
def test_a_known_stored_size_traces_one_decoder_without_branches(storage):
    def op_types(stored_hw):
        fn = tf.function(pipeline._decoder(16, storage, stored_hw=stored_hw))
        graph = fn.get_concrete_function(tf.TensorSpec([None], tf.string)).graph
        bodies = graph._functions.values()  # branch and loop bodies
        return {op.type for op in graph.get_operations()} | {
            n.op for f in bodies for n in f.cached_definition.node_def}
    assert not {"Case", "StatelessCase"} & op_types((64, 64))
    assert {"Case", "StatelessCase"} & op_types(None)
