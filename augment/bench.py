"""Throughput of the augmentation recipes and of each op, with and without XLA.

    python -m augment.bench [--batch 256 --size 64 --recipes student_net2,original_net2,\
original_net1 --seconds 5 --ops --blur]

Prints a table and one final JSON line with every figure: images/s (wall clock), images per
CPU-second of this process (all threads; steadier than wall clock on a shared machine) and
the first call's seconds (tracing + XLA compilation). Each
function is wrapped in ``tf.function(jit_compile=...)`` exactly as the train step or
``tf.data`` would run it; a fresh seed per call so nothing is cached.
"""

from __future__ import annotations

import json
import time

import numpy as np
import tensorflow as tf

from augment import geometry, photometric, recipes


def single_ops() -> dict:
    """Each op of the recipes, with the students' (Figure 9) parameters."""
    return {
        "Fliplr": geometry.Fliplr(0.5),
        "Flipud": geometry.Flipud(0.2),
        "GaussianBlur(0,0.5)": photometric.GaussianBlur(sigma=(0.0, 0.5)),
        "GaussianBlur(0,2)": photometric.GaussianBlur(sigma=(0.0, 2.0)),
        "CropAndPad": geometry.CropAndPad(percent=(-0.25, 0.25), pad_cval=(0, 255)),
        "Affine": geometry.Affine(scale={"x": (0.8, 1.2), "y": (0.8, 1.2)},
                                  translate_percent={"x": (-0.15, 0.15), "y": (-0.15, 0.15)},
                                  rotate=(-30, 30), shear=(-15, 15), order=[0, 1],
                                  cval=(0, 255)),
        "CoarseDropout": photometric.CoarseDropout((0.03, 0.15), size_percent=(0.02, 0.05),
                                                   per_channel=0.2),
        "Multiply": photometric.Multiply((0.9, 1.1), per_channel=0.25),
        "ContrastNormalization": photometric.ContrastNormalization((0.75, 1.5),
                                                                   per_channel=0.5),
        "AdditiveGaussianNoise": photometric.AdditiveGaussianNoise(scale=0.05 * 255),
    }


def blur_variants(max_ksize: int = 5) -> dict:
    """Formulations of the per-image separable blur, to justify the one ``gaussian_blur`` uses.

    All take float32 images and ``[B]`` sigmas and give the same result.
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


def measure(fn, images, seconds: float, jit_compile: bool, seed_input: bool = True) -> dict:
    """images/s of ``fn(images, seed)`` over about ``seconds``, plus the first-call time."""
    compiled = tf.function(fn, jit_compile=jit_compile, autograph=False)
    start = time.perf_counter()
    arg = tf.constant([0, 0], tf.int32) if seed_input else tf.zeros([images.shape[0]])
    compiled(images, arg).numpy()
    first = time.perf_counter() - start
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
            "compile_s": first, "calls": calls}


def run_bench(batch: int, size: int, recipe_names, seconds: float, with_ops: bool,
              with_blur: bool, modes=("xla", "graph"), seed: int = 0) -> list[dict]:
    """Every measurement as a row ``{name, mode, images_per_s, compile_s, calls}``."""
    rng = np.random.default_rng(seed)
    images = tf.constant(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    targets = [(name, recipes.get_recipe(name), True) for name in recipe_names]
    if with_ops:
        targets += [(name, op, True) for name, op in single_ops().items()]
    if with_blur:
        floats = tf.cast(images, tf.float32)
        targets += [(name, fn, False) for name, fn in blur_variants().items()]
    rows = []
    for name, fn, seeded in targets:
        for mode in modes:
            result = measure(fn, images if seeded else floats, seconds, mode == "xla",
                             seed_input=seeded)
            rows.append({"name": name, "mode": mode, **result})
            print(f"{name:28s} {mode:5s} {result['images_per_s']:10.0f} img/s "
                  f"{result['images_per_cpu_s']:10.0f} img/cpu-s   "
                  f"first call {result['compile_s']:6.2f} s", flush=True)
    return rows


def main(argv):
    del argv
    from absl import flags
    f = flags.FLAGS
    rows = run_bench(f.batch, f.size, [n for n in f.recipes.split(",") if n], f.seconds,
                     f.ops, f.blur, modes=tuple(f.modes.split(",")))
    print(json.dumps({"batch": f.batch, "size": f.size, "threads":
                      tf.config.threading.get_intra_op_parallelism_threads(),
                      "devices": [d.name for d in tf.config.list_logical_devices()],
                      "results": rows}))


def _define_flags():
    from absl import flags
    flags.DEFINE_integer("batch", 256, "Images per batch.")
    flags.DEFINE_integer("size", 64, "Image height and width.")
    flags.DEFINE_string("recipes", "student_net2,original_net2,original_net1",
                        "Comma-separated recipe names (augment.recipe_names()).")
    flags.DEFINE_float("seconds", 5.0, "Timed seconds per measurement (after the first call).")
    flags.DEFINE_bool("ops", True, "Also measure each single op.")
    flags.DEFINE_bool("blur", False, "Also compare blur formulations (matmul/slices/depthwise).")
    flags.DEFINE_string("modes", "xla,graph", "xla (jit_compile=True) and/or graph (False).")


__all__ = ["blur_variants", "measure", "run_bench", "single_ops"]

if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
