"""Training-step throughput and FLOPs per image of the networks, to compare with the hardware.

    python -m models.bench                                   # CPU-sized defaults
    python -m models.bench --models net1,net2 --batch 128 --size 64 --steps 50 \\
        --xla --precision mixed_bfloat16                     # on a GPU

For each network it times full training steps (forward + backward + Adam update, one
``tf.function``, XLA-compiled unless ``--noxla``) on random uint8 batches already on the
device, so the input pipeline is not measured, and prints images/second next to the FLOPs per
image. FLOPs are counted analytically from the layers (``conv_flops``): every convolution
costs ``2*H_out*W_out*k*k*C_in*C_out`` per image forward; BatchNorm, ReLU, pooling, concat and
softmax are ignored (<1% here); a training step is counted as 3x forward (backward ~2x
forward: gradients w.r.t. inputs and weights). The last line printed is one JSON object.
"""

from __future__ import annotations

import json
import time

import keras
import tensorflow as tf

import models

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
FLOPS_METHOD = ("analytic: 2*H*W*k*k*Cin*Cout per conv per image forward (BN/ReLU/pool "
                "ignored); train step = 3x forward")


def conv_flops(model: keras.Model) -> int:
    """Forward FLOPs per image of all Conv2D layers of a model with a fixed input size.

    Raises:
        ValueError: if a conv's output height/width is unknown (build with ``image_size``).
    """
    total = 0
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        _, height, width, c_out = layer.output.shape
        if height is None or width is None:
            raise ValueError(f"{layer.name}: unknown spatial size; build with image_size")
        k_h, k_w, c_in, _ = layer.kernel.shape
        total += 2 * height * width * k_h * k_w * c_in * c_out
    return int(total)


def gflops_per_image(name: str, image_size: int = 64, num_classes: int = 200,
                     width: float = 1.0) -> float:
    """Forward GFLOPs per image of network ``name`` at ``image_size`` (see ``conv_flops``)."""
    return conv_flops(models.build(name, num_classes, image_size, width)) / 1e9


def make_train_step(model: keras.Model, optimizer, *, jit_compile: bool):
    """One training step as a single ``tf.function``: loss (+ L2 penalties), grads, update.

    Under ``mixed_float16`` pass a ``keras.optimizers.LossScaleOptimizer``: the loss is scaled
    before differentiation and the optimizer unscales, as in real training.
    """
    variables = model.trainable_variables
    scale = getattr(optimizer, "scale_loss", lambda loss: loss)

    @tf.function(jit_compile=jit_compile)
    def step(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, probs))
            if model.losses:
                loss += tf.add_n([tf.cast(l, loss.dtype) for l in model.losses])
            scaled = scale(loss)
        grads = tape.gradient(scaled, variables)
        optimizer.apply(grads, variables)
        return loss

    return step


def bench_model(name: str, *, batch: int, size: int, steps: int, warmup: int, xla: bool,
                precision: str, width: float = 1.0, num_classes: int = 200,
                seed: int = 0) -> dict:
    """Times ``steps`` training steps of ``name`` after ``warmup`` (compile) steps.

    The global dtype policy is set to ``precision`` while the model is built and restored
    afterwards.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = models.build(name, num_classes, size, width)
        optimizer = keras.optimizers.Adam(1e-4)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        step = make_train_step(model, optimizer, jit_compile=xla)
        images = tf.cast(tf.random.stateless_uniform(
            [batch, size, size, 3], seed=[seed, 1], maxval=256, dtype=tf.int32), tf.uint8)
        labels = tf.random.stateless_uniform([batch], seed=[seed, 2], maxval=num_classes,
                                             dtype=tf.int32)
        start = time.perf_counter()
        for _ in range(warmup):
            float(step(images, labels))  # float() waits for the device
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(images, labels)
        final_loss = float(loss)
        elapsed = time.perf_counter() - start
    finally:
        keras.config.set_dtype_policy(previous)
    fwd = conv_flops(model) / 1e9
    images_per_sec = batch * steps / elapsed
    return {
        "model": model.name,
        "params": int(model.count_params()),
        "images_per_sec": round(images_per_sec, 2),
        "step_ms": round(1e3 * elapsed / steps, 2),
        "warmup_s": round(warmup_s, 2),
        "fwd_gflops_per_image": round(fwd, 3),
        "train_gflops_per_image": round(3 * fwd, 3),
        "achieved_tflops": round(images_per_sec * 3 * fwd / 1e3, 3),
        "final_loss": round(final_loss, 4),
    }


def device_name() -> str:
    """A short description of the device the benchmark ran on."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)}x {details.get('device_name', 'GPU')}"
    return "CPU"


def run_benchmark(names, *, batch: int, size: int, steps: int, warmup: int, xla: bool,
                  precision: str, width: float = 1.0, num_classes: int = 200,
                  printer=print) -> dict:
    """Benchmarks each network in ``names``; prints one line per network; returns the summary."""
    results = []
    for name in names:
        r = bench_model(name, batch=batch, size=size, steps=steps, warmup=warmup, xla=xla,
                        precision=precision, width=width, num_classes=num_classes)
        printer(f"{r['model']:>14}  {size}px batch {batch}  xla={'on' if xla else 'off'}  "
                f"{precision}: {r['images_per_sec']:.1f} img/s train "
                f"({r['step_ms']:.1f} ms/step)  {r['fwd_gflops_per_image']:.2f} GFLOP/img fwd, "
                f"{r['train_gflops_per_image']:.2f} train -> {r['achieved_tflops']:.2f} TFLOP/s  "
                f"[{r['params']:,} params, compile+warmup {r['warmup_s']:.1f}s]")
        results.append(r)
    return {"device": device_name(), "size": size, "batch": batch, "steps": steps,
            "warmup": warmup, "xla": xla, "precision": precision, "width": width,
            "num_classes": num_classes, "flops": FLOPS_METHOD, "results": results}


def main(argv):
    from absl import flags
    del argv
    f = flags.FLAGS
    summary = run_benchmark(f.models, batch=f.batch, size=f.size, steps=f.steps,
                            warmup=f.warmup, xla=f.xla, precision=f.precision, width=f.width,
                            num_classes=f.num_classes)
    print(json.dumps(summary))


def _define_flags():
    from absl import flags
    flags.DEFINE_list("models", ["net1", "net2"], f"networks to time, from {models.NAMES}")
    flags.DEFINE_integer("batch", 16, "batch size (128 is the papers' Network 2 batch)")
    flags.DEFINE_integer("size", 64, "square input size in pixels (multiple of 8)")
    flags.DEFINE_integer("steps", 3, "timed steps; small by default because CPUs are slow")
    flags.DEFINE_integer("warmup", 1, "untimed steps first (XLA compilation happens here)")
    flags.DEFINE_bool("xla", True, "compile the training step with XLA (--noxla: off)")
    flags.DEFINE_enum("precision", "float32", PRECISIONS, "Keras dtype policy")
    flags.DEFINE_float("width", 1.0, "filter multiplier (e.g. 0.0625 for a quick smoke run)")
    flags.DEFINE_integer("num_classes", 200, "classifier width")


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
