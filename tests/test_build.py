"""Tests of the converter: source reading/validation, build, zip, download, verify.

The real sample (/work/shared/data/tiny-imagenet-sample, read in place) is built once per
storage format per module; every image read back with the TF decoding the pipeline uses
(``features.decode_image``: decode per IMAGE_FORMAT) must equal PIL's ``.convert("RGB")`` of
the source, pixel for pixel. Bad inputs use tiny synthetic datasets in tmp dirs.
"""

from __future__ import annotations

import glob
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tinyimagenet_tfrecords import build  # noqa: E402
from tinyimagenet_tfrecords import download  # noqa: E402
from tinyimagenet_tfrecords import features  # noqa: E402
from tinyimagenet_tfrecords import manifest as manifest_lib  # noqa: E402
from tinyimagenet_tfrecords import source  # noqa: E402
from tinyimagenet_tfrecords import synthetic  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "tiny-imagenet-sample"))
if not os.path.isdir(SAMPLE):
    SAMPLE = "/work/shared/data/tiny-imagenet-sample"
needs_sample = pytest.mark.skipif(not os.path.isdir(SAMPLE), reason="real sample not present")


# --- Helpers ----------------------------------------------------------------------------------


_READ_CACHE: dict = {}


def read_split(build_dir: str, split: str) -> list[dict]:
    """Every example of ``split``, decoded with the pipeline's TF decoding (cached)."""
    manifest = manifest_lib.load_manifest(build_dir)
    paths = manifest_lib.shard_paths(build_dir, manifest, split)
    key = (build_dir, split, manifest["created_utc"], tuple(
        s["sha256"] for s in manifest["splits"][split]["shards"]))
    if key not in _READ_CACHE:
        _READ_CACHE[key] = [read_shard(p) for p in paths]
    return [e for shard in _READ_CACHE[key] for e in shard]


def read_shard(path: str) -> list[dict]:

    def parse(record):
        ex = tf.io.parse_single_example(record, features.PARSE_SPEC)
        ex["pixels"] = features.decode_image(ex[features.IMAGE], ex[features.IMAGE_FORMAT],
                                             ex[features.HEIGHT], ex[features.WIDTH])
        return ex

    out = []
    dataset = tf.data.TFRecordDataset(path).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    for ex in dataset.as_numpy_iterator():
        out.append({"filename": ex[features.FILENAME].decode(),
                    "label": int(ex[features.LABEL]), "wnid": ex[features.WNID].decode(),
                    "bbox": tuple(int(v) for v in ex[features.BBOX]),
                    "format": ex[features.IMAGE_FORMAT].decode(), "pixels": ex["pixels"],
                    "encoded": ex[features.IMAGE]})
    return out


def source_truth(root: str) -> dict[str, dict]:
    """Independent reading of a dataset folder: split -> filename -> label/wnid/box/path."""
    with open(os.path.join(root, "wnids.txt"), newline="") as f:
        wnids = sorted(w.strip() for w in f if w.strip())
    label = {w: i for i, w in enumerate(wnids)}
    truth = {"train": {}, "val": {}, "test": {}}
    for wnid in wnids:
        with open(os.path.join(root, "train", wnid, f"{wnid}_boxes.txt")) as f:
            for line in f:
                if line.strip():
                    name, *box = line.split()
                    truth["train"][name] = dict(
                        label=label[wnid], wnid=wnid, bbox=tuple(map(int, box)),
                        path=os.path.join(root, "train", wnid, "images", name))
    with open(os.path.join(root, "val", "val_annotations.txt")) as f:
        for line in f:
            if line.strip():
                name, wnid, *box = line.split()
                truth["val"][name] = dict(label=label[wnid], wnid=wnid, bbox=tuple(map(int, box)),
                                          path=os.path.join(root, "val", "images", name))
    for path in glob.glob(os.path.join(root, "test", "images", "*")):
        truth["test"][os.path.basename(path)] = dict(label=-1, wnid="", bbox=(-1, -1, -1, -1),
                                                     path=path)
    return truth


def pil_rgb(path_or_bytes) -> np.ndarray:
    if isinstance(path_or_bytes, bytes):
        path_or_bytes = io.BytesIO(path_or_bytes)
    with Image.open(path_or_bytes) as im:
        return np.asarray(im.convert("RGB"))


def assert_build_equals_source(build_dir: str, root: str, splits=("train", "val", "test")):
    truth = source_truth(root)
    manifest = manifest_lib.load_manifest(build_dir)
    for split in splits:
        examples = read_split(build_dir, split)
        assert sorted(e["filename"] for e in examples) == sorted(truth[split])
        assert manifest["splits"][split]["num_examples"] == len(examples)
        per_class = {}
        for e in examples:
            t = truth[split][e["filename"]]
            assert (e["label"], e["wnid"], e["bbox"]) == (t["label"], t["wnid"], t["bbox"])
            expected = pil_rgb(t["path"])
            assert e["pixels"].shape == expected.shape, e["filename"]
            np.testing.assert_array_equal(e["pixels"], expected, err_msg=e["filename"])
            if e["wnid"]:
                per_class[e["wnid"]] = per_class.get(e["wnid"], 0) + 1
        assert manifest["splits"][split]["per_class"] == per_class


def tiny_dataset(tmp_path, name="src", **kwargs) -> str:
    args = dict(num_classes=3, train_per_class=4, num_val=6, num_test=3, image_size=16,
                workers=1)
    args.update(kwargs)
    return synthetic.make_synthetic_dataset(str(tmp_path / name), **args)


def build_quiet(src, out, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("shards", {"train": 2, "val": 1, "test": 1})
    return build.build_dataset(str(src), str(out), **kwargs)


def no_finished_output(out) -> bool:
    """Neither the build folder nor a leftover temporary folder beside it exists."""
    parent = os.path.dirname(str(out))
    leftovers = [n for n in os.listdir(parent) if n.startswith("." + os.path.basename(str(out)))]
    return not os.path.exists(str(out)) and not leftovers


# --- Builds of the real sample ----------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_builds(tmp_path_factory):
    if not os.path.isdir(SAMPLE):
        pytest.skip("real sample not present")
    root = tmp_path_factory.mktemp("sample_builds")
    out = {}
    for storage, workers in (("jpeg", 2), ("raw", 1)):
        out[storage] = str(root / storage)
        build.build_dataset(SAMPLE, out[storage], storage=storage, workers=workers,
                            progress=False)
    return out


@needs_sample
@pytest.mark.parametrize("storage", ["jpeg", "raw"])
def test_every_sample_image_reads_back_as_source_rgb(sample_builds, storage):
    assert_build_equals_source(sample_builds[storage], SAMPLE)


@needs_sample
def test_sample_grayscale_images_come_back_with_three_channels(sample_builds):
    gray = set()
    for path in glob.glob(os.path.join(SAMPLE, "train", "*", "images", "*")):
        with Image.open(path) as im:
            if im.mode == "L":
                gray.add(os.path.basename(path))
    assert len(gray) == 68
    for storage in ("jpeg", "raw"):
        got = [e for e in read_split(sample_builds[storage], "train") if e["filename"] in gray]
        assert len(got) == 68
        for e in got:
            assert e["pixels"].shape[-1] == 3
            assert (e["pixels"][..., 0] == e["pixels"][..., 2]).all()


@needs_sample
def test_jpeg_storage_keeps_original_bytes(sample_builds):
    truth = source_truth(SAMPLE)
    for e in read_split(sample_builds["jpeg"], "val"):
        with open(truth["val"][e["filename"]]["path"], "rb") as f:
            assert e["encoded"] == f.read()
        assert e["format"] == "jpeg"


@needs_sample
def test_manifest_describes_sample_build(sample_builds):
    m = manifest_lib.load_manifest(sample_builds["raw"])
    with open(os.path.join(SAMPLE, "wnids.txt")) as f:
        wnids = sorted(line.strip() for line in f if line.strip())
    assert m["num_classes"] == len(wnids) == 10
    assert [c["wnid"] for c in m["classes"]] == wnids
    assert [c["label"] for c in m["classes"]] == list(range(10))
    assert m["classes"][0]["name"] == "brain coral"  # words.txt: n01917289
    assert m["storage"] == "raw"
    for split in ("train", "val", "test"):
        shards = m["splits"][split]["shards"]
        assert sum(s["num_examples"] for s in shards) == m["splits"][split]["num_examples"]
        for s in shards:
            path = os.path.join(sample_builds["raw"], s["file"])
            with open(path, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == s["sha256"]
    assert [s["file"] for s in m["splits"]["train"]["shards"]] == [
        f"train-{i:05d}-of-00016.tfrecord" for i in range(16)]
    assert m["splits"]["test"]["per_class"] == {}
    assert m["args"]["storage"] == "raw" and m["args"]["seed"] == 0


@needs_sample
def test_every_train_shard_mixes_all_classes(sample_builds):
    m = manifest_lib.load_manifest(sample_builds["jpeg"])
    examples = read_split(sample_builds["jpeg"], "train")
    labels_in_order = [e["label"] for e in examples]
    start = 0
    for shard in m["splits"]["train"]["shards"]:
        labels = labels_in_order[start:start + shard["num_examples"]]
        start += shard["num_examples"]
        assert set(labels) == set(range(10)), shard["file"]
    # Shuffled, not grouped: consecutive examples change class most of the time.
    changes = sum(a != b for a, b in zip(labels_in_order, labels_in_order[1:]))
    assert changes > 0.8 * len(labels_in_order)


def test_output_bytes_depend_on_seed_not_on_workers(tmp_path):
    src = tiny_dataset(tmp_path, train_per_class=10)
    a = build_quiet(src, tmp_path / "a", workers=1, seed=3)
    b = build_quiet(src, tmp_path / "b", workers=2, seed=3)
    c = build_quiet(src, tmp_path / "c", workers=1, seed=4)
    shas = lambda m: [s["sha256"] for s in m["splits"]["train"]["shards"]]  # noqa: E731
    assert shas(a) == shas(b)
    assert shas(a) != shas(c)
    assert a["splits"]["val"] == c["splits"]["val"]


# --- Encoding ---------------------------------------------------------------------------------


def test_encode_example_parses_like_tf_train_example():
    kwargs = dict(image=bytes(range(256)) * 50, image_format="raw", height=64, width=40,
                  label=199, wnid="n01443537", filename="n01443537_0.JPEG", bbox=(0, 3, 63, 2 ** 40))
    for extra in ({}, {"label": features.NO_LABEL, "wnid": "", "bbox": features.NO_BBOX}):
        kw = dict(kwargs, **extra)
        mine = tf.io.parse_single_example(features.encode_example(**kw), features.PARSE_SPEC)
        ref = tf.io.parse_single_example(features.serialize_example(**kw), features.PARSE_SPEC)
        assert set(mine) == set(ref) == set(features.PARSE_SPEC)
        for key in ref:
            np.testing.assert_array_equal(mine[key].numpy(), ref[key].numpy(), err_msg=key)
        assert len(features.encode_example(**kw)) == len(features.serialize_example(**kw))


def test_own_tfrecord_framing_is_byte_identical_to_tf_writer(tmp_path):
    records = [b"", b"x", os.urandom(5000), os.urandom(70000)]
    writer = build._ShardWriter(str(tmp_path / "mine.tfrecord"))
    for r in records:
        writer.write(r)
    sha = writer.close()
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as w:
        for r in records:
            w.write(r)
    mine = (tmp_path / "mine.tfrecord").read_bytes()
    assert mine == (tmp_path / "tf.tfrecord").read_bytes()
    assert sha == hashlib.sha256(mine).hexdigest()
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "mine.tfrecord"))] == records


# --- Odd but valid images ---------------------------------------------------------------------


def _replace_image(root: str, relpath: str, make) -> None:
    """Overwrites ``relpath`` with the bytes ``make(rgb_array)`` returns."""
    path = os.path.join(root, relpath)
    rgb = pil_rgb(path)
    with open(path, "wb") as f:
        f.write(make(rgb))


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize("storage", ["jpeg", "raw"])
def test_cmyk_png_and_palette_images_decode_exactly_as_pil_rgb(tmp_path, storage):
    src = tiny_dataset(tmp_path)
    w0, w1 = synthetic.synthetic_wnid(0), synthetic.synthetic_wnid(1)
    cases = {
        f"train/{w0}/images/{w0}_0.JPEG":
            lambda a: _encoded(Image.fromarray(a).convert("CMYK"), "JPEG", quality=90),
        f"train/{w0}/images/{w0}_1.JPEG": lambda a: _encoded(Image.fromarray(a), "PNG"),
        f"train/{w1}/images/{w1}_0.JPEG":
            lambda a: _encoded(Image.fromarray(a).convert("P"), "PNG"),
        f"train/{w1}/images/{w1}_1.JPEG":
            lambda a: _encoded(Image.fromarray(a).convert("LA"), "PNG"),
        "val/images/val_0.JPEG":
            lambda a: _encoded(Image.fromarray(a).convert("L"), "JPEG", quality=80),
        "val/images/val_1.JPEG": lambda a: _encoded(Image.fromarray(a), "JPEG", progressive=True),
        "test/images/test_0.JPEG": lambda a: _encoded(Image.fromarray(a), "BMP"),
    }
    for relpath, make in cases.items():
        _replace_image(src, relpath, make)
    out = tmp_path / "out"
    manifest = build_quiet(src, out, storage=storage)
    assert_build_equals_source(str(out), src)
    converted = sorted(c["file"] for c in manifest["converted"])
    if storage == "jpeg":
        # CMYK JPEG, palette PNG and BMP cannot be kept as is; the PNGs and grayscale can.
        assert converted == sorted([f"train/{w0}/images/{w0}_0.JPEG",
                                    f"train/{w1}/images/{w1}_0.JPEG", "test/images/test_0.JPEG"])
        formats = {e["filename"]: e["format"] for e in read_split(str(out), "train")}
        assert formats[f"{w0}_1.JPEG"] == "png" and formats[f"{w0}_2.JPEG"] == "jpeg"
    else:
        assert converted == []
