"""Training throughput (images/s) of the real train step, XLA on and off.

Measures exactly what ``train_main`` runs (``steps.make_train_step``: augmentation + forward
+ loss + gradients compiled per replica, optimizer outside) on random in-memory images, so
the figure is the step's own, not the input pipeline's::

    python -m training.bench                               # net1 and net2, 64 px, batch 128
    python -m training.bench --models=net2 --width=0.125 --image_size=32 --steps=10  # CPU
    python -m training.bench --models=net2 --steps=50 --precisions=float32,mixed_float16

On a GPU the default adds mixed precision. Prints one line per setting and ends with one JSON
line: ``{"device": ..., "results": [{"model", "xla", "precision", "images_per_s", ...}]}``.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def device_name() -> str:
    """The accelerator's name (GPU model) or the CPU model."""
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} threads)"
    except OSError:
        pass
    return "CPU"


def bench_one(model_name: str, *, image_size: int, batch_size: int, steps: int, warmup: int,
              xla: bool, precision: str, width: float, recipe: str, num_classes: int = 200,
              seed: int = 0) -> dict:
    """Times ``steps`` train steps after ``warmup`` (compilation) steps; returns a result row."""
    import keras
    import numpy as np
    import tensorflow as tf

    import augment
    import models
    from training import steps as steps_lib
    from training import strategy as strategy_lib

    keras.mixed_precision.set_global_policy(precision)
    strategy = strategy_lib.make_strategy("auto")
    with strategy.scope():
        model = models.build(model_name, num_classes=num_classes, image_size=image_size,
                             width=width)
        opt = keras.optimizers.Adam(1e-3)
        if precision == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(model.trainable_variables)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=(batch_size,), dtype=np.int32)
    per_replica = batch_size // strategy.num_replicas_in_sync
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensors(
            (images[:per_replica], labels[:per_replica])).repeat().prefetch(4))
    step = steps_lib.make_train_step(
        model, opt, strategy, recipe=None if recipe == "none" else augment.get_recipe(recipe),
        global_batch_size=batch_size, base_seed=seed, xla=xla)
    it = iter(dist)
    t0 = time.perf_counter()
    step.run(it, tf.constant(warmup, tf.int32)).numpy()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    step.run(it, tf.constant(steps, tf.int32)).numpy()
    seconds = time.perf_counter() - t0
    keras.mixed_precision.set_global_policy("float32")
    return {"model": model_name, "image_size": image_size, "batch_size": batch_size,
            "width": width, "augment": recipe, "xla": xla, "precision": precision,
            "replicas": strategy.num_replicas_in_sync, "steps": steps,
            "images_per_s": steps * batch_size / seconds, "step_ms": 1000 * seconds / steps,
            "first_call_s": compile_s, "params": model.count_params()}


def main(argv):
    from absl import flags
    import tensorflow as tf
    f = flags.FLAGS
    if len(argv) > 1:
        sys.exit(f"bench: unexpected arguments {argv[1:]}")
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    precisions = f.precisions.split(",") if f.precisions else (
        ["float32", "mixed_float16"] if on_gpu else ["float32"])
    steps = f.steps or (100 if on_gpu else 1)
    warmup = f.warmup or (5 if on_gpu else 1)
    results = []
    for name in f.models.split(","):
        for xla in (True, False):
            for precision in precisions:
                r = bench_one(name, image_size=f.image_size, batch_size=f.batch_size,
                              steps=steps, warmup=warmup, xla=xla, precision=precision,
                              width=f.width, recipe=f.augment)
                results.append(r)
                print(f"{name:>12} xla={'on ' if xla else 'off'} {precision:>14}: "
                      f"{r['images_per_s']:9.1f} images/s ({r['step_ms']:.1f} ms/step, first "
                      f"call {r['first_call_s']:.1f} s)", flush=True)
    print(json.dumps({"device": device_name(), "results": results}))


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("models", "net1,net2", "comma-separated model names")
    flags.DEFINE_integer("image_size", 64, "image size", lower_bound=8)
    flags.DEFINE_integer("batch_size", 128, "global batch size", lower_bound=1)
    flags.DEFINE_integer("steps", 0, "timed steps (0: 100 on GPU, 1 on CPU)", lower_bound=0)
    flags.DEFINE_integer("warmup", 0, "untimed steps first, compilation included (0: 5 on "
                         "GPU, 1 on CPU)", lower_bound=0)
    flags.DEFINE_float("width", 1.0, "filter-count multiplier")
    flags.DEFINE_string("augment", "none", "augmentation recipe inside the step")
    flags.DEFINE_string("precisions", "", "comma-separated; default float32 (+ mixed_float16 "
                        "on GPU)")
    app.run(main)
