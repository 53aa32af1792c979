"""Throughput of the augmentation recipes and of each op, with and without XLA.

    python -m benchmarks.augment [--batch 256 --size 64 --recipes student_net2,original_net2,\
original_net1 --seconds 5 --ops --blur --modes xla,graph --before --profile]

Times the product's own code: each recipe comes from ``augment.get_recipe`` and each op is the
``augment`` class the recipes use, wrapped in ``tf.function(jit_compile=...)`` exactly as the
train step (XLA) or ``tf.data`` (graph) runs it, a fresh seed per call so nothing is cached.
Prints the machine, a table, and one final JSON line with every figure: images/s (wall
clock), images per CPU-second of this process (all threads; steadier than wall clock on a
shared machine), CPU-us per image (the same figure inverted) and the first call's seconds
(tracing + XLA compilation). ``--before`` also times each recipe as
``benchmarks.augment_baseline`` (the code before issue 19: every image through every op, then
selected) in the same run;
``--profile`` prints each op's CPU-us per image alone and its share inside each recipe (the
recipe minus the same recipe without that op), under XLA.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf

import augment
import benchmarks.augment_baseline as augment_baseline
from augment import combinators, photometric


def single_ops() -> dict:
    """Each op of the recipes, with the students' (Figure 9) parameters."""
    return {
        "Fliplr": augment.Fliplr(0.5),
        "Flipud": augment.Flipud(0.2),
        "GaussianBlur(0,0.5)": augment.GaussianBlur(sigma=(0.0, 0.5)),
        "GaussianBlur(0,2)": augment.GaussianBlur(sigma=(0.0, 2.0)),
        "CropAndPad": augment.CropAndPad(percent=(-0.25, 0.25), pad_cval=(0, 255)),
        "Affine": augment.Affine(scale={"x": (0.8, 1.2), "y": (0.8, 1.2)},
                                 translate_percent={"x": (-0.15, 0.15), "y": (-0.15, 0.15)},
                                 rotate=(-30, 30), shear=(-15, 15), order=[0, 1],
                                 cval=(0, 255)),
        "CoarseDropout": augment.CoarseDropout((0.03, 0.15), size_percent=(0.02, 0.05),
                                               per_channel=0.2),
        "Multiply": augment.Multiply((0.9, 1.1), per_channel=0.25),
        "ContrastNormalization": augment.ContrastNormalization((0.75, 1.5), per_channel=0.5),
        "AdditiveGaussianNoise": augment.AdditiveGaussianNoise(scale=0.05 * 255),
    }


def blur_variants(max_ksize: int = 5) -> dict:
    """Formulations of the per-image separable blur, to justify the one ``gaussian_blur`` uses.

    All take float32 images and ``[B]`` sigmas and give the same result; the first is the
    product's own.
    """

    def banded_matmul(images, sigma):
        return photometric._blur_float(images, sigma, max_ksize)

    def shifted_slices(images, sigma):
        taps = photometric.gaussian_taps(sigma, max_ksize)
        r = max_ksize // 2
        padded = tf.pad(images, [[0, 0], [r, r], [0, 0], [0, 0]], mode="REFLECT")
        height, width = images.shape[1], images.shape[2]
        out = sum(taps[:, k, None, None, None] * padded[:, k:k + height]
                  for k in range(max_ksize))
        padded = tf.pad(out, [[0, 0], [0, 0], [r, r], [0, 0]], mode="REFLECT")
        return sum(taps[:, k, None, None, None] * padded[:, :, k:k + width]
                   for k in range(max_ksize))

    def depthwise(images, sigma):
        taps = photometric.gaussian_taps(sigma, max_ksize)          # [B, K]
        batch, height, width, channels = (tf.shape(images)[0], images.shape[1],
                                          images.shape[2], images.shape[3])
        r = max_ksize // 2
        # Fold the batch into channels so each image gets its own kernel.
        x = tf.transpose(images, [1, 2, 0, 3])
        x = tf.reshape(x, [1, height, width, batch * channels])
        x = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
        k = tf.repeat(taps, channels, axis=0)                      # [B*C, K]
        kh = tf.transpose(k)[:, None, :, None]                     # [K, 1, B*C, 1]
        kw = tf.transpose(k)[None, :, :, None]                     # [1, K, B*C, 1]
        x = tf.nn.depthwise_conv2d(x, kh, [1, 1, 1, 1], "VALID")
        x = tf.nn.depthwise_conv2d(x, kw, [1, 1, 1, 1], "VALID")
        x = tf.reshape(x, [height, width, batch, channels])
        return tf.transpose(x, [2, 0, 1, 3])

    return {"blur/banded_matmul": banded_matmul, "blur/shifted_slices": shifted_slices,
            "blur/depthwise_conv2d": depthwise}


def op_list(recipe):
    """``(holder, children)`` of the list of ops a recipe is built from (through Sometimes)."""
    node = recipe
    while isinstance(node, combinators.Sometimes):
        node = node.then_list
    children = getattr(node, "children", None)
    return (node, children) if children else (None, [])


def ablations(name: str) -> dict:
    """``{op: recipe without that op}`` for the recipe ``name`` (one per op of its list)."""
    out = {}
    count = len(op_list(augment.get_recipe(name))[1])
    for i in range(count):
        recipe = augment.get_recipe(name)
        holder, children = op_list(recipe)
        label = op_label(children[i])
        holder.children = children[:i] + children[i + 1:]
        if isinstance(holder, combinators.SomeOf):
            holder._counts = combinators._counts(holder.n, len(holder.children))
        out[f"{name} - {label}"] = recipe
    return out


def op_label(op) -> str:
    """A short name of an op, through a per-op Sometimes: ``Sometimes(Affine)``."""
    if isinstance(op, combinators.Sometimes):
        return f"Sometimes({op_label(op.then_list)})"
    return type(op).__name__


def machine() -> dict:
    """What ran the benchmark: host, CPU count, TensorFlow version and devices."""
    return {"host": platform.node(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "devices": [d.name for d in tf.config.list_logical_devices()],
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def measure(fn, images, seconds: float, jit_compile: bool, seed_input: bool = True) -> dict:
    """images/s of ``fn(images, seed)`` over about ``seconds``, plus the first-call time."""
    compiled = tf.function(fn, jit_compile=jit_compile, autograph=False)
    start, cpu_first = time.perf_counter(), time.process_time()
    arg = tf.constant([0, 0], tf.int32) if seed_input else tf.zeros([images.shape[0]])
    compiled(images, arg).numpy()
    first = time.perf_counter() - start
    first_cpu = time.process_time() - cpu_first
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        arg = (tf.constant([calls + 1, 7], tf.int32) if seed_input
               else tf.fill([images.shape[0]], 0.25 + 0.01 * (calls % 10)))
        out = compiled(images, arg)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            break
    out.numpy()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    count = calls * int(images.shape[0])
    return {"images_per_s": count / elapsed, "images_per_cpu_s": count / max(cpu, 1e-9),
            "cpu_us_per_image": 1e6 * cpu / count, "compile_s": first,
            "compile_cpu_s": first_cpu, "calls": calls}


def targets_for(recipe_names, with_ops: bool, with_blur: bool, before: bool,
                profile: bool) -> list:
    """``(name, fn, seeded)`` of everything to time, recipes first, each before its baseline."""
    targets = []
    for name in recipe_names:
        targets.append((name, augment.get_recipe(name), True))
        if before:
            targets.append((f"{name} (before)", augment_baseline.get_recipe(name), True))
    if with_ops or profile:
        targets += [(name, op, True) for name, op in single_ops().items()]
    if with_blur:
        targets += [(name, fn, False) for name, fn in blur_variants().items()]
    if profile:
        for name in recipe_names:
            targets += [(label, recipe, True) for label, recipe in ablations(name).items()]
    return targets


def run_bench(batch: int, size: int, recipe_names, seconds: float, with_ops: bool,
              with_blur: bool, modes=("xla", "graph"), seed: int = 0, out=sys.stdout,
              before: bool = False, profile: bool = False) -> list:
    """Every measurement as a row ``{name, mode, images_per_s, images_per_cpu_s, ...}``.

    Raises:
      ValueError: an unknown recipe name or mode (before anything is timed).
    """
    bad = [m for m in modes if m not in ("xla", "graph")]
    if bad:
        raise ValueError(f"--modes: unknown mode(s) {bad}; use xla and/or graph")
    targets = targets_for(recipe_names, with_ops, with_blur, before, profile)
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    floats = tf.cast(images, tf.float32)
    print(f"{'name':40s} {'mode':5s} {'images/s':>10s} {'img/cpu-s':>10s} {'cpu-us/img':>10s} "
          f"{'first call s':>12s} {'(cpu s)':>8s}", file=out, flush=True)
    rows = []
    for name, fn, seeded in targets:
        for mode in modes:
            result = measure(fn, images if seeded else floats, seconds, mode == "xla",
                             seed_input=seeded)
            rows.append({"name": name, "mode": mode, **result})
            print(f"{name:40s} {mode:5s} {result['images_per_s']:10.0f} "
                  f"{result['images_per_cpu_s']:10.0f} {result['cpu_us_per_image']:10.1f} "
                  f"{result['compile_s']:12.2f} {result['compile_cpu_s']:8.2f}", file=out,
                  flush=True)
    if profile:
        print_profile(rows, recipe_names, out)
    return rows


def print_profile(rows, recipe_names, out=sys.stdout) -> None:
    """Per op: CPU-us per image alone, and inside each recipe (recipe minus recipe without it)."""
    cost = {(r["name"], r["mode"]): r["cpu_us_per_image"] for r in rows}
    print("\nprofile: CPU-us per image (share in a recipe = recipe - recipe without the op)",
          file=out)
    for mode in sorted({r["mode"] for r in rows}):
        for name in recipe_names:
            total = cost.get((name, mode))
            for row in rows:
                prefix = f"{name} - "
                if row["mode"] != mode or not row["name"].startswith(prefix) or total is None:
                    continue
                share = total - row["cpu_us_per_image"]
                print(f"  {mode:5s} {name:14s} {row['name'][len(prefix):]:28s} "
                      f"{share:8.1f} of {total:.1f}", file=out)
    print("  alone (whole batch): " + ", ".join(
        f"{r['name']} {r['cpu_us_per_image']:.1f}" for r in rows
        if r["name"] in single_ops() and r["mode"] == "xla"), file=out, flush=True)


def main(argv) -> int:
    """Maps the flags to :func:`run_bench`; 2 for bad usage, 1 if a measurement fails."""
    from absl import flags
    f = flags.FLAGS
    if len(argv) > 1:
        print(f"benchmarks.augment: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    info = machine()
    print(f"machine: {info['host']}, {info['processor']}, {info['cpus']} CPUs, TensorFlow "
          f"{info['tensorflow']}, devices {', '.join(info['devices'])}", flush=True)
    names = [n for n in f.recipes.split(",") if n]
    unknown = [n for n in names if n not in augment.recipe_names()]
    if unknown:
        print(f"benchmarks.augment: error: --recipes: unknown {unknown}; known: "
              f"{', '.join(augment.recipe_names())}", file=sys.stderr)
        return 2
    try:
        rows = run_bench(f.batch, f.size, names, f.seconds, f.ops, f.blur,
                         modes=tuple(m for m in f.modes.split(",") if m), before=f.before,
                         profile=f.profile)
    except ValueError as e:
        print(f"benchmarks.augment: error: {e}", file=sys.stderr)
        return 2
    except (tf.errors.OpError, RuntimeError) as e:
        print(f"benchmarks.augment: failed: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(json.dumps({"benchmark": "augment", "batch": f.batch, "size": f.size,
                      "seconds": f.seconds, "machine": info, "results": rows}))
    return 0


def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_integer("batch", 256, "Images per batch.", lower_bound=1)
    flags.DEFINE_integer("size", 64, "Image height and width.", lower_bound=8)
    flags.DEFINE_string("recipes", "student_net2,original_net2,original_net1",
                        "Comma-separated recipe names (augment.recipe_names()).")
    flags.DEFINE_float("seconds", 5.0, "Timed seconds per measurement (after the first call).",
                       lower_bound=0.0)
    flags.DEFINE_bool("ops", True, "Also measure each single op.")
    flags.DEFINE_bool("blur", False, "Also compare blur formulations (matmul/slices/depthwise).")
    flags.DEFINE_string("modes", "xla,graph", "xla (jit_compile=True) and/or graph (False).")
    flags.DEFINE_bool("before", False, "Also time each recipe as before issue 19 "
                      "(benchmarks.augment_baseline), in the same run.")
    flags.DEFINE_bool("profile", False, "CPU-us per image per op, alone and inside each "
                      "recipe (times each recipe once without each op).")


def cli() -> None:
    """Entry point: ``python -m benchmarks.augment`` (the data tools' CLI convention)."""
    from plumbing import cli as cli_lib
    _define_flags()
    cli_lib.run(main, __name__)


__all__ = ["ablations", "blur_variants", "machine", "measure", "op_list", "print_profile",
           "run_bench", "single_ops", "targets_for"]

if __name__ == "__main__":
    cli()
