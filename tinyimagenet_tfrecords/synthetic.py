"""Generates a synthetic dataset in the real Tiny ImageNet folder layout.

For benchmarks and tests that need the full size (200 classes x 500 train, 10,000 val,
10,000 test) or odd cases without the real data: smooth random images (a few random
low-resolution colour fields upsampled bicubically, plus mild noise and a class tint, so the
JPEGs compress like natural 64x64 photos: ~2 KB each) and about 1.4% grayscale JPEGs, as in
the real data. Deterministic for a seed.

    python -m tinyimagenet_tfrecords.synthetic --dest /tmp/tin-synth
    python -m tinyimagenet_tfrecords.synthetic --dest /tmp/tiny --num_classes 5 \\
        --train_per_class 20 --num_val 30 --num_test 10
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys

import numpy as np
from PIL import Image

from plumbing import cli as cli_lib

GRAYSCALE_FRACTION = 0.014  # the real train set has 68 of 5,000 in the sample


def synthetic_wnid(index: int) -> str:
    return f"n{90000000 + index:08d}"


def synthetic_image(seed, image_size: int = 64, tint=None, grayscale: bool = False) -> bytes:
    """One smooth random JPEG (quality 75, PIL's default as in the real data's encoder)."""
    rng = np.random.default_rng(seed)
    low = int(rng.integers(3, 9))
    field = rng.uniform(0, 255, size=(low, low, 3))
    if tint is not None:
        field = 0.6 * field + 0.4 * np.asarray(tint, dtype=np.float64)
    small = Image.fromarray(field.astype(np.uint8), "RGB")
    big = np.asarray(small.resize((image_size, image_size), Image.BICUBIC), dtype=np.float32)
    big = big + rng.normal(0, 6, size=big.shape)
    image = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8), "RGB")
    if grayscale:
        image = image.convert("L")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=75)
    return out.getvalue()


def _write_images(jobs) -> None:
    """Worker: ``jobs`` is a list of ``(path, seed, image_size, tint, grayscale)``."""
    for path, seed, size, tint, gray in jobs:
        with open(path, "wb") as f:
            f.write(synthetic_image(seed, size, tint, gray))


def _box(rng, size: int) -> tuple[int, int, int, int]:
    x0, y0 = (int(v) for v in rng.integers(0, size // 2, size=2))
    x1, y1 = (int(v) for v in rng.integers(size // 2, size, size=2))
    return x0, y0, x1, y1


def make_synthetic_dataset(dest: str, num_classes: int = 200, train_per_class: int = 500,
                           num_val: int = 10000, num_test: int = 10000, image_size: int = 64,
                           seed: int = 0, workers=None) -> str:
    """Writes the Tiny ImageNet layout into ``dest`` (created) and returns its absolute path.

    ``dest`` becomes the dataset root (holding ``wnids.txt``). Val images are spread evenly
    over the classes; every ``1/GRAYSCALE_FRACTION``-th image (seeded) is grayscale.
    ``workers`` processes encode the JPEGs (default: CPU count; 1 = in-process).
    """
    dest = os.path.abspath(dest)
    rng = np.random.default_rng(seed)
    wnids = [synthetic_wnid(i) for i in range(num_classes)]
    tints = rng.uniform(0, 255, size=(num_classes, 3))
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, "wnids.txt"), "w") as f:
        f.write("".join(w + "\n" for w in wnids))
    with open(os.path.join(dest, "words.txt"), "w") as f:
        f.write("".join(f"{w}\tsynthetic class {i}\n" for i, w in enumerate(wnids)))

    jobs = []

    def add(path, split_id, index, class_index):
        gray = bool(rng.random() < GRAYSCALE_FRACTION)
        tint = tints[class_index].tolist() if class_index is not None else None
        jobs.append((path, [seed, split_id, index], image_size, tint, gray))

    for c, wnid in enumerate(wnids):
        images = os.path.join(dest, "train", wnid, "images")
        os.makedirs(images, exist_ok=True)
        lines = []
        for i in range(train_per_class):
            name = f"{wnid}_{i}.JPEG"
            add(os.path.join(images, name), 0, c * train_per_class + i, c)
            lines.append(f"{name}\t" + "\t".join(map(str, _box(rng, image_size))) + "\n")
        with open(os.path.join(dest, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("".join(lines))
    os.makedirs(os.path.join(dest, "val", "images"), exist_ok=True)
    lines = []
    for i in range(num_val):
        c = i % num_classes
        name = f"val_{i}.JPEG"
        add(os.path.join(dest, "val", "images", name), 1, i, c)
        lines.append(f"{name}\t{wnids[c]}\t" + "\t".join(map(str, _box(rng, image_size))) + "\n")
    with open(os.path.join(dest, "val", "val_annotations.txt"), "w") as f:
        f.write("".join(lines))
    os.makedirs(os.path.join(dest, "test", "images"), exist_ok=True)
    for i in range(num_test):
        add(os.path.join(dest, "test", "images", f"test_{i}.JPEG"), 2, i, None)

    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(jobs) < 2000:
        _write_images(jobs)
    else:
        chunks = [jobs[i:i + 1000] for i in range(0, len(jobs), 1000)]
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(_write_images, chunks)
    return dest


def main(argv) -> int:
    """Maps the flags to :func:`make_synthetic_dataset`; one line on stderr on error."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    fv = flags.FLAGS
    if len(argv) > 1:
        print(f"synthetic: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    try:
        path = make_synthetic_dataset(fv.dest, num_classes=fv.num_classes,
                                      train_per_class=fv.train_per_class, num_val=fv.num_val,
                                      num_test=fv.num_test, image_size=fv.image_size,
                                      seed=fv.seed, workers=fv.workers)
    except OSError as e:
        print(f"synthetic: error: {e.filename or fv.dest}: {e.strerror or e}", file=sys.stderr)
        return cli_lib.EXIT_FAILURE
    print(path)
    return cli_lib.EXIT_OK


def _define_flags() -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("dest", None, "Folder to create (the dataset root).")
    flags.DEFINE_integer("num_classes", 200, "Classes.", lower_bound=1)
    flags.DEFINE_integer("train_per_class", 500, "Train images per class.", lower_bound=1)
    flags.DEFINE_integer("num_val", 10000, "Val images.", lower_bound=0)
    flags.DEFINE_integer("num_test", 10000, "Test images.", lower_bound=0)
    flags.DEFINE_integer("image_size", 64, "Image side in pixels.", lower_bound=8)
    flags.DEFINE_integer("seed", 0, "Seed.")
    flags.DEFINE_integer("workers", None, "Encoding processes (default: CPU count).",
                         lower_bound=1)
    flags.mark_flag_as_required("dest")


if __name__ == "__main__":
    _define_flags()
    cli_lib.run(main, __name__)
