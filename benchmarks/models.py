"""Train-step throughput and FLOPs per image of the networks, on TensorFlow or any Keras backend.

    python -m benchmarks.models                               # CPU-sized defaults
    python -m benchmarks.models --models net1,net2 --batch 128 --size 64 --steps 50 \\
        --precision mixed_bfloat16                            # on a GPU: the product's step
    KERAS_BACKEND=jax python -m benchmarks.models --backend_neutral --models net2 \\
        --batch 128 --size 64 --steps 100 --precision mixed_bfloat16   # any Keras backend

Two modes, both on synthetic batches made once (the input pipeline is not measured):

* default (TensorFlow): the product's own train step, ``training.steps.make_train_step`` with
  the optimizer a run builds (``--optimizer``, RMSprop by default), no augmentation, XLA unless
  ``--noxla`` (via ``benchmarks.train_step.time_train_step``);
* ``--backend_neutral``: a step written in Keras only, on whatever ``KERAS_BACKEND`` is:
  ``model.stateless_call`` (loss = cross-entropy + the model's L2 penalties), gradients by the
  backend's own autodiff, one optimizer update (RMSprop by default) - under JAX all stateless
  in one ``jax.jit`` (see ``make_keras_step``). The batch is made once on the default device
  with ``keras.random``. This mode imports TensorFlow only when it is the backend, so it runs
  where TensorFlow is not installed.

FLOPs are counted analytically from the layers (``conv_flops``): every convolution costs
``2*H_out*W_out*k*k*C_in*C_out`` per image forward; BatchNorm, ReLU, pooling, concat and
softmax are ignored (<1% here); a training step counts as 3x forward. Prints a table, the
machine, then one JSON line. Bad flags end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import ops  # noqa: E402

import models  # noqa: E402
from benchmarks import train_step as train_step_bench  # noqa: E402

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
NEUTRAL_PRECISIONS = ("float32", "mixed_bfloat16")  # no loss scaling in the stateless step
OPTIMIZERS = ("rmsprop", "adam", "sgd")
NEUTRAL_BACKENDS = ("jax", "tensorflow")
FLOPS_METHOD = ("analytic: 2*H*W*k*k*Cin*Cout per conv per image forward (BN/ReLU/pool "
                "ignored); train step = 3x forward")
TABLE_HEADER = ("| model | batch | px | precision | images/s | s per 100k images | ms/step "
                "| TFLOP/s | compile s |\n|---|---|---|---|---|---|---|---|---|")


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


def keras_optimizer(name: str, learning_rate: float = 1e-4) -> keras.optimizers.Optimizer:
    """A plain Keras optimizer for the backend-neutral step (Keras' default epsilon)."""
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def make_keras_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, *,
                    xla: bool = True):
    """``step(state, images, labels) -> (state, loss)``: one training step written in Keras.

    The forward pass is ``model.stateless_call`` (loss = the batch's mean cross-entropy plus
    the model's L2 penalties, both from the weights before the update) and the gradients come
    from the backend's own autodiff. Under JAX the whole step is stateless (``state`` from
    ``initial_state``, updated by ``optimizer.stateless_apply``) and ``jax.jit``-compiled. Keras
    refuses ``stateless_apply`` on TensorFlow, so there the update is ``optimizer.apply`` on the
    model's variables inside one ``tf.function(jit_compile=xla)`` and ``state`` is None.

    Raises:
        ValueError: for a backend other than ``NEUTRAL_BACKENDS``.
    """
    backend = keras.backend.backend()

    def loss_fn(trainable, non_trainable, images, labels):
        probs, non_trainable, penalties = model.stateless_call(
            trainable, non_trainable, images, training=True, return_losses=True)
        loss = ops.mean(keras.losses.sparse_categorical_crossentropy(labels, probs))
        for penalty in penalties:
            loss = loss + ops.cast(penalty, loss.dtype)
        return loss, non_trainable

    if backend == "jax":
        import jax
        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

        def jax_step(state, images, labels):
            trainable, non_trainable, opt_vars = state
            (loss, non_trainable), grads = value_and_grad(trainable, non_trainable, images,
                                                          labels)
            trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
            return (trainable, non_trainable, opt_vars), loss

        return jax.jit(jax_step, donate_argnums=0) if xla else jax_step
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=xla)
        def tf_step(state, images, labels):
            trainable = [tf.identity(v.value) for v in model.trainable_variables]
            non_trainable = [tf.identity(v.value) for v in model.non_trainable_variables]
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                loss, non_trainable = loss_fn(trainable, non_trainable, images, labels)
            grads = tape.gradient(loss, trainable)
            optimizer.apply(grads, model.trainable_variables)
            for variable, value in zip(model.non_trainable_variables, non_trainable):
                variable.assign(value)
            return state, loss

        return tf_step
    raise ValueError(f"--backend_neutral runs on the {' and '.join(NEUTRAL_BACKENDS)} "
                     f"backends, not {backend!r}")


def initial_state(model: keras.Model, optimizer: keras.optimizers.Optimizer):
    """The step's state under JAX: copies of the model's and optimizer's variable values
    (``(trainable, non_trainable, optimizer)``); None on TensorFlow (see ``make_keras_step``)."""
    if keras.backend.backend() == "tensorflow":
        return None

    def values(variables):
        return [ops.copy(v.value) for v in variables]
    return (values(model.trainable_variables), values(model.non_trainable_variables),
            values(optimizer.variables))


def time_backend_neutral(name: str, *, batch: int, size: int, steps: int, warmup: int,
                         xla: bool, precision: str, width: float = 1.0, num_classes: int = 200,
                         optimizer: str = "rmsprop", seed: int = 0) -> dict:
    """Times ``steps`` stateless steps of network ``name`` after ``warmup`` (compile) steps."""
    if precision not in NEUTRAL_PRECISIONS:
        raise ValueError(f"--backend_neutral precision must be one of {NEUTRAL_PRECISIONS} "
                         f"(mixed_float16 needs loss scaling: use the TensorFlow mode)")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = models.build(name, num_classes, size, width)
        opt = keras_optimizer(optimizer)
        opt.build(model.trainable_variables)
        step = make_keras_step(model, opt, xla=xla)
        state = initial_state(model, opt)
        images = ops.cast(keras.random.randint((batch, size, size, 3), 0, 256,
                                               seed=keras.random.SeedGenerator(seed)), "uint8")
        labels = keras.random.randint((batch,), 0, num_classes,
                                      seed=keras.random.SeedGenerator(seed + 1))
        start = time.perf_counter()
        for _ in range(max(warmup, 1)):
            state, loss = step(state, images, labels)
            float(loss)  # waits for the device
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            state, loss = step(state, images, labels)
        final_loss = float(loss)  # the last step depends on every earlier one
        seconds = time.perf_counter() - start
    finally:
        keras.config.set_dtype_policy(previous)
    return {"model": model.name, "params": int(model.count_params()),
            "images_per_s": batch * steps / seconds, "step_ms": 1e3 * seconds / steps,
            "warmup_s": warmup_s, "loss": final_loss}


def bench_model(name: str, *, batch: int, size: int, steps: int, warmup: int, xla: bool,
                precision: str, width: float = 1.0, num_classes: int = 200,
                optimizer: str = "rmsprop", backend_neutral: bool = False) -> dict:
    """One result row: throughput of one network's train step, with its FLOPs per image."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend_neutral:
        r = time_backend_neutral(name, batch=batch, size=size, steps=steps, warmup=warmup,
                                 xla=xla, precision=precision, width=width,
                                 num_classes=num_classes, optimizer=optimizer)
    else:
        t = train_step_bench.time_train_step(
            name, image_size=size, batch_size=batch, steps=steps, warmup=warmup, xla=xla,
            precision=precision, width=width, optimizer=optimizer, learning_rate=1e-4,
            num_classes=num_classes)
        r = {"model": t["model"], "params": t["params"], "images_per_s": t["images_per_s"],
             "step_ms": t["step_ms"], "warmup_s": t["first_call_s"], "loss": t["loss"]}
    fwd = gflops_per_image(name, size, num_classes, width)
    return {**r, "batch": batch, "size": size, "precision": precision, "xla": xla,
            "s_per_100k_images": 1e5 / r["images_per_s"],
            "fwd_gflops_per_image": fwd, "train_gflops_per_image": 3 * fwd,
            "achieved_tflops": r["images_per_s"] * 3 * fwd / 1e3}


def run_benchmark(names, *, batch: int, size: int, steps: int, warmup: int, xla: bool,
                  precision: str, width: float = 1.0, num_classes: int = 200,
                  optimizer: str = "rmsprop", backend_neutral: bool = False,
                  printer=print) -> dict:
    """Benchmarks each network in ``names``: a table row each, then the machine; returns the
    summary that ``main`` prints as its JSON line."""
    backend = keras.backend.backend()
    if not backend_neutral and backend != "tensorflow":
        raise ValueError(f"KERAS_BACKEND={backend}: the product's step needs TensorFlow; "
                         "pass --backend_neutral")
    step = (f"Keras-only (backend-neutral) step on Keras {keras.__version__} / {backend}"
            if backend_neutral else "product train step (training.steps.make_train_step)")
    printer(f"{step}, {optimizer}, XLA {'on' if xla else 'off'}")
    printer(TABLE_HEADER)
    results = []
    for name in names:
        r = bench_model(name, batch=batch, size=size, steps=steps, warmup=warmup, xla=xla,
                        precision=precision, width=width, num_classes=num_classes,
                        optimizer=optimizer, backend_neutral=backend_neutral)
        printer(f"| {r['model']} | {batch} | {size} | {precision} | {r['images_per_s']:,.0f} | "
                f"{r['s_per_100k_images']:.1f} | {r['step_ms']:.1f} | "
                f"{r['achieved_tflops']:.2f} | {r['warmup_s']:.1f} |")
        results.append(r)
    machine = train_step_bench.describe_machine()
    printer("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    return {"machine": machine, "step": step, "optimizer": optimizer, "size": size,
            "batch": batch, "steps": steps, "warmup": warmup, "xla": xla,
            "precision": precision, "width": width, "num_classes": num_classes,
            "flops": FLOPS_METHOD, "results": results}


def main(argv):
    from absl import flags
    f = flags.FLAGS
    if len(argv) > 1:
        _usage(f"unexpected arguments {argv[1:]}")
    for name in f.models:
        if name not in models.NAMES:
            _usage(f"--models: unknown model {name!r}; expected some of {models.NAMES}")
    if f.size % 8:
        _usage(f"--size={f.size}: must be a multiple of 8")
    backend = keras.backend.backend()
    if f.backend_neutral:
        if backend not in NEUTRAL_BACKENDS:
            _usage(f"KERAS_BACKEND={backend}: --backend_neutral runs on "
                   f"{', '.join(NEUTRAL_BACKENDS)}")
        if f.precision not in NEUTRAL_PRECISIONS:
            _usage(f"--precision={f.precision}: --backend_neutral takes "
                   f"{', '.join(NEUTRAL_PRECISIONS)}")
    elif backend != "tensorflow":
        _usage(f"KERAS_BACKEND={backend}: the product's step needs TensorFlow; pass "
               "--backend_neutral")
    summary = run_benchmark(f.models, batch=f.batch, size=f.size, steps=f.steps,
                            warmup=f.warmup, xla=f.xla, precision=f.precision, width=f.width,
                            num_classes=f.num_classes, optimizer=f.optimizer,
                            backend_neutral=f.backend_neutral,
                            printer=lambda line: print(line, flush=True))
    print(json.dumps(summary))


def _usage(message: str):
    print(f"benchmarks.models: {message}", file=sys.stderr)
    sys.exit(2)


def _define_flags():
    from absl import flags
    flags.DEFINE_list("models", ["net1", "net2"], f"networks to time, from {models.NAMES}")
    flags.DEFINE_integer("batch", 16, "batch size (128 is the papers' Network 2 batch)",
                         lower_bound=1)
    flags.DEFINE_integer("size", 64, "square input size in pixels (multiple of 8)",
                         lower_bound=8)
    flags.DEFINE_integer("steps", 3, "timed steps; small by default because CPUs are slow",
                         lower_bound=1)
    flags.DEFINE_integer("warmup", 1, "untimed steps first (XLA compilation happens here)",
                         lower_bound=1)
    flags.DEFINE_bool("xla", True, "compile the training step with XLA (--noxla: off)")
    flags.DEFINE_enum("precision", "float32", PRECISIONS, "Keras dtype policy")
    flags.DEFINE_float("width", 1.0, "filter multiplier (e.g. 0.0625 for a quick smoke run)",
                       lower_bound=1e-6)
    flags.DEFINE_integer("num_classes", 200, "classifier width", lower_bound=1)
    flags.DEFINE_enum("optimizer", "rmsprop", OPTIMIZERS, "the optimizer of the timed step")
    flags.DEFINE_bool("backend_neutral", False,
                      "time a Keras-only stateless step on KERAS_BACKEND (jax or tensorflow) "
                      "instead of the product's TensorFlow step")


if __name__ == "__main__":
    from plumbing import cli as cli_lib
    _define_flags()
    cli_lib.run(main, __name__)
