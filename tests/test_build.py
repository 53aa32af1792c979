"""Tests of the converter: source reading/validation, build, zip, download, verify.

Every mechanic is tested on tiny synthetic datasets generated in tmp dirs, read back with the
pipeline's own decoder (``features.decode_image``) and compared with PIL's ``.convert("RGB")``
of the source, pixel for pixel. The real sample (conftest's ``SAMPLE``: ``TIN_SAMPLE`` or
``../shared``) is extra coverage, built once per storage format, and skips without it.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import http.server
import io
import json
import os
import re
import runpy
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
from tinyimagenet_tfrecords import pipeline  # noqa: E402
from tinyimagenet_tfrecords import source  # noqa: E402
from tinyimagenet_tfrecords import synthetic  # noqa: E402

from conftest import forget_tool_flags, needs_sample  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- Helpers ----------------------------------------------------------------------------------


_READ_CACHE: dict = {}


def read_split(build_dir: str, split: str) -> list[dict]:
    """Every example of ``split``, decoded with the pipeline's TF decoding (cached)."""
    manifest = manifest_lib.load_manifest(build_dir)
    paths = manifest_lib.shard_paths(build_dir, manifest, split)
    key = (build_dir, split, manifest["created_utc"], tuple(
        s["sha256"] for s in manifest["splits"][split]["shards"]))
    if key not in _READ_CACHE:
        _READ_CACHE[key] = [read_shard(p, manifest["storage"]) for p in paths]
    return [e for shard in _READ_CACHE[key] for e in shard]


def read_shard(path: str, storage: str) -> list[dict]:

    def parse(record):
        ex = tf.io.parse_single_example(record, features.PARSE_SPEC)
        ex["pixels"] = features.decode_image(ex[features.IMAGE], storage, ex[features.HEIGHT],
                                             ex[features.WIDTH])
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
        boxes = os.path.join(root, "train", wnid, f"{wnid}_boxes.txt")
        if not os.path.exists(boxes):  # a class without boxes: every image, box absent
            for path in glob.glob(os.path.join(root, "train", wnid, "images", "*.JPEG")):
                truth["train"][os.path.basename(path)] = dict(
                    label=label[wnid], wnid=wnid, bbox=(-1, -1, -1, -1), path=path)
            continue
        with open(boxes) as f:
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
    for path in glob.glob(os.path.join(root, "test", "images", "*.JPEG")):
        truth["test"][os.path.basename(path)] = dict(label=-1, wnid="", bbox=(-1, -1, -1, -1),
                                                     path=path)
    return truth


def pil_rgb(path_or_bytes) -> np.ndarray:
    """What the source means: PIL's ``.convert("RGB")`` (cached per unchanged file)."""
    if isinstance(path_or_bytes, bytes):
        with Image.open(io.BytesIO(path_or_bytes)) as im:
            return np.asarray(im.convert("RGB"))
    stat = os.stat(path_or_bytes)
    return _pil_rgb_file(path_or_bytes, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=20000)
def _pil_rgb_file(path: str, mtime_ns: int, size: int) -> np.ndarray:
    del mtime_ns, size  # cache keys only
    with Image.open(path) as im:
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


# --- Whole builds: generated data always, the real sample when present ------------------------


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def synthetic_builds(tmp_path_factory):
    """A generated 10-class copy (with grayscale JPEGs) built in both storages, default shards."""
    root = tmp_path_factory.mktemp("synthetic_builds")
    src = synthetic.make_synthetic_dataset(str(root / "src"), num_classes=10,
                                           train_per_class=200, num_val=30, num_test=5,
                                           image_size=16, workers=1)
    out = {"src": src}
    for storage, workers in (("jpeg", 2), ("raw", 1)):
        out[storage] = str(root / storage)
        build.build_dataset(src, out[storage], storage=storage, workers=workers,
                            progress=False)
    return out


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def sample_builds(sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_builds")
    out = {"src": sample_dir}
    for storage, workers in (("jpeg", 2), ("raw", 1)):
        out[storage] = str(root / storage)
        build.build_dataset(sample_dir, out[storage], storage=storage, workers=workers,
                            progress=False)
    return out


@pytest.fixture(params=["synthetic",
                        pytest.param("sample", marks=[needs_sample, pytest.mark.slow])])
def builds(request):
    """Both storages' builds of one copy: generated (always) or the real sample (if present;
    two whole builds of it, so ``slow``)."""
    return request.getfixturevalue(f"{request.param}_builds")


@pytest.mark.parametrize("storage", ["jpeg", "raw"])
@pytest.mark.slow
def test_every_image_reads_back_as_source_rgb(builds, storage):
    assert_build_equals_source(builds[storage], builds["src"])


@pytest.mark.slow
def test_grayscale_images_come_back_with_three_channels(builds):
    gray = set()
    for path in glob.glob(os.path.join(builds["src"], "train", "*", "images", "*")):
        with Image.open(path) as im:
            if im.mode == "L":
                gray.add(os.path.basename(path))
    assert gray
    for storage in ("jpeg", "raw"):
        got = [e for e in read_split(builds[storage], "train") if e["filename"] in gray]
        assert len(got) == len(gray)
        for e in got:
            assert e["pixels"].shape[-1] == 3
            assert (e["pixels"][..., 0] == e["pixels"][..., 2]).all()


def test_jpeg_storage_keeps_original_bytes(builds):
    truth = source_truth(builds["src"])
    for e in read_split(builds["jpeg"], "val"):
        with open(truth["val"][e["filename"]]["path"], "rb") as f:
            assert e["encoded"] == f.read()
        assert e["format"] == "jpeg"


def test_manifest_describes_the_build(builds):
    m = manifest_lib.load_manifest(builds["raw"])
    with open(os.path.join(builds["src"], "wnids.txt")) as f:
        wnids = sorted(line.strip() for line in f if line.strip())
    with open(os.path.join(builds["src"], "words.txt")) as f:
        names = dict(line.rstrip("\n").split("\t", 1) for line in f if line.strip())
    assert m["num_classes"] == len(wnids) == 10
    assert [c["wnid"] for c in m["classes"]] == wnids
    assert [c["label"] for c in m["classes"]] == list(range(10))
    assert [c["name"] for c in m["classes"]] == [names[w] for w in wnids]
    assert m["storage"] == "raw" and m["classes_without_boxes"] == []
    for split in ("train", "val", "test"):
        shards = m["splits"][split]["shards"]
        assert sum(s["num_examples"] for s in shards) == m["splits"][split]["num_examples"]
        for s in shards:
            path = os.path.join(builds["raw"], s["file"])
            with open(path, "rb") as f:
                data = f.read()
            assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
    assert [s["file"] for s in m["splits"]["train"]["shards"]] == [
        f"train-{i:05d}-of-00016.tfrecord" for i in range(16)]
    assert m["splits"]["test"]["per_class"] == {}
    assert m["args"]["storage"] == "raw" and m["args"]["seed"] == 0
    truth = source_truth(builds["src"])
    for split in ("train", "val", "test"):  # the sizes read from the files' headers
        sizes = set()
        for t in truth[split].values():
            with Image.open(t["path"]) as im:
                sizes.add((im.height, im.width))
        assert m["splits"][split]["image_sizes"] == [list(hw) for hw in sorted(sizes)]


def test_real_sample_class_names_come_from_words_txt(sample_build):
    m = manifest_lib.load_manifest(sample_build)  # conftest's session build, shared
    assert m["classes"][0]["name"] == "brain coral"  # words.txt: n01917289


def read_labels(build_dir: str, split: str) -> list[int]:
    """The labels of ``split`` in shard order, parsed without decoding any image."""
    manifest = manifest_lib.load_manifest(build_dir)
    spec = {features.LABEL: features.PARSE_SPEC[features.LABEL]}
    ds = tf.data.TFRecordDataset(manifest_lib.shard_paths(build_dir, manifest, split)).batch(
        4096).map(lambda records: tf.io.parse_example(records, spec)[features.LABEL])
    return [int(v) for batch in ds.as_numpy_iterator() for v in batch]


def test_every_train_shard_mixes_all_classes(builds):
    m = manifest_lib.load_manifest(builds["jpeg"])
    labels_in_order = read_labels(builds["jpeg"], "train")
    assert len(labels_in_order) == m["splits"]["train"]["num_examples"]
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
                  label=199, wnid="n01443537", filename="n01443537_0.JPEG",
                  bbox=(0, 3, 63, 2 ** 40))
    for extra in ({}, {"label": features.NO_LABEL, "wnid": "", "bbox": features.NO_BBOX}):
        kw = dict(kwargs, **extra)
        mine = tf.io.parse_single_example(features.encode_example(**kw), features.PARSE_SPEC)
        ref = tf.io.parse_single_example(features.serialize_example(**kw), features.PARSE_SPEC)
        assert set(mine) == set(ref) == set(features.PARSE_SPEC)
        for key in ref:
            np.testing.assert_array_equal(mine[key].numpy(), ref[key].numpy(), err_msg=key)
        assert len(features.encode_example(**kw)) == len(features.serialize_example(**kw))


def test_own_tfrecord_framing_is_byte_identical_to_tf_writer(tmp_path):
    if not build._FAST_CRC:
        pytest.skip("google-crc32c not installed: the workers use tf.io.TFRecordWriter")
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


def test_fallback_to_tf_writer_without_fast_crc_gives_same_bytes(tmp_path, monkeypatch):
    src = tiny_dataset(tmp_path)
    fast = build_quiet(src, tmp_path / "fast")
    monkeypatch.setattr(build, "_FAST_CRC", False)
    slow = build_quiet(src, tmp_path / "slow")
    for split in ("train", "val", "test"):
        assert fast["splits"][split]["shards"] == slow["splits"][split]["shards"]


# --- Tolerated quirks -------------------------------------------------------------------------


def _rewrite(path: str, transform) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(transform(data))


def test_crlf_missing_final_newline_and_stray_files_are_tolerated(tmp_path):
    src = tiny_dataset(tmp_path)
    w0 = synthetic.synthetic_wnid(0)
    crlf_no_final = lambda d: d.replace(b"\n", b"\r\n").rstrip(b"\r\n")  # noqa: E731
    for rel in ("wnids.txt", "words.txt", "val/val_annotations.txt",
                f"train/{w0}/{w0}_boxes.txt"):
        _rewrite(os.path.join(src, rel), crlf_no_final)
    strays = [".DS_Store", "train/.DS_Store", f"train/{w0}/images/.DS_Store",
              f"train/{w0}/images/._{w0}_0.JPEG", "val/images/Thumbs.db", "test/images/notes.txt"]
    for rel in strays:
        with open(os.path.join(src, rel), "wb") as f:
            f.write(b"\x00junk")
    out = tmp_path / "out"
    manifest = build_quiet(src, out)
    assert_build_equals_source(str(out), src)
    assert manifest["num_stray_files"] == len(strays)
    assert sorted(s["file"] for s in manifest["skipped"]) == sorted(strays)


def test_the_skipped_files_line_names_the_first_few_and_counts_the_rest():
    files = [{"file": f, "reason": "stray"} for f in (".DS_Store", "train/.DS_Store",
                                                      "val/Thumbs.db", "test/notes.txt")]
    assert build.skipped_text([]) == "0 files skipped"
    assert build.skipped_text(files[:1]).startswith("1 file skipped (.DS_Store; ")
    text = build.skipped_text(files)
    assert text.startswith("4 files skipped (.DS_Store, train/.DS_Store, val/Thumbs.db and "
                           "1 more; "), text
    assert "test/notes.txt" not in text and "manifest.json" in text


# --- Refused inputs: the message names the file (and line); nothing finished is left ----------


def _corrupt_truncated(root, rel):
    _rewrite(os.path.join(root, rel), lambda d: d[: len(d) // 2])


def _corrupt_garbage(root, rel):
    _rewrite(os.path.join(root, rel), lambda d: b"\xff\xd8\xff" + os.urandom(300))


def test_skip_corrupt_skips_and_lists_each_corrupt_file(tmp_path):
    src = tiny_dataset(tmp_path)
    w1 = synthetic.synthetic_wnid(1)
    bad = [f"train/{w1}/images/{w1}_0.JPEG", "val/images/val_2.JPEG"]
    _corrupt_truncated(src, bad[0])
    _corrupt_garbage(src, bad[1])
    out = tmp_path / "out"
    manifest = build_quiet(src, out, skip_corrupt=True)
    assert sorted(s["file"] for s in manifest["skipped"]) == sorted(bad)
    assert all("cannot decode" in s["reason"] for s in manifest["skipped"])
    assert manifest["splits"]["train"]["per_class"][w1] == 3
    assert manifest["splits"]["val"]["num_examples"] == 5
    names = {e["filename"] for e in read_split(str(out), "train") + read_split(str(out), "val")}
    assert not names & {os.path.basename(b) for b in bad}


def _append_line(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def _line_count(path):
    with open(path) as f:
        return sum(1 for _ in f)


# --- The refusals: one table of damaged copies; each names the file (and line) ----------------
#
# Every row damages a fresh copy of one small generated dataset and says what the build must
# refuse with: (id, damage(src) -> message regex, the exception, build arguments).

W0, W1, W2 = (synthetic.synthetic_wnid(i) for i in range(3))


def _unknown_wnid_in_val_annotations(src):
    ann = os.path.join(src, "val", "val_annotations.txt")
    lines = open(ann).read().splitlines()
    lines[3] = lines[3].replace(lines[3].split("\t")[1], "n99999999")
    with open(ann, "w") as f:
        f.write("\n".join(lines) + "\n")
    return r"val_annotations.txt:4: unknown wnid n99999999"


def _val_image_without_annotation(src):
    shutil.copy(os.path.join(src, "val", "images", "val_0.JPEG"),
                os.path.join(src, "val", "images", "val_extra.JPEG"))
    return r"val_extra.JPEG: val image has no annotation"


def _val_annotation_without_image(src):
    ann = os.path.join(src, "val", "val_annotations.txt")
    _append_line(ann, f"val_404.JPEG\t{W0}\t0\t0\t5\t5")
    return rf"val_annotations.txt:{_line_count(ann)}: .*val_404.JPEG"


def _train_folder_not_in_wnids(src):
    shutil.copytree(os.path.join(src, "train", W0), os.path.join(src, "train", "n12345678"))
    return r"train/n12345678: train folder not listed"


def _wnid_without_train_folder(src):
    shutil.rmtree(os.path.join(src, "train", W1))
    return rf"wnids.txt: wnid {W1} has no train folder"


def _empty_class(src):
    for path in glob.glob(os.path.join(src, "train", W2, "images", "*")):
        os.remove(path)
    open(os.path.join(src, "train", W2, f"{W2}_boxes.txt"), "w").close()
    return rf"train/{W2}/images: empty class {W2}"


def _every_image_of_a_class_corrupt(src):
    for path in glob.glob(os.path.join(src, "train", W0, "images", "*")):
        _rewrite(path, lambda d: d[:40])
    return rf"empty class {W0}"


def _image_damaged_by(corrupt):
    def damage(src):
        corrupt(src, f"train/{W2}/images/{W2}_3.JPEG")
        return f"{W2}_3.JPEG"
    return damage


def _box_line(line, says):
    def damage(src):
        _append_line(os.path.join(src, "train", W0, f"{W0}_boxes.txt"), line.format(w=W0))
        return rf"{W0}_boxes.txt:5: {says}"  # 4 boxes, then the bad line
    return damage


REFUSALS = [
    ("truncated image", _image_damaged_by(_corrupt_truncated), source.CorruptImageError, {}),
    ("undecodable image", _image_damaged_by(_corrupt_garbage), source.CorruptImageError, {}),
    ("unknown wnid in val", _unknown_wnid_in_val_annotations, source.SourceError, {}),
    ("val image unannotated", _val_image_without_annotation, source.SourceError, {}),
    ("val annotation, no image", _val_annotation_without_image, source.SourceError, {}),
    ("train folder not in wnids", _train_folder_not_in_wnids, source.SourceError, {}),
    ("wnid without train folder", _wnid_without_train_folder, source.SourceError, {}),
    ("empty class", _empty_class, source.SourceError, {}),
    ("class emptied by --skip_corrupt", _every_image_of_a_class_corrupt, source.SourceError,
     {"skip_corrupt": True}),
    # Boxes are optional per class (a missing file is tolerated), a malformed one is not.
    ("malformed box line", _box_line("{w}_0.JPEG\t1\t2\tthree", "expected"),
     source.SourceError, {}),
    ("box for an unknown image", _box_line("{w}_99.JPEG\t1\t2\t3\t4", f"box for {W0}_99.JPEG"),
     source.SourceError, {}),
]


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def pristine_src(tmp_path_factory):
    """One small generated dataset (3 classes), copied by the tests that damage it."""
    return tiny_dataset(tmp_path_factory.mktemp("pristine"))


def test_bad_inputs_are_refused_naming_the_file_and_leave_nothing_finished(pristine_src,
                                                                           tmp_path):
    for i, (case, damage, error, kwargs) in enumerate(REFUSALS):
        src = shutil.copytree(pristine_src, tmp_path / f"src{i}")
        match = damage(str(src))
        out = tmp_path / f"out{i}"
        try:
            build_quiet(src, out, **kwargs)
        except error as e:
            assert re.search(match, str(e)), (case, match, str(e))
        else:
            pytest.fail(f"{case}: not refused")
        assert no_finished_output(out), case


def test_cli_refuses_bad_input_with_one_line_and_status_2(tmp_path, fresh_flags, monkeypatch,
                                                          capsys):
    src = tiny_dataset(tmp_path)
    ann = os.path.join(src, "val", "val_annotations.txt")
    _append_line(ann, "val_0.JPEG\tn00000000\t0\t0\t1\t1")
    line = _line_count(ann)
    out = tmp_path / "out"
    assert _cli(monkeypatch, "tinyimagenet_tfrecords.build", f"--src={src}", f"--out={out}") == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"val_annotations.txt:{line}:" in lines[0] and "n00000000" in lines[0]
    assert no_finished_output(out)


# --- Atomicity and idempotence ----------------------------------------------------------------


def test_failed_build_removes_its_temporary_folder(tmp_path, monkeypatch):
    src = tiny_dataset(tmp_path)

    def boom(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_move_into_place", boom)
    with pytest.raises(KeyboardInterrupt):
        build_quiet(src, tmp_path / "out")
    assert no_finished_output(tmp_path / "out")


@pytest.mark.subprocess
def test_killed_build_leaves_nothing_that_looks_finished(tmp_path):
    src = tiny_dataset(tmp_path, train_per_class=600, workers=2)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyimagenet_tfrecords.build", f"--src={src}", f"--out={out}",
         "--workers=1", "--noprogress"], cwd=REPO)
    try:
        for _ in range(600):  # wait until the worker writes shards into its temporary folder
            tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
            if tmp and any(p.iterdir() for p in tmp):
                break
            if proc.poll() is not None:
                pytest.fail("build finished before it could be killed")
            threading.Event().wait(0.02)
        proc.kill()
    finally:
        proc.wait()
    assert not out.exists()
    with pytest.raises(manifest_lib.BuildError):
        manifest_lib.load_manifest(str(out))
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]  # left behind
    assert build_quiet(src, out)["splits"]["train"]["num_examples"] == 1800
    # The next build removed the dead build's temporary folder.
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_rerunning_an_identical_build_does_nothing(tmp_path):
    src = tiny_dataset(tmp_path)
    out = tmp_path / "out"
    first = build_quiet(src, out, seed=5)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = build_quiet(src, out, seed=5, workers=2)  # workers do not change the output
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_build_with_other_arguments_into_existing_build_needs_overwrite(tmp_path):
    src = tiny_dataset(tmp_path)
    out = tmp_path / "out"
    first = build_quiet(src, out, storage="jpeg")
    with pytest.raises(manifest_lib.BuildError, match="different arguments.*storage"):
        build_quiet(src, out, storage="raw")
    assert manifest_lib.load_manifest(str(out)) == first
    second = build_quiet(src, out, storage="raw", overwrite=True)
    assert manifest_lib.load_manifest(str(out))["storage"] == "raw" == second["storage"]
    assert no_finished_output(tmp_path / "out") is False  # the build exists ...
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []  # ... alone


def test_unfinished_folder_is_not_replaced_without_overwrite(tmp_path):
    src = tiny_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000-of-00002.tfrecord").write_bytes(b"partial")
    with pytest.raises(manifest_lib.BuildError, match="not a finished build"):
        build_quiet(src, out)
    build_quiet(src, out, overwrite=True)
    manifest_lib.load_manifest(str(out))


# --- Zip read in place, and download ----------------------------------------------------------


def make_zip(root: str, zip_path: str, prefix: str = "tiny-imagenet-200/") -> str:
    """Zips the folder ``root`` as the official zip does (deflated, under ``prefix``)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        if prefix:
            zf.writestr(prefix, b"")  # the directory entry the official zip has
        for dirpath, _, names in sorted(os.walk(root)):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                zf.write(path, prefix + os.path.relpath(path, root).replace(os.sep, "/"))
    return zip_path


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def sample_zip(sample_dir, tmp_path_factory):
    return make_zip(sample_dir, str(tmp_path_factory.mktemp("zip") / "tiny-imagenet-200.zip"))


def shard_shas(manifest) -> dict:
    return {split: [s["sha256"] for s in v["shards"]] for split, v in manifest["splits"].items()}


@pytest.mark.parametrize("prefix", ["", "some/deeper/tiny-imagenet-200/"])
def test_zip_with_or_without_top_folder_reads_back_as_source_rgb(tmp_path, prefix):
    src = tiny_dataset(tmp_path)
    zip_path = make_zip(src, str(tmp_path / "tin.zip"), prefix=prefix)
    out = tmp_path / "out"
    build_quiet(zip_path, out, storage="raw")
    assert_build_equals_source(str(out), src)


class _ZipServer(http.server.BaseHTTPRequestHandler):
    """Serves ``payload`` at any path; honours ``Range: bytes=N-``; can drop a response."""

    payload = b""
    cut_next_at = None  # send only this many body bytes of the next response, then close
    honour_range = True
    requests: list = []

    def do_GET(self):  # noqa: N802
        cls = type(self)
        cls.requests.append(self.headers.get("Range"))
        start = 0
        rng = self.headers.get("Range")
        if rng and cls.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range",
                             f"bytes {start}-{len(cls.payload) - 1}/{len(cls.payload)}")
        else:
            self.send_response(200)
        body = cls.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.cut_next_at is not None:
            body, cls.cut_next_at = body[: cls.cut_next_at], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def zip_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ZipServer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _ZipServer.requests, _ZipServer.cut_next_at, _ZipServer.honour_range = [], None, True
    try:
        yield _ZipServer, f"http://127.0.0.1:{server.server_address[1]}/tiny-imagenet-200.zip"
    finally:
        server.shutdown()
        server.server_close()


@needs_sample
@pytest.mark.slow  # a whole build of the real sample
def test_sample_zip_downloaded_and_read_in_place_builds_the_folders_shards(zip_server,
                                                                           sample_zip,
                                                                           sample_builds,
                                                                           tmp_path):
    """One build of the official zip's layout: downloaded from a URL (the first response
    breaks off, the download resumes), then read in place, never extracted. Its shards are
    byte-identical to the folder's build, whose every image reads back as the source's RGB
    (``test_every_image_reads_back_as_source_rgb[sample-jpeg]``), so this build's do too."""
    handler, url = zip_server
    with open(sample_zip, "rb") as f:
        handler.payload = f.read()
    sha = hashlib.sha256(handler.payload).hexdigest()
    handler.cut_next_at = len(handler.payload) // 3  # the first response breaks off
    out = tmp_path / "from_url"
    manifest = build.build_dataset(url, str(out), sha256=sha, workers=2, progress=False,
                                   storage="jpeg",
                                   download_dir=str(tmp_path / "dl"))
    assert handler.requests == [None, f"bytes={len(handler.payload) // 3}-"]  # resumed
    assert (tmp_path / "dl" / "tiny-imagenet-200.zip").read_bytes() == handler.payload
    assert os.listdir(tmp_path / "dl") == ["tiny-imagenet-200.zip"]  # read in place
    assert sorted(os.listdir(tmp_path)) == ["dl", "from_url"]  # nothing extracted
    assert shard_shas(manifest) == shard_shas(manifest_lib.load_manifest(sample_builds["jpeg"]))
    assert manifest["args"]["src"] == url and manifest["args"]["sha256"] == sha
    assert manifest["source_sha256"] == sha
    assert manifest["splits"]["train"]["num_examples"] == 5000


def test_partial_download_from_an_earlier_run_is_resumed(zip_server, tmp_path):
    handler, url = zip_server
    handler.payload = os.urandom(300_000)
    dl = tmp_path / "dl"
    dl.mkdir()
    (dl / "tiny-imagenet-200.zip.part").write_bytes(handler.payload[:123_456])
    path = download.fetch(url, str(dl), sha256=hashlib.sha256(handler.payload).hexdigest(),
                          progress=False)
    assert handler.requests == ["bytes=123456-"]
    assert open(path, "rb").read() == handler.payload
    assert not (dl / "tiny-imagenet-200.zip.part").exists()


def test_server_ignoring_range_restarts_the_download(zip_server, tmp_path):
    handler, url = zip_server
    handler.payload, handler.honour_range = os.urandom(100_000), False
    (tmp_path / "tiny-imagenet-200.zip.part").write_bytes(b"stale bytes")
    path = download.fetch(url, str(tmp_path), progress=False)
    assert open(path, "rb").read() == handler.payload


def test_download_with_sha256_mismatch_is_refused(zip_server, tmp_path):
    handler, url = zip_server
    src = tiny_dataset(tmp_path)
    handler.payload = open(make_zip(src, str(tmp_path / "tin.zip")), "rb").read()
    out = tmp_path / "out"
    with pytest.raises(download.DownloadError, match="does not match"):
        build_quiet(url, out, sha256="0" * 64, download_dir=str(tmp_path / "dl"))
    assert no_finished_output(out)
    assert os.listdir(tmp_path / "dl") == []  # the bad download is not kept


# --- verify -------------------------------------------------------------------------------------

from tinyimagenet_tfrecords import verify  # noqa: E402


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def _tiny_build_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_build")
    out = root / "out"
    build_quiet(tiny_dataset(root), out, storage="raw")
    return out


@pytest.fixture
def tiny_build(_tiny_build_once, tmp_path):
    """A private copy of one small raw build (3 classes), which the test may damage."""
    out = tmp_path / "out"
    shutil.copytree(_tiny_build_once, out)
    return out


def _edit_manifest(build_dir, edit) -> None:
    path = os.path.join(str(build_dir), "manifest.json")
    with open(path) as f:
        m = json.load(f)
    edit(m)
    with open(path, "w") as f:
        json.dump(m, f)


@needs_sample
@pytest.mark.slow
def test_verify_accepts_the_sample_build(sample_builds):
    assert verify.verify_build(sample_builds["jpeg"]) == {"train": 5000, "val": 500, "test": 100}


def test_verify_names_a_shard_whose_bytes_changed(tiny_build):
    shard = tiny_build / "val-00000-of-00001.tfrecord"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(verify.VerifyError, match="val-00000-of-00001.tfrecord: sha256 differs"):
        verify.verify_build(str(tiny_build))


def test_verify_catches_a_corrupt_record_even_with_a_matching_sha256(tiny_build):
    shard = tiny_build / "train-00001-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside some record's data: its CRC no longer matches
    shard.write_bytes(bytes(data))
    sha = hashlib.sha256(bytes(data)).hexdigest()
    _edit_manifest(tiny_build, lambda m: m["splits"]["train"]["shards"][1].update(sha256=sha))
    with pytest.raises(verify.VerifyError, match="train-00001-of-00002.tfrecord: unreadable"):
        verify.verify_build(str(tiny_build), decode=False)


def test_verify_names_every_bad_shard_with_what_is_wrong(tiny_build, capsys):
    train = tiny_build / "train-00001-of-00002.tfrecord"
    data = bytearray(train.read_bytes())
    data[len(data) // 2] ^= 0x01  # a record's CRC no longer matches
    train.write_bytes(bytes(data))
    val = tiny_build / "val-00000-of-00001.tfrecord"
    val.write_bytes(val.read_bytes()[:-7])  # cut short
    with pytest.raises(verify.VerifyError) as caught:
        verify.verify_build(str(tiny_build), decode=False)
    problems = dict(caught.value.problems)
    assert sorted(problems) == [str(train), str(val)]
    assert "sha256 differs" in problems[str(train)]
    assert re.search(r"unreadable after record \d+: .*corrupted record at \d+",
                     problems[str(train)]), problems[str(train)]
    assert "sha256 differs" in problems[str(val)] and "bytes, " in problems[str(val)]
    # The command: a line per bad shard, then one line that names both.
    assert verify.run(str(tiny_build), decode=False) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"verify: {train}: ") and lines[1].startswith(f"verify: {val}: ")
    assert lines[-1].startswith("verify: error: ") and len(lines) == 3
    assert str(train) in lines[-1] and val.name in lines[-1]


def test_verify_catches_counts_that_differ_from_the_shards(tiny_build):
    w0 = synthetic.synthetic_wnid(0)
    _edit_manifest(tiny_build, lambda m: m["splits"]["train"]["per_class"].update({w0: 5}))
    with pytest.raises(verify.VerifyError, match=f"per_class counts differ.*{w0}"):
        verify.verify_build(str(tiny_build), decode=False)


def test_verify_catches_an_image_size_the_manifest_does_not_list(tiny_build):
    # The readers trust a split's one listed size (they trace only that decoder).
    _edit_manifest(tiny_build, lambda m: m["splits"]["val"].update(image_sizes=[[8, 8]]))
    with pytest.raises(verify.VerifyError,
                       match=r"val-00000-of-00001.tfrecord: record 0 .*16x16 is not among split "
                             r"val's image_sizes \[\(8, 8\)\]"):
        verify.verify_build(str(tiny_build), decode=False)


def test_verify_catches_a_label_that_does_not_match_its_wnid(tiny_build):
    _edit_manifest(tiny_build, lambda m: m["classes"][-1].update(wnid="n99999999"))
    with pytest.raises(verify.VerifyError, match=r"record \d+ .*label 2 does not match wnid"):
        verify.verify_build(str(tiny_build), decode=False)


def test_verify_catches_missing_and_unlisted_shards(tiny_build):
    extra = tiny_build / "train-00002-of-00002.tfrecord"
    extra.write_bytes(b"")
    with pytest.raises(verify.VerifyError, match="shards not in the manifest"):
        verify.verify_build(str(tiny_build), decode=False)
    extra.unlink()
    (tiny_build / "test-00000-of-00001.tfrecord").unlink()
    with pytest.raises(verify.VerifyError, match="test-00000-of-00001.tfrecord: missing shard"):
        verify.verify_build(str(tiny_build), decode=False)


def test_verify_cli_exits_0_on_a_good_build_and_1_naming_the_fault(tiny_build, fresh_flags,
                                                                    monkeypatch, capsys):
    """In-process (TensorFlow's own start-up lines on fd 2 are test_plumbing's one process)."""
    assert _cli(monkeypatch, "tinyimagenet_tfrecords.verify", str(tiny_build)) == 0
    assert "OK (train 12, val 6, test 3 examples" in capsys.readouterr().out
    (tiny_build / "val-00000-of-00001.tfrecord").write_bytes(b"")
    forget_tool_flags(fresh_flags)
    assert _cli(monkeypatch, "tinyimagenet_tfrecords.verify", str(tiny_build)) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, lines
    assert "val-00000-of-00001.tfrecord: sha256 differs" in lines[0]


# --- Options and the synthetic generator -------------------------------------------------------


def test_selected_splits_only_and_shards_capped_at_split_size(tmp_path):
    src = tiny_dataset(tmp_path)
    manifest = build_quiet(src, tmp_path / "out", splits=("val",), shards=10)
    assert list(manifest["splits"]) == ["val"]
    assert [s["file"] for s in manifest["splits"]["val"]["shards"]] == [
        f"val-{i:05d}-of-00006.tfrecord" for i in range(6)]  # 6 val images: 6 shards, not 10
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"val-{i:05d}-of-00006.tfrecord" for i in range(6)] + ["manifest.json"])


def test_synthetic_cli_writes_the_real_layout_with_grayscale_images(tmp_path, fresh_flags,
                                                                     monkeypatch, capsys):
    dest = tmp_path / "synth"
    status = _cli(monkeypatch, "tinyimagenet_tfrecords.synthetic", f"--dest={dest}",
                  "--num_classes=4", "--train_per_class=50", "--num_val=8", "--num_test=5",
                  "--image_size=24", "--workers=1")
    assert status in (0, None), capsys.readouterr().err
    truth = source_truth(str(dest))
    assert {k: len(v) for k, v in truth.items()} == {"train": 200, "val": 8, "test": 5}
    modes = [Image.open(t["path"]).mode for t in truth["train"].values()]
    assert 0 < modes.count("L") < 20 and modes.count("RGB") + modes.count("L") == 200
    assert {Image.open(t["path"]).size for t in truth["val"].values()} == {(24, 24)}


# --- Copies people actually have: classes without box files --------------------------------


def test_class_without_box_file_builds_with_absent_boxes_listed_and_named_once(tmp_path,
                                                                               capsys):
    src = tiny_dataset(tmp_path, num_classes=4)
    w1, w3 = synthetic.synthetic_wnid(1), synthetic.synthetic_wnid(3)
    for w in (w1, w3):
        os.remove(os.path.join(src, "train", w, f"{w}_boxes.txt"))
    out = tmp_path / "out"
    manifest = build_quiet(src, out)
    assert manifest["classes_without_boxes"] == [w1, w3]
    assert manifest["num_classes"] == 4
    assert_build_equals_source(str(out), src)  # boxes of w1/w3 are (-1, -1, -1, -1)
    boxes = {e["wnid"]: e["bbox"] for e in read_split(str(out), "train")}
    assert boxes[w1] == boxes[w3] == features.NO_BBOX and boxes[synthetic.synthetic_wnid(0)] != \
        features.NO_BBOX
    err = capsys.readouterr().err
    assert err.count("no bounding-box file") == 1 and w1 in err and w3 in err


# --- Damaged zips -------------------------------------------------------------------------------


def _corrupt_member(zip_path: str, member_suffix: str) -> str:
    """Flips one byte of a stored member's data (its CRC no longer matches); returns its name."""
    with zipfile.ZipFile(zip_path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    with open(zip_path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        f.seek(info.header_offset + 30 + int(name_len) + int(extra_len) + info.compress_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    return info.filename


def _stored_zip(src, path) -> str:
    """A zip of ``src`` with stored (uncompressed) members: a flipped byte is a CRC error."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for dirpath, _, names in sorted(os.walk(src)):
            for name in sorted(names):
                full = os.path.join(dirpath, name)
                zf.write(full, "tiny-imagenet-200/" + os.path.relpath(full, src))
    return path


def test_zip_member_with_bad_crc_ends_in_one_line_naming_it_and_skip_corrupt_skips_it(
        tmp_path, fresh_flags, monkeypatch, capsys):
    src = tiny_dataset(tmp_path, train_per_class=6)
    w1 = synthetic.synthetic_wnid(1)
    zip_path = _stored_zip(src, str(tmp_path / "tin.zip"))
    member = _corrupt_member(zip_path, f"{w1}_2.JPEG")
    out = tmp_path / "out"
    status = _cli(monkeypatch, "tinyimagenet_tfrecords.build", f"--src={zip_path}",
                  f"--out={out}", "--workers=2", "--train_shards=2", "--noprogress")
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert member in lines[0] and "corrupt zip member" in lines[0]
    assert no_finished_output(out)
    manifest = build_quiet(zip_path, out, skip_corrupt=True, workers=2)
    assert [s["file"] for s in manifest["skipped"]] == [f"train/{w1}/images/{w1}_2.JPEG"]
    assert manifest["splits"]["train"]["per_class"][w1] == 5


def test_truncated_zip_says_corrupt_or_incomplete(tmp_path):
    src = tiny_dataset(tmp_path)
    zip_path = make_zip(src, str(tmp_path / "tin.zip"))
    data = open(zip_path, "rb").read()
    with open(zip_path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    with pytest.raises(source.SourceError, match="tin.zip: corrupt or incomplete zip"):
        build_quiet(zip_path, tmp_path / "out")


# --- File-system errors, permissions ------------------------------------------------------------


def test_no_space_left_names_the_shard_the_size_needed_and_jpeg_storage(tmp_path, monkeypatch):
    src = tiny_dataset(tmp_path)

    def full(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build._ShardWriter, "write", full)
    out = tmp_path / "out"
    with pytest.raises(build.WriteError) as info:
        build_quiet(src, out, storage="raw")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert ".tfrecord: cannot write the build (No space left on device)" in message
    assert "needs about" in message and "--storage jpeg needs about" in message
    assert build.exit_status(info.value) == 1
    assert no_finished_output(out)


def test_read_only_output_folder_names_the_path(tmp_path, monkeypatch):
    src = tiny_dataset(tmp_path)
    parent = tmp_path / "ro"

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(build.tempfile, "mkdtemp", read_only)
    with pytest.raises(build.WriteError, match=rf"{parent}: cannot write the build "
                                               r"\(Read-only file system\)"):
        build_quiet(src, parent / "out")


def test_build_folder_and_files_follow_the_umask(tmp_path):
    src = tiny_dataset(tmp_path)
    old = os.umask(0o022)
    try:
        build_quiet(src, tmp_path / "out")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


# --- Cheap checks for training: shard sizes, the corrupt shard ----------------------------------


def test_check_shards_names_a_missing_or_short_shard_and_old_builds_check_existence(tiny_build):
    m = manifest_lib.load_manifest(str(tiny_build))
    shard = tiny_build / "train-00001-of-00002.tfrecord"
    assert m["splits"]["train"]["shards"][1]["bytes"] == shard.stat().st_size
    manifest_lib.check_shards(str(tiny_build), m, ["train", "val"])
    data = shard.read_bytes()
    shard.write_bytes(data[:-7])
    with pytest.raises(manifest_lib.BuildError,
                       match=rf"{shard}: {len(data) - 7} bytes, .*says {len(data)}"):
        manifest_lib.check_shards(str(tiny_build), m, ["train"])
    for s in m["splits"]["train"]["shards"]:
        del s["bytes"]  # a build made before sizes were recorded: existence only
    manifest_lib.check_shards(str(tiny_build), m, ["train"])
    shard.unlink()
    with pytest.raises(manifest_lib.BuildError, match=rf"{shard}: missing shard"):
        manifest_lib.check_shards(str(tiny_build), m, ["train"])
    with pytest.raises(manifest_lib.BuildError, match="split 'test2' not built"):
        manifest_lib.check_shards(str(tiny_build), m, ["test2"])


def test_find_corrupt_shards_names_the_shard_behind_a_data_loss_error(tiny_build):
    assert verify.find_corrupt_shards(str(tiny_build), "train") == []
    shard = tiny_build / "train-00001-of-00002.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    m = manifest_lib.load_manifest(str(tiny_build))
    with pytest.raises(tf.errors.DataLossError):  # what training sees: no file named
        for _ in tf.data.TFRecordDataset(manifest_lib.shard_paths(str(tiny_build), m, "train")):
            pass
    found = verify.find_corrupt_shards(str(tiny_build), "train")
    assert [p for p, _ in found] == [str(shard)]
    assert "corrupted record" in found[0][1]


# --- One decoder for verify and the pipeline ----------------------------------------------------


def test_verify_and_the_pipeline_decode_with_the_same_function(tmp_path, monkeypatch):
    from tinyimagenet_tfrecords import pipeline
    assert pipeline.decode_image is features.decode_image
    src = tiny_dataset(tmp_path)
    w0 = synthetic.synthetic_wnid(0)
    _replace_image(src, f"train/{w0}/images/{w0}_0.JPEG",
                   lambda a: _encoded(Image.fromarray(a).convert("P"), "PNG"))
    out = tmp_path / "out"
    build_quiet(src, out, storage="jpeg")
    calls = []
    real = features.decode_image

    def spy(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "decode_image", spy)
    verify.verify_build(str(out))
    assert calls and set(calls) == {"jpeg"}  # traced per shard, with the build's storage
    # Pixel for pixel, what verify decoded is what the pipeline yields.
    verified = {e["filename"]: e["pixels"] for e in read_split(str(out), "train")}
    monkeypatch.setattr(features, "decode_image", real)
    x, _ = next(iter(pipeline.eval_dataset(manifest_lib.open_build(str(out)), "train",
                                           batch_size=100, image_size=16)))
    got = sorted(a.tobytes() for a in x.numpy())
    assert got == sorted(a.tobytes() for a in verified.values())


# --- Builds on tf.io.gfile storage -------------------------------------------------------------


def test_build_to_a_gfile_url_verifies_and_reads_in_the_pipeline(tmp_path):
    from tinyimagenet_tfrecords import pipeline
    src = tiny_dataset(tmp_path)
    url = f"ram://{tmp_path.name}/build"
    manifest = build_quiet(src, url, storage="raw", download_dir=str(tmp_path))
    assert manifest_lib.load_manifest(url) == manifest
    assert verify.verify_build(url) == {"train": 12, "val": 6, "test": 3}
    manifest_lib.check_shards(url, manifest, ["train", "val", "test"])
    x, _ = next(iter(pipeline.eval_dataset(manifest_lib.open_build(url), "val", batch_size=6,
                                           image_size=16)))
    assert x.shape == (6, 16, 16, 3)
    assert verify.run(url) == 0
    assert build_quiet(src, url, storage="raw", download_dir=str(tmp_path)) == manifest  # again
    assert os.listdir(tmp_path) == [os.path.basename(src)]  # the local copy is gone


def test_interrupted_copy_to_a_url_leaves_no_manifest_and_no_shards(tmp_path, monkeypatch):
    src = tiny_dataset(tmp_path)
    url = f"ram://{tmp_path.name}/build"
    real_copy = tf.io.gfile.copy
    copies = []

    def flaky(a, b, overwrite=False):
        copies.append(b)
        if len(copies) == 3:
            raise tf.errors.UnavailableError(None, None, "connection reset")
        return real_copy(a, b, overwrite=overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", flaky)
    with pytest.raises(build.WriteError, match=rf"{url}: cannot copy the build there"):
        build_quiet(src, url, download_dir=str(tmp_path))
    assert not tf.io.gfile.exists(manifest_lib.manifest_path(url))
    assert [n for n in tf.io.gfile.listdir(url) if n.endswith(".tfrecord")] == []
    with pytest.raises(manifest_lib.BuildError, match="not a finished build"):
        manifest_lib.load_manifest(url)


@pytest.mark.subprocess
def test_converter_modules_never_import_tensorflow():
    code = ("import sys; import tinyimagenet_tfrecords.build, tinyimagenet_tfrecords.source, "
            "tinyimagenet_tfrecords.features, tinyimagenet_tfrecords.manifest, "
            "tinyimagenet_tfrecords.sample, tinyimagenet_tfrecords.synthetic; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --- Command lines: --help lists the flags, exit 2 for bad input -------------------------------



def _cli(monkeypatch, module, *args):
    """``python -m <module> <args>`` in-process (needs ``fresh_flags``); its exit status."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    return _run_tool([module])


def _run_tool(argv, *, path=None):
    """Runs a command in-process as ``python -m <tool>`` (or ``python <path>``) would, on a
    fresh flag registry (the ``fresh_flags`` fixture); returns its exit status."""
    with pytest.raises(SystemExit) as done:
        if path:
            runpy.run_path(path, run_name="__main__")
        else:
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    return done.value.code


@pytest.mark.parametrize("module, flags_expected", [
    ("tinyimagenet_tfrecords.build", ["--src", "--out", "--storage", "--[no]skip_corrupt"]),
    ("tinyimagenet_tfrecords.verify", ["--[no]decode"]),
])
@pytest.mark.parametrize("how", ["console_script", "module"])
def test_console_script_help_lists_the_flags(fresh_flags, monkeypatch, capsys, tmp_path, module,
                                             flags_expected, how):
    # What pip writes for a console_scripts entry point (tin-build, tin-verify).
    wrapper = tmp_path / ("tin-" + module.rsplit(".", 1)[1])
    wrapper.write_text(f"import re, sys\nfrom {module} import cli\n"
                       "if __name__ == '__main__':\n"
                       "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                       "    sys.exit(cli())\n")
    if how == "console_script":
        monkeypatch.setattr(sys, "argv", [str(wrapper), "--help"])
        status = _run_tool(None, path=str(wrapper))
    else:
        monkeypatch.setattr(sys, "argv", [module, "--help"])
        status = _run_tool([module])
    out = capsys.readouterr().out
    assert status == 0, out[-2000:]
    for flag in flags_expected:
        assert flag in out, (how, out)


@pytest.mark.parametrize("args, expected", [
    (["tinyimagenet_tfrecords.build", "--out=x"], "--src"),
    (["tinyimagenet_tfrecords.build", "--src=/no/such/src", "--out=x"], "/no/such/src"),
    (["tinyimagenet_tfrecords.verify", "/no/such/build"], "/no/such/build"),
    (["tinyimagenet_tfrecords.verify"], "usage"),
    (["tinyimagenet_tfrecords.synthetic", "--dest=x", "--num_classes=0"], "num_classes"),
    (["tinyimagenet_tfrecords.sample", "--src=/no/such/zip", "--out=x"], "/no/such/zip"),
    (["benchmarks.build", "--storage=png"], "png"),
])
def test_each_tool_exits_2_with_one_line_on_bad_input(fresh_flags, monkeypatch, capsys, tmp_path,
                                                       args, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(args))
    status = _run_tool(args)  # an exception escaping instead of SystemExit fails here
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert status == 2, err
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err
    assert not (tmp_path / "x").exists()


# --- A real sample from the official zip --------------------------------------------------------


def test_sample_command_extracts_classes_val_and_test_from_a_zip(tmp_path, fresh_flags,
                                                                  monkeypatch, capsys):
    from tinyimagenet_tfrecords import sample
    src = tiny_dataset(tmp_path, num_classes=5, train_per_class=3, num_val=10, num_test=6)
    zip_path = make_zip(src, str(tmp_path / "tiny-imagenet-200.zip"))
    out = tmp_path / "sample"
    monkeypatch.chdir(tmp_path)
    status = _cli(monkeypatch, "tinyimagenet_tfrecords.sample", f"--src={zip_path}",
                  f"--out={out}", "--classes=2", "--test_images=4")
    assert status in (0, None), capsys.readouterr().err
    wnids = [synthetic.synthetic_wnid(i) for i in range(2)]
    truth = source_truth(str(out))
    assert {k: len(v) for k, v in truth.items()} == {"train": 6, "val": 4, "test": 4}
    assert {t["wnid"] for t in truth["val"].values()} == set(wnids)
    full = source_truth(src)
    for split in ("train", "val"):
        for name, t in truth[split].items():
            assert t["bbox"] == full[split][name]["bbox"]
            assert open(t["path"], "rb").read() == open(full[split][name]["path"], "rb").read()
    assert open(out / "wnids.txt").read().split() == wnids
    assert [l.split("\t")[0] for l in open(out / "words.txt").read().splitlines()] == wnids
    manifest = build_quiet(str(out), tmp_path / "out")
    assert manifest["num_classes"] == 2
    with pytest.raises(sample.SampleError, match="exists"):
        sample.extract_sample(zip_path, str(out))


def test_a_split_of_several_image_sizes_lists_each_and_reads_through_the_general_decoder(
        tmp_path):
    src = tiny_dataset(tmp_path)
    first = sorted(glob.glob(os.path.join(src, "val", "images", "*")))[0]
    Image.fromarray(np.full((10, 20, 3), 200, np.uint8)).save(first, format="JPEG")
    out = tmp_path / "out"
    m = build_quiet(src, out)
    assert m["splits"]["val"]["image_sizes"] == [[10, 20], [16, 16]]  # [height, width]
    assert m["splits"]["train"]["image_sizes"] == [[16, 16]]
    verify.verify_build(str(out))
    opened = manifest_lib.open_build(str(out))
    assert opened.split("val").uniform_size is None
    assert opened.split("train").uniform_size == (16, 16)
    images = np.concatenate([x.numpy() for x, _ in pipeline.eval_dataset(
        opened, "val", batch_size=4, image_size=16)])
    assert images.shape == (6, 16, 16, 3)
