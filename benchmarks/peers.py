"""Our input pipeline against what a user would pick instead, one peer per process, in one run.

    python -m benchmarks.peers --src ../shared/data/tiny-imagenet-sample \\
        --peer_python /work/venv-19/bin/python [--batch 256 --batches 20 --recipe student_net2]

Peers, each run in its own process one after another on the same JPEG files (the ``train``
images of ``--src``, in one fixed order, batches of ``--batch`` at 64 px):

- ``ours_raw`` / ``ours_jpeg``: ``tinyimagenet_tfrecords.pipeline.training_stream`` (training,
  the recipe XLA-compiled inside tf.data) on a raw and a jpeg build of those files;
- ``keras``: Keras 3 preprocessing layers on a tf.data pipeline that decodes the JPEGs;
- ``albumentations``: OpenCV loading and ``albumentations.Compose`` per image in a
  ``--workers`` process pool (what a PyTorch DataLoader does);
- ``torchvision``: ``torchvision.transforms.v2`` in a ``torch.utils.data.DataLoader`` with
  ``--workers`` workers.

Each reports images/s (wall clock) and CPU-us per image: user + system time of the process
and all its live descendants (``/proc``) over the timed batches, the stable figure on a
shared machine. A peer whose library is missing is skipped with a note; every peer's
deviations from the recipe are printed. The peers with other libraries run under
``--peer_python`` (a venv with albumentations, opencv-python-headless, torch, torchvision;
never this project's). Never part of CI. This file imports only the standard library at the
top, so the peers' interpreters can run it without TensorFlow.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

PEERS = ("ours_raw", "ours_jpeg", "keras", "albumentations", "torchvision")
TF_PEERS = ("ours_raw", "ours_jpeg", "keras")

# What each peer does instead of student_net2 (Sometimes(0.5, Sequential(random order, 8 ops))).
DEVIATIONS = {
    "ours_raw": ["none: the recipe itself (augment.get_recipe)"],
    "ours_jpeg": ["none: the recipe itself (augment.get_recipe)"],
    "keras": [
        "no Sometimes(0.5): every image is augmented; layers run in a fixed order",
        "RandomFlip('horizontal_and_vertical'): each flip at p=0.5 (Flipud is 0.2)",
        "no GaussianBlur, CropAndPad, CoarseDropout, shear or per-image nearest/bilinear",
        "RandomRotation(30 deg) + RandomZoom(0.2) + RandomTranslation(0.15): three resamples, "
        "one per layer, fill constant 0 (recipe: one Affine, random fill colour)",
        "RandomContrast(0.5): factor around the image mean (recipe: pivot 127, 0.75..1.5)",
        "RandomBrightness(0.1) for Multiply((0.9, 1.1)) (additive, not multiplicative)",
    ],
    "albumentations": [
        "Sometimes(0.5) as Compose(p=0.5) over RandomOrder (one order per image, not per batch)",
        "GaussianBlur(sigma_limit=(0, 0.5)), kernel from albumentations' own rule",
        "CropAndPad fill: one grey drawn once per worker process (fill is fixed at "
        "construction)",
        "Affine: interpolation linear for all (recipe: nearest or linear per image), fill a "
        "random colour drawn at construction",
        "CoarseDropout: 1..8 holes of 2..5 % (recipe: a 3x3 cell grid with p 0.03..0.15)",
        "Multiply: MultiplicativeNoise((0.9, 1.1), per_channel) on every image "
        "(recipe: per channel for 25 %)",
        "ContrastNormalization: RandomBrightnessContrast(contrast (-0.25, 0.5), no brightness)",
    ],
    "torchvision": [
        "Sometimes(0.5) as RandomApply(p=0.5) over RandomOrder (one order per image)",
        "RandomVerticalFlip(0.2), RandomHorizontalFlip(0.5) as the recipe",
        "GaussianBlur(kernel 5, sigma 0.01..0.5) (sigma 0 not allowed)",
        "no CropAndPad (RandomResizedCrop is not the same); RandomAffine(30, translate 0.15, "
        "scale 0.8..1.2 one factor for both axes, shear 15, bilinear, fill 0)",
        "RandomErasing for CoarseDropout (one rectangle)",
        "ColorJitter(brightness 0.1, contrast (0.75, 1.5)) for Multiply + contrast",
    ],
}


# ------------------------------------------------------------------------------ timing ---

def tree_cpu_seconds(pid: int | None = None) -> float:
    """user + system seconds of ``pid`` (this process) and all its live descendants."""
    pid = os.getpid() if pid is None else pid
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def time_batches(batches, *, count: int, warmup: int, batch: int) -> dict:
    """images/s and CPU-us per image over ``count`` batches after ``warmup`` batches."""
    for _ in range(warmup):
        next(batches)
    cpu0, t0 = tree_cpu_seconds(), time.perf_counter()
    for _ in range(count):
        next(batches)
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    images = count * batch
    return {"images_per_s": images / wall, "cpu_us_per_image": 1e6 * cpu / images,
            "images": images, "seconds": wall}


def jpeg_files(src: str) -> list:
    """The train JPEGs of a Tiny ImageNet folder, sorted (every peer reads this list)."""
    return sorted(glob.glob(os.path.join(src, "train", "*", "images", "*.JPEG")))


def cycled_batches(files: list, batch: int):
    """Lists of ``batch`` paths, cycling through ``files`` in order forever."""
    i = 0
    while True:
        yield [files[(i + k) % len(files)] for k in range(batch)]
        i += batch


# ------------------------------------------------------------------------------- peers ---

def ours_batches(data: str, batch: int, recipe_name: str):
    import augment  # pylint: disable=import-outside-toplevel
    from tinyimagenet_tfrecords import manifest  # pylint: disable=import-outside-toplevel
    from tinyimagenet_tfrecords import pipeline  # pylint: disable=import-outside-toplevel
    recipe = None if recipe_name == "none" else augment.get_recipe(recipe_name)
    ds = pipeline.training_stream(manifest.open_build(data), batch_size=batch, image_size=64,
                                  seed=0, augment=recipe)
    return (b[0] for b in iter(ds))


def keras_batches(files: list, batch: int, recipe_name: str):
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    layers = keras.Sequential([
        keras.layers.RandomFlip("horizontal_and_vertical"),
        keras.layers.RandomRotation(30 / 360), keras.layers.RandomZoom(0.2),
        keras.layers.RandomTranslation(0.15, 0.15), keras.layers.RandomContrast(0.5),
        keras.layers.RandomBrightness(0.1, value_range=(0, 255))])

    def load(path):
        return tf.image.decode_jpeg(tf.io.read_file(path), channels=3)

    ds = tf.data.Dataset.from_tensor_slices(files).repeat().map(load, tf.data.AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True)
    if recipe_name != "none":
        ds = ds.map(lambda x: tf.cast(layers(tf.cast(x, tf.float32), training=True), tf.uint8),
                    tf.data.AUTOTUNE)
    return (b for b in iter(ds.prefetch(tf.data.AUTOTUNE)))


def albumentations_transform(seed: int = 0):
    import albumentations as A  # pylint: disable=import-outside-toplevel
    import cv2  # pylint: disable=import-outside-toplevel
    import random  # pylint: disable=import-outside-toplevel
    rng = random.Random(seed)
    return A.Compose([A.RandomOrder([
        A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.2),
        A.GaussianBlur(sigma_limit=(0.0, 0.5), p=1.0),
        A.CropAndPad(percent=(-0.25, 0.25), border_mode=cv2.BORDER_CONSTANT,
                     fill=rng.randint(0, 255), p=1.0),
        A.Affine(scale={"x": (0.8, 1.2), "y": (0.8, 1.2)},
                 translate_percent={"x": (-0.15, 0.15), "y": (-0.15, 0.15)},
                 rotate=(-30, 30), shear=(-15, 15), border_mode=cv2.BORDER_CONSTANT,
                 fill=tuple(rng.randint(0, 255) for _ in range(3)), p=1.0),
        A.CoarseDropout(num_holes_range=(1, 8), hole_height_range=(0.02, 0.05),
                        hole_width_range=(0.02, 0.05), p=1.0),
        A.MultiplicativeNoise(multiplier=(0.9, 1.1), per_channel=True, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=(-0.25, 0.5), p=1.0),
    ], n=8, p=1.0)], p=0.5, seed=seed)


_ALBU = None


def _albu_batch(paths: list, augment: bool):
    import cv2  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    global _ALBU
    if augment and _ALBU is None:
        _ALBU = albumentations_transform(os.getpid())
    out = []
    for path in paths:
        img = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        out.append(_ALBU(image=img)["image"] if augment else img)
    return np.stack(out)


def albumentations_batches(files: list, batch: int, recipe_name: str, workers: int):
    import multiprocessing  # pylint: disable=import-outside-toplevel
    import functools  # pylint: disable=import-outside-toplevel
    import albumentations  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
    pool = multiprocessing.get_context("fork").Pool(workers)
    fn = functools.partial(_albu_batch, augment=recipe_name != "none")
    return pool.imap(fn, cycled_batches(files, batch), chunksize=1)


def torchvision_batches(files: list, batch: int, recipe_name: str, workers: int):
    import torch  # pylint: disable=import-outside-toplevel
    from torchvision.io import decode_jpeg, read_file  # pylint: disable=import-outside-toplevel
    from torchvision.transforms import v2  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(1)
    aug = v2.RandomApply([v2.RandomOrder([
        v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.2),
        v2.GaussianBlur(5, sigma=(0.01, 0.5)),
        v2.RandomAffine(30, translate=(0.15, 0.15), scale=(0.8, 1.2), shear=15),
        v2.RandomErasing(p=1.0, scale=(0.0004, 0.0025)),
        v2.ColorJitter(brightness=0.1, contrast=(0.75, 1.5))])], p=0.5)

    class Files(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            start, step = (0, 1) if info is None else (info.id, info.num_workers)
            i = start
            while True:
                img = decode_jpeg(read_file(files[i % len(files)]),
                                  mode=__import__("torchvision").io.ImageReadMode.RGB)
                yield aug(img) if recipe_name != "none" else img
                i += step

    loader = torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=workers,
                                         persistent_workers=workers > 0)
    return iter(loader)


def run_peer(args) -> dict:
    """One peer's batches timed in this process: the worker side of :func:`main`."""
    files = jpeg_files(args.src)
    kind = args.worker
    if kind in ("ours_raw", "ours_jpeg"):
        batches = ours_batches(args.data, args.batch, args.recipe)
    elif kind == "keras":
        batches = keras_batches(files, args.batch, args.recipe)
    elif kind == "albumentations":
        batches = albumentations_batches(files, args.batch, args.recipe, args.workers)
    else:
        batches = torchvision_batches(files, args.batch, args.recipe, args.workers)
    return time_batches(iter(batches), count=args.batches, warmup=args.warmup,
                        batch=args.batch)


# -------------------------------------------------------------------------- coordinator ---

def build_both(src: str, work: str) -> dict:
    """Raw and jpeg TFRecord builds of ``src``'s train split under ``work``."""
    from tinyimagenet_tfrecords import build  # pylint: disable=import-outside-toplevel
    out = {}
    for storage in ("raw", "jpeg"):
        out[storage] = os.path.join(work, storage)
        build.build_dataset(src, out[storage], splits=("train",), storage=storage, seed=0,
                            progress=False)
    return out


def peer_command(peer: str, args, data: str | None) -> list:
    python = sys.executable if peer in TF_PEERS else (args.peer_python or sys.executable)
    cmd = [python, os.path.abspath(__file__), "--worker", peer, "--src", args.src,
           "--batch", str(args.batch), "--batches", str(args.batches), "--warmup",
           str(args.warmup), "--recipe", args.recipe, "--workers", str(args.workers)]
    return cmd + (["--data", data] if data else [])


def run_all(args, log=print) -> dict:
    """Every requested peer, one process each, one after another; figures and notes."""
    results, notes = {}, []
    with tempfile.TemporaryDirectory(prefix="peers-") as work:
        builds = {}
        if any(p.startswith("ours") for p in args.peers):
            log("building raw and jpeg TFRecords ...")
            builds = build_both(args.src, work)
        for peer in args.peers:
            data = builds.get(peer[len("ours_"):]) if peer.startswith("ours") else None
            log(f"  measuring {peer} ...")
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
                [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
            proc = subprocess.run(peer_command(peer, args, data), capture_output=True,
                                  text=True, env=env, check=False)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode == 3:
                notes.append(f"{peer} skipped: {proc.stderr.strip().splitlines()[-1]}")
            elif proc.returncode != 0 or not lines:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                notes.append(f"{peer} failed (exit {proc.returncode}): {tail}")
            else:
                results[peer] = json.loads(lines[-1])
            log(f"    {peer}: {results.get(peer) or notes[-1]}")
    return {"results": results, "notes": notes}


def format_table(figures: dict) -> str:
    rows = ["| peer | images/s | CPU-us per image |", "|---|---:|---:|"]
    for peer, r in figures["results"].items():
        rows.append(f"| {peer} | {r['images_per_s']:.0f} | {r['cpu_us_per_image']:.0f} |")
    return "\n".join(rows)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split(
        "\n")[0])
    p.add_argument("--src", required=True, help="a Tiny ImageNet folder (with train/)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated, of " + ",".join(
        PEERS))
    p.add_argument("--peer_python", default=None,
                   help="interpreter with albumentations / torchvision (default: this one)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=20, help="timed batches per peer")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--workers", type=int, default=2, help="worker processes (DataLoader/pool)")
    p.add_argument("--recipe", default="student_net2", choices=("student_net2", "none"))
    p.add_argument("--worker", default=None, choices=PEERS, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.peers = [x for x in args.peers.split(",") if x]
    bad = [x for x in args.peers if x not in PEERS]
    if bad:
        p.error(f"--peers: unknown {bad}; known: {', '.join(PEERS)}")
    if not os.path.isdir(os.path.join(args.src, "train")):
        p.error(f"--src: {args.src!r} has no train/ folder")
    if min(args.batch, args.batches, args.workers + 1) < 1 or args.warmup < 0:
        p.error("--batch, --batches must be >= 1, --workers and --warmup >= 0")
    return args


def main(argv=None) -> int:
    """Coordinator (default) or one peer (``--worker``).

    Exit status: 0 done (skipped peers are notes), 2 bad usage, 1 when every peer failed,
    130 interrupted; a worker exits 3 when its library is not installed.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        try:
            figures = run_peer(args)
        except ImportError as e:
            print(f"library not installed ({e})", file=sys.stderr)
            return 3
        print(json.dumps(figures))
        return 0
    print(f"machine: {os.uname().nodename}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}"
          f"; recipe {args.recipe}, batch {args.batch}, {args.batches} timed batches")
    try:
        figures = run_all(args)
    except KeyboardInterrupt:
        return 130
    print(format_table(figures))
    for note in figures["notes"]:
        print(f"note: {note}")
    for peer in figures["results"]:
        print(f"deviations of {peer} from {args.recipe}:")
        for line in DEVIATIONS[peer]:
            print(f"  - {line}")
    print(json.dumps({"benchmark": "peers", "recipe": args.recipe, "batch": args.batch,
                      "cpus": os.cpu_count(), **figures}))
    failed = [n for n in figures["notes"] if " failed " in n]
    return 1 if failed and not figures["results"] else 0


if __name__ == "__main__":
    # Run as a script, this file's folder comes first on sys.path, where benchmarks/augment.py
    # would shadow the augment package.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.exit(main())
