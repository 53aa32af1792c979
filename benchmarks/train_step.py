"""Training throughput (images/s) of the product's train step, XLA on and off.

Times exactly what ``train_main`` runs - ``training.steps.make_train_step`` (augmentation +
forward + loss + gradients compiled per replica, the optimizer outside) with the optimizer
``training`` builds for a run - on one random batch held in memory, so the figure is the
step's own, not the input pipeline's::

    python -m benchmarks.train_step                     # net1 and net2, 64 px, batch 128
    python -m benchmarks.train_step --models=net2 --width=0.125 --image_size=32 --steps=10  # CPU
    python -m benchmarks.train_step --models=net2 --steps=50 --precisions=float32,mixed_float16

On a GPU the default adds mixed float16. Prints a table (one row per setting), the machine,
then one JSON line: ``{"machine": {...}, "results": [{"model", "xla", "precision",
"images_per_s", ...}]}``. Bad flags end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TABLE_HEADER = ("| model | px | batch | augment | xla | precision | images/s | ms/step "
                "| first call s |\n|---|---|---|---|---|---|---|---|---|")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _accelerators(backend: str) -> str | None:
    """``"N x <device name>"`` for the current Keras backend's accelerators, None without."""
    if backend == "tensorflow":
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    elif backend == "jax":
        import jax
        devices = [d for d in jax.devices() if d.platform != "cpu"]
        if devices:
            return f"{len(devices)} x {devices[0].device_kind}"
    elif backend == "torch":
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return None


def describe_machine() -> dict:
    """What a benchmark ran on: the accelerator (or CPU), the CPU, Keras and its backend."""
    import keras
    backend = keras.backend.backend()
    backend_module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    backend_version = getattr(sys.modules.get(backend_module), "__version__", "") \
        if backend_module else ""
    return {"device": _accelerators(backend) or "CPU", "cpu": _cpu_model(),
            "cpu_threads": os.cpu_count(), "keras": keras.__version__,
            "backend": f"{backend} {backend_version}".strip(),
            "python": platform.python_version()}


def product_optimizer(name: str, precision: str, learning_rate: float):
    """The optimizer ``training`` builds for a run with ``--optimizer=name`` (loss-scaled for
    mixed float16), so the benchmark times the real update, not a stand-in."""
    from training import config as config_lib
    from training.optimizers import make_optimizer
    cfg = config_lib.RunConfig(data="", out="", optimizer=name, precision=precision,
                               learning_rate=learning_rate)
    return make_optimizer(cfg, learning_rate)


def time_train_step(model_name: str, *, image_size: int, batch_size: int, steps: int,
                    warmup: int, xla: bool, precision: str, width: float = 1.0,
                    recipe: str = "none", optimizer: str = "adam", learning_rate: float = 1e-3,
                    num_classes: int = 200, seed: int = 0, baseline: bool = False) -> dict:
    """Times ``steps`` product train steps after ``warmup`` (compilation) steps.

    The global dtype policy is ``precision`` while the model is built and run, and is restored
    afterwards. ``baseline`` takes the recipe from ``benchmarks.augment_baseline`` (the code before
    issue 19), to compare compile times in one run.

    Returns:
      One result row: images/s, ms per step, first-call seconds, the mean training loss of the
      timed steps (cross-entropy + L2 penalties) and the setting.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    import augment
    import benchmarks.augment_baseline as augment_baseline
    import models
    from training import steps as steps_lib
    from training import strategy as strategy_lib

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        strategy = strategy_lib.make_strategy("auto")
        replicas = strategy.num_replicas_in_sync
        if batch_size % replicas:
            raise ValueError(f"batch {batch_size} is not divisible by {replicas} replicas")
        with strategy.scope():
            model = models.build(model_name, num_classes=num_classes, image_size=image_size,
                                 width=width)
            opt = product_optimizer(optimizer, precision, learning_rate)
            opt.build(model.trainable_variables)
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
        labels = rng.integers(0, num_classes, (batch_size,), dtype=np.int32)
        per_replica = batch_size // replicas
        dist = strategy.distribute_datasets_from_function(
            lambda ctx: tf.data.Dataset.from_tensors(
                (images[:per_replica], labels[:per_replica])).repeat().prefetch(4))
        step = steps_lib.make_train_step(
            model, opt, strategy,
            recipe=None if recipe == "none" else (augment_baseline if baseline else
                                                  augment).get_recipe(recipe),
            global_batch_size=batch_size, base_seed=seed, xla=xla)
        it = iter(dist)
        t0, cpu0 = time.perf_counter(), time.process_time()
        step.run(it, tf.constant(max(warmup, 1), tf.int32)).numpy()  # .numpy() waits
        first_call_s = time.perf_counter() - t0
        first_call_cpu_s = time.process_time() - cpu0
        t0 = time.perf_counter()
        totals = step.run(it, tf.constant(steps, tf.int32)).numpy()
        seconds = time.perf_counter() - t0
    finally:
        keras.config.set_dtype_policy(previous)
    named = dict(zip(steps_lib.TRAIN_TOTALS, (float(t) for t in totals), strict=True))
    ce_sum, count, reg_sum = named["ce_sum"], named["count"], named["reg_sum"]
    return {"model": model.name, "image_size": image_size, "batch_size": batch_size,
            "width": width, "augment": recipe, "xla": xla, "precision": precision,
            "optimizer": optimizer, "replicas": replicas, "steps": steps,
            "images_per_s": steps * batch_size / seconds, "step_ms": 1000 * seconds / steps,
            "first_call_s": first_call_s, "first_call_cpu_s": first_call_cpu_s,
            "augment_code": "baseline" if baseline else "current",
            "loss": ce_sum / count + reg_sum / steps,
            "params": int(model.count_params())}


def run_benchmark(names, *, image_size: int, batch_size: int, steps: int, warmup: int,
                  precisions, width: float, recipe: str, xla_modes=(True, False),
                  printer=print, baseline: bool = False) -> dict:
    """Times every (model, XLA, precision) setting, printing a table row as each finishes."""
    printer(TABLE_HEADER)
    results = []
    for name in names:
        for xla in xla_modes:
            for precision in precisions:
                r = time_train_step(name, image_size=image_size, batch_size=batch_size,
                                    steps=steps, warmup=warmup, xla=xla, precision=precision,
                                    width=width, recipe=recipe, baseline=baseline)
                results.append(r)
                printer(f"| {r['model']} | {image_size} | {batch_size} | {recipe} | "
                        f"{'on' if xla else 'off'} | {precision} | {r['images_per_s']:,.1f} | "
                        f"{r['step_ms']:.1f} | {r['first_call_s']:.1f} "
                        f"({r['first_call_cpu_s']:.1f} CPU) |")
    machine = describe_machine()
    printer("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    return {"machine": machine, "results": results}


def _define_flags():
    from absl import flags
    flags.DEFINE_list("models", ["net1", "net2"], "networks to time")
    flags.DEFINE_integer("image_size", 64, "image size (multiple of 8)", lower_bound=8)
    flags.DEFINE_integer("batch_size", 128, "global batch size", lower_bound=1)
    flags.DEFINE_integer("steps", 0, "timed steps (0: 100 on GPU, 1 on CPU)", lower_bound=0)
    flags.DEFINE_integer("warmup", 0, "untimed steps first, compilation included (0: 5 on "
                         "GPU, 1 on CPU)", lower_bound=0)
    flags.DEFINE_float("width", 1.0, "filter-count multiplier", lower_bound=1e-6)
    flags.DEFINE_string("augment", "none", "augmentation recipe inside the step")
    flags.DEFINE_list("precisions", [], "Keras dtype policies; default float32 (+ "
                      "mixed_float16 on GPU)")
    flags.DEFINE_bool("baseline_augment", False, "take --augment from "
                      "benchmarks.augment_baseline (the code before issue 19) to compare "
                      "compile times")
    flags.DEFINE_list("xla", ["on", "off"], "XLA settings to time (on, off)")


def main(argv):
    import tensorflow as tf
    from absl import flags

    import augment
    import models
    f = flags.FLAGS
    if len(argv) > 1:
        _usage(f"unexpected arguments {argv[1:]}")
    for name in f.models:
        if name not in models.NAMES:
            _usage(f"--models: unknown model {name!r}; expected some of {models.NAMES}")
    if f.augment != "none" and f.augment not in augment.RECIPE_NAMES:
        _usage(f"--augment={f.augment}: one of none, {', '.join(augment.RECIPE_NAMES)}")
    if not f.xla or any(x not in ("on", "off") for x in f.xla):
        _usage(f"--xla={','.join(f.xla)}: on and/or off")
    if f.image_size % 8:
        _usage(f"--image_size={f.image_size}: must be a multiple of 8")
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    precisions = f.precisions or (["float32", "mixed_float16"] if on_gpu else ["float32"])
    for p in precisions:
        if p not in ("float32", "mixed_float16", "mixed_bfloat16"):
            _usage(f"--precisions: unknown policy {p!r}")
    summary = run_benchmark(
        f.models, image_size=f.image_size, batch_size=f.batch_size,
        steps=f.steps or (100 if on_gpu else 1), warmup=f.warmup or (5 if on_gpu else 1),
        precisions=precisions, width=f.width, recipe=f.augment,
        xla_modes=tuple(x == "on" for x in f.xla), baseline=f.baseline_augment,
        printer=lambda line: print(line, flush=True))
    print(json.dumps(summary))


def _usage(message: str):
    print(f"benchmarks.train_step: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    from plumbing import cli as cli_lib
    _define_flags()
    cli_lib.run(main, __name__)
