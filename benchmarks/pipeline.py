"""Measures the input pipeline stage by stage, and the seed report's old way, in one run.

    python -m benchmarks.pipeline --data /tmp/tin-build --seconds 10
    python -m benchmarks.pipeline --data /tmp/tin-build --batches 200 \\
        --image_size 32 --recipe student_net2 --profile

Stages (images/second, each on the same build, one after another):

- ``read_parse``: interleaved shard reading + batched ``parse_example``: the ceiling;
- ``decode``: + decoding at the stored size (64 px);
- ``resize``: + resizing to ``--image_size`` (a no-op row when that is the stored size) and
  to each ``--resize_sizes``;
- ``train``: the training reader :func:`pipeline.training_stream` (seeded data passes,
  batch, parse, decode, resize) without augmentation;
- ``train_augment``: the same with ``augment.get_recipe(--recipe)`` applied to whole batches
  inside tf.data on the CPU, XLA-compiled (the pipeline's default);
- ``train_augment_no_xla``: the same recipe run as plain TF graph ops;
- ``old_way``: the seed report's loop: Keras ``ImageDataGenerator.flow_from_directory`` over
  the dataset *folder* (one PIL JPEG load per file) with a per-image Python
  ``preprocessing_function``. imgaug does not install with numpy 2, so that function is a
  numpy/PIL re-creation of the student recipe's per-image work (:func:`student_net2_numpy`);
  it is at least as fast as imgaug was, so the measured speed-up is conservative;
- ``old_way_no_augment``: the same loader without the function (file loading alone);
- ``old_way_imgaug``: the seed report's exact Figure 9 function with the real imgaug 0.4,
  one image at a time after a PIL load, run by ``benchmarks/old_way_imgaug.py`` in the
  interpreter given
  by ``--imgaug_python`` (imgaug needs numpy < 2, so it lives in its own venv); skipped with
  a note when that flag is not set. This is the faithful baseline for the speed-up.

``--profile`` adds where the time goes: each per-batch op timed alone on one thread (parse,
decode, resize, augment), and ``--trace_dir`` records a TensorFlow profiler trace of the
``train_augment`` stage for TensorBoard. The run prints a table, then one JSON line of all
figures with a description of the machine.

Every stage times the product's own code: ``pipeline.parse_batch``/``decode_batch``/
``resize_images`` with ``pipeline.dataset_options``, ``pipeline.training_stream`` and
``augment.get_recipe``; the build is opened once (``manifest.open_build``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf
from absl import flags

from plumbing import cli as cli_lib
import augment
from benchmarks.build import machine_description
from tinyimagenet_tfrecords import features
from tinyimagenet_tfrecords import manifest as manifest_lib
from tinyimagenet_tfrecords import pipeline


# ------------------------------------------------------------------------------- timing ---

def measure(batches: Iterator, *, seconds: float = 10.0, max_batches: Optional[int] = None,
            warmup_seconds: float = 3.0) -> dict:
    """Images/second of an iterator of ``(images, labels)`` batches.

    Warms up (thread pools, autotuning, the shuffle buffer) for ``warmup_seconds`` first, then
    counts images until ``seconds`` have passed or ``max_batches`` batches were read.
    """
    end_warmup = time.perf_counter() + warmup_seconds
    for batch in batches:
        if time.perf_counter() >= end_warmup:
            break
    images = count = 0
    start = time.perf_counter()
    for batch in batches:
        images += int(np.shape(batch[0])[0])
        count += 1
        elapsed = time.perf_counter() - start
        if (max_batches is not None and count >= max_batches) or (
                max_batches is None and elapsed >= seconds):
            break
    elapsed = time.perf_counter() - start
    return {"images_per_s": images / elapsed if elapsed > 0 else 0.0, "images": images,
            "batches": count, "seconds": elapsed}


# ------------------------------------------------------------------------------ stages ---

def _records(files, *, repeat: bool = True) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), pipeline.DEFAULT_CYCLE_LENGTH),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.repeat() if repeat else ds


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
    return ds.prefetch(tf.data.AUTOTUNE).with_options(pipeline.dataset_options(True))


def stage_read_parse(files, batch_size: int) -> tf.data.Dataset:
    """Reading + batched parsing, returning the image bytes: the ceiling of the pipeline."""
    def parse(serialized):
        parsed = pipeline.parse_batch(serialized)
        return parsed[features.IMAGE], parsed[features.LABEL]
    return _finish(_records(files).batch(batch_size).map(parse, tf.data.AUTOTUNE))


def stage_decode(files, batch_size: int, image_size: int, storage: str) -> tf.data.Dataset:
    """Reading, parsing, decoding and resizing to ``image_size`` (no shuffle, no augment)."""
    def decode(serialized):
        parsed = pipeline.parse_batch(serialized)
        return (pipeline.decode_batch(parsed, image_size, storage),
                tf.cast(parsed[features.LABEL], tf.int32))
    return _finish(_records(files).batch(batch_size).map(decode, tf.data.AUTOTUNE))


def stored_size(files) -> int:
    """Side of the first stored image (64 for Tiny ImageNet)."""
    serialized = next(iter(tf.data.TFRecordDataset(files[:1]).batch(1)))
    return int(pipeline.parse_batch(serialized)[features.HEIGHT][0])


# ---------------------------------------------------------------------------- old way ---

def student_net2_numpy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A per-image numpy/PIL re-creation of the students' imgaug ``Image_augmentation``.

    ``Sometimes(0.5, Sequential([Fliplr(0.5), Flipud(0.2), GaussianBlur((0, 0.5)),
    CropAndPad(percent=(-0.25, 0.25), pad_mode=edge), Affine(scale 0.8-1.2 per axis, translate
    +-15%, rotate +-30, shear +-15, order 0|1, cval 0..255), CoarseDropout((0.03, 0.15),
    size_percent=(0.02, 0.05), per_channel=0.2), Multiply((0.9, 1.1), per_channel=0.25),
    ContrastNormalization((0.75, 1.5), per_channel=0.5)], random_order=True))``, on one
    float32 HWC image in 0..255 as ``ImageDataGenerator`` passes it. Same per-image work (a
    blur, a crop/pad + resize, an affine warp, a mask, two pointwise ops) with the same
    parameter draws; PIL has no edge mode for the warp, so it fills with ``cval``. It exists to
    measure the cost profile of the old way, not to train with.
    """
    from PIL import Image, ImageFilter  # the old way's dependency, not the pipeline's

    if rng.random() >= 0.5:
        return image
    h, w, c = image.shape
    img = np.clip(image, 0, 255).astype(np.uint8)

    def fliplr(x):
        return x[:, ::-1] if rng.random() < 0.5 else x

    def flipud(x):
        return x[::-1] if rng.random() < 0.2 else x

    def blur(x):
        sigma = rng.uniform(0.0, 0.5)
        if sigma <= 1e-3:
            return x
        return np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(sigma)))

    def crop_and_pad(x):
        top, right, bottom, left = (int(round(f * s)) for f, s in zip(
            rng.uniform(-0.25, 0.25, 4), (h, w, h, w)))
        crop = [max(-v, 0) for v in (top, right, bottom, left)]
        pad = [max(v, 0) for v in (top, right, bottom, left)]
        x = x[crop[0]:max(h - crop[2], crop[0] + 1), crop[3]:max(w - crop[1], crop[3] + 1)]
        x = np.pad(x, ((pad[0], pad[2]), (pad[3], pad[1]), (0, 0)), mode="edge")
        return np.asarray(Image.fromarray(x).resize((w, h), Image.BILINEAR))

    def affine(x):
        sx, sy = rng.uniform(0.8, 1.2, 2)
        tx, ty = rng.uniform(-0.15, 0.15, 2) * (w, h)
        rot, shear = np.deg2rad(rng.uniform(-30, 30)), np.deg2rad(rng.uniform(-15, 15))
        order = Image.NEAREST if rng.random() < 0.5 else Image.BILINEAR
        cval = tuple(int(v) for v in rng.integers(0, 256, c))
        a = np.array([[sx * np.cos(rot), -sy * np.sin(rot + shear)],
                      [sx * np.sin(rot), sy * np.cos(rot + shear)]])
        lin = a @ np.array([[np.cos(shear), 0.0], [np.sin(shear), 1.0]])
        inv = np.linalg.inv(lin)
        centre = np.array([w / 2 - 0.5, h / 2 - 0.5])
        offset = centre - inv @ (centre + (tx, ty))
        data = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
        return np.asarray(Image.fromarray(x).transform(
            (w, h), Image.AFFINE, data, resample=order, fillcolor=cval))

    def coarse_dropout(x):
        p = rng.uniform(0.03, 0.15)
        mh = max(int(rng.uniform(0.02, 0.05) * h), 3)
        mw = max(int(rng.uniform(0.02, 0.05) * w), 3)
        channels = c if rng.random() < 0.2 else 1
        mask = (rng.random((mh, mw, channels)) >= p).astype(np.uint8)
        mask = mask[(np.arange(h) * mh // h)][:, (np.arange(w) * mw // w)]
        return x * mask

    def multiply(x):
        m = rng.uniform(0.9, 1.1, c if rng.random() < 0.25 else 1)
        return np.clip(x.astype(np.float32) * m, 0, 255).astype(np.uint8)

    def contrast(x):
        a = rng.uniform(0.75, 1.5, c if rng.random() < 0.5 else 1)
        return np.clip(np.round(127 + a * (x.astype(np.float32) - 127)), 0, 255).astype(np.uint8)

    ops = [fliplr, flipud, blur, crop_and_pad, affine, coarse_dropout, multiply, contrast]
    for i in rng.permutation(len(ops)):
        img = np.ascontiguousarray(ops[i](img))
    return img.astype(np.float32)


def old_way_batches(src_dir: str, *, batch_size: int, image_size: int, seed: int = 0,
                    augment: bool = True) -> Iterator:
    """The seed report's input: ``ImageDataGenerator(preprocessing_function=...)``
    ``.flow_from_directory(<src>/train, target_size=...)``, one batch per ``next``.

    Keras 3 still ships the class as ``tf.keras.preprocessing.image.ImageDataGenerator``
    (``keras.src.legacy.preprocessing.image``). Single process, as ``fit`` runs it by default.
    """
    generator_cls = tf.keras.preprocessing.image.ImageDataGenerator
    rng = np.random.default_rng(seed)
    preprocess = (lambda x: student_net2_numpy(x, rng)) if augment else None
    gen = generator_cls(preprocessing_function=preprocess).flow_from_directory(
        os.path.join(src_dir, "train"), target_size=(image_size, image_size),
        batch_size=batch_size, class_mode="sparse", seed=seed, interpolation="bilinear")
    while True:
        yield next(gen)


def old_way_imgaug(python: str, src_dir: str, *, batch_size: int, image_size: int,
                   seconds: float, augment: bool = True) -> dict:
    """Runs ``old_way_imgaug.py`` with ``python`` (a venv with imgaug 0.4); returns its JSON.

    Raises:
      RuntimeError: with the child's last error line when it fails (e.g. imgaug missing).
    """
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "old_way_imgaug.py")
    cmd = [python, script, "--src", src_dir, "--batch_size", str(batch_size),
           "--image_size", str(image_size), "--seconds", str(seconds)]
    if not augment:
        cmd.append("--noaugment")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{python} {script}: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- profile ---

def profile_ops(files, *, batch_size: int, image_size: int, storage: str, recipe,
                repeats: int = 20) -> dict:
    """Milliseconds per batch of each per-batch op, alone on one thread: where time goes."""
    serialized = next(iter(tf.data.TFRecordDataset(files).batch(batch_size)))
    native = stored_size(files)

    def timed(fn, *args):
        fn(*args)  # trace
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn(*args)
        if isinstance(out, tf.Tensor):
            out.numpy()
        return (time.perf_counter() - start) / repeats * 1000.0

    parse = tf.function(pipeline.parse_batch)
    parsed = parse(serialized)
    decode = tf.function(lambda p: pipeline.decode_batch(p, native, storage))
    images = decode(parsed)
    result = {"parse_ms": timed(parse, serialized), "decode_ms": timed(decode, parsed)}
    for size in sorted({image_size, 32}):
        if size != native:
            resize = tf.function(lambda x, s=size: pipeline.resize_images(x, s))
            result[f"resize_{size}_ms"] = timed(resize, images)
    if recipe is not None:
        target = pipeline.resize_images(images, image_size)
        seed = tf.constant([1, 2], tf.int32)
        result["augment_xla_ms"] = timed(
            tf.function(recipe, jit_compile=True, autograph=False), target, seed)
        result["augment_no_xla_ms"] = timed(tf.function(recipe, autograph=False), target, seed)
    result["batch_size"] = batch_size
    return result


# -------------------------------------------------------------------------------- main ---

def run_bench(data, *, src: Optional[str], batch_size: int, image_size: int,
              resize_sizes, seconds: float, max_batches: Optional[int], recipe_name: str,
              recipe: Optional[Callable], stages, profile: bool, trace_dir: Optional[str],
              warmup_seconds: float = 3.0, deterministic: bool = True,
              imgaug_python: Optional[str] = None,
              log: Callable[[str], None] = print) -> dict:
    """Runs the requested stages on one build and returns ``{stage: images/s, ...}``.

    ``data`` is a build opened by ``manifest.open_build`` (or its folder, opened here).
    ``recipe`` is the augmentation timed in the ``train_augment*`` stages (``None`` skips
    them with a note); ``recipe_name`` labels it.
    """
    build = data if isinstance(data, manifest_lib.Build) else manifest_lib.open_build(data)
    files = list(build.split("train").paths)
    storage = build.storage
    native = stored_size(files)
    src = src or build.source
    figures: dict = {"data": build.path, "storage": storage, "batch_size": batch_size,
                     "image_size": image_size, "cpus": os.cpu_count(),
                     "deterministic": deterministic, "stages": {},
                     "notes": [], "machine": machine_description()}
    if recipe is None:
        figures["notes"].append("train_augment skipped: no recipe")

    def record(name, make_batches, note=""):
        """Measures ``make_batches()``; made only for a requested stage, since making a
        pipeline's iterator starts its threads filling buffers."""
        if name.split(":")[0] not in stages:
            return
        log(f"  measuring {name} ...")
        m = measure(make_batches(), seconds=seconds, max_batches=max_batches,
                    warmup_seconds=warmup_seconds)
        figures["stages"][name] = round(m["images_per_s"], 1)
        log(f"  {name:24s} {m['images_per_s']:10.0f} images/s  ({m['images']} images, "
            f"{m['seconds']:.1f} s){note}")

    record("read_parse", lambda: iter(stage_read_parse(files, batch_size)))
    record("decode", lambda: iter(stage_decode(files, batch_size, native, storage)))
    for size in sorted({image_size, *resize_sizes}, reverse=True):
        note = "  (stored size: resize skipped)" if size == native else ""
        record(f"resize:{size}",
               lambda size=size: iter(stage_decode(files, batch_size, size, storage)), note)
    train_kwargs = dict(batch_size=batch_size, image_size=image_size, seed=0,
                        deterministic=deterministic)
    record("train", lambda: iter(pipeline.training_stream(build, **train_kwargs)))
    # The same stream with TensorFlow's autotune optimizer on, as before its freeing-stall
    # fix (pipeline.dataset_options): what leaving it off costs or gains.
    optimizer_on = tf.data.Options()
    optimizer_on.autotune.enabled = True
    record("train_autotune_on", lambda: iter(pipeline.training_stream(build, **train_kwargs)
                                             .with_options(optimizer_on)),
           "  (TF's autotune optimizer on: the old setting)")
    if recipe is not None and "train_augment" in stages:
        # The pipeline's default: the recipe compiled by XLA (CPU) inside tf.data.
        ds = pipeline.training_stream(build, augment=recipe, **train_kwargs)
        if trace_dir:
            tf.profiler.experimental.start(trace_dir)
        record("train_augment", lambda: iter(ds), f"  (recipe {recipe_name}, XLA)")
        if trace_dir:
            tf.profiler.experimental.stop()
    if recipe is not None and "train_augment_no_xla" in stages:
        ds = pipeline.training_stream(build, augment=recipe, jit_augment=False,
                                      **train_kwargs)
        record("train_augment_no_xla", lambda: iter(ds), f"  (recipe {recipe_name}, no XLA)")
    if "old_way" in stages or "old_way_no_augment" in stages:
        if src and os.path.isdir(os.path.join(src, "train")):
            record("old_way", lambda: old_way_batches(src, batch_size=batch_size,
                                                      image_size=image_size))
            record("old_way_no_augment", lambda: old_way_batches(
                src, batch_size=batch_size, image_size=image_size, augment=False))
        else:
            figures["notes"].append(f"old_way skipped: no dataset folder {src!r} (--src)")
    if "old_way_imgaug" in stages:
        if not imgaug_python:
            figures["notes"].append("old_way_imgaug skipped: no --imgaug_python (a venv with "
                                    "imgaug==0.4.0 'numpy<2' pillow)")
        elif not (src and os.path.isdir(os.path.join(src, "train"))):
            figures["notes"].append(f"old_way_imgaug skipped: no dataset folder {src!r}")
        else:
            log("  measuring old_way_imgaug ...")
            try:
                m = old_way_imgaug(imgaug_python, src, batch_size=batch_size,
                                   image_size=image_size, seconds=seconds)
            except RuntimeError as e:
                figures["notes"].append(f"old_way_imgaug failed: {e}")
            else:
                figures["stages"]["old_way_imgaug"] = round(m["images_per_s"], 1)
                log(f"  {'old_way_imgaug':24s} {m['images_per_s']:10.0f} images/s  "
                    f"({m['images']} images, {m['seconds']:.1f} s, imgaug "
                    f"{m.get('imgaug_version')})")
    if profile:
        figures["profile"] = {k: round(v, 3) if isinstance(v, float) else v
                              for k, v in profile_ops(files, batch_size=batch_size,
                                                      image_size=image_size, storage=storage,
                                                      recipe=recipe).items()}
    st = figures["stages"]
    if "read_parse" in st and "train" in st:
        figures["ceiling_over_train"] = round(st["read_parse"] / st["train"], 2)
    if st.get("train_autotune_on") and "train" in st:
        figures["train_over_train_autotune_on"] = round(st["train"] / st["train_autotune_on"], 2)
    for base in ("old_way", "old_way_imgaug"):
        if st.get(base):
            for key in ("train_augment", "train_augment_no_xla"):
                if key in st:
                    figures[f"{key}_speedup_over_{base}"] = round(st[key] / st[base], 1)
    return figures


def format_table(figures: dict) -> str:
    rows = [f"| stage | images/s ({figures['storage']} storage, batch {figures['batch_size']}, "
            f"{figures['image_size']} px, {figures['cpus']} CPUs) |", "|---|---:|"]
    rows += [f"| {k} | {v:,.0f} |" for k, v in figures["stages"].items()]
    for key in sorted(figures):
        if key in ("ceiling_over_train", "train_over_train_autotune_on") or \
                "_speedup_over_" in key:
            rows.append(f"| {key} | {figures[key]} |")
    if "profile" in figures:
        rows += ["", "| op (one thread, per batch) | ms |", "|---|---:|"]
        rows += [f"| {k} | {v} |" for k, v in figures["profile"].items() if k.endswith("_ms")]
    rows += [f"- {n}" for n in figures["notes"]]
    return "\n".join(rows)


STAGES = ("read_parse", "decode", "resize", "train", "train_autotune_on", "train_augment",
          "train_augment_no_xla", "old_way", "old_way_no_augment", "old_way_imgaug")

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("data", None, "A finished build folder (manifest.json).")
    flags.DEFINE_string("src", None, "Dataset folder for the old way (default: the "
                        "manifest's source).")
    flags.DEFINE_integer("batch_size", 256, "Images per batch.")
    flags.DEFINE_integer("image_size", 64, "Output side of the pipeline stages.")
    flags.DEFINE_list("resize_sizes", ["32"], "Extra sizes for the resize stage.")
    flags.DEFINE_float("seconds", 10.0, "Measured seconds per stage (after the warm-up).")
    flags.DEFINE_float("warmup_seconds", 3.0, "Unmeasured seconds per stage first (thread "
                       "pools, autotuning, the shuffle buffer).")
    flags.DEFINE_integer("batches", None, "Measure this many batches per stage instead.")
    flags.DEFINE_string("recipe", "student_net2", "augment recipe for train_augment "
                        "(augment.get_recipe; 'none' skips the augment stages).")
    flags.DEFINE_list("stages", list(STAGES), "Stages to run.")
    flags.DEFINE_string("imgaug_python", None, "Python of a venv with imgaug==0.4.0 and "
                        "numpy<2, for the old_way_imgaug stage (the real seed-report path).")
    flags.DEFINE_bool("deterministic", True, "Training stages keep a reproducible order.")
    flags.DEFINE_bool("profile", False, "Also time each per-batch op alone (where time goes).")
    flags.DEFINE_string("trace_dir", None, "Write a TF profiler trace of train_augment here.")
    flags.mark_flag_as_required("data")


def main(argv) -> int:
    """Maps the flags to :func:`run_bench`; prints the table and one JSON line."""
    if len(argv) > 1:
        print(f"pipeline bench: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    unknown = set(FLAGS.stages) - set(STAGES)
    if unknown:
        print(f"pipeline bench: error: unknown --stages {sorted(unknown)}; known: {STAGES}",
              file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    try:
        recipe = None if FLAGS.recipe == "none" else augment.get_recipe(FLAGS.recipe)
        build = manifest_lib.open_build(FLAGS.data)
        build.split("train")
    except (KeyError, ValueError, manifest_lib.BuildError) as e:
        print(f"pipeline bench: error: {e}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    figures = run_bench(
        build, src=FLAGS.src, batch_size=FLAGS.batch_size, image_size=FLAGS.image_size,
        resize_sizes=[int(s) for s in FLAGS.resize_sizes], seconds=FLAGS.seconds,
        max_batches=FLAGS.batches, recipe_name=FLAGS.recipe, recipe=recipe,
        stages=set(FLAGS.stages),
        profile=FLAGS.profile, trace_dir=FLAGS.trace_dir,
        warmup_seconds=FLAGS.warmup_seconds, deterministic=FLAGS.deterministic,
        imgaug_python=FLAGS.imgaug_python)
    print(format_table(figures))
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    _define_flags()
    cli_lib.run(main, __name__)
