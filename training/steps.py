"""The compiled per-replica train and eval steps.

Why not ``model.compile(jit_compile=True)`` + ``fit``: under ``MirroredStrategy`` Keras either
turns XLA off silently or fails on logical CPUs (README, "Execution"). What works on CPUs and
GPUs alike is an explicit split:

* ``compute`` — one ``tf.function(jit_compile=True)`` per replica holding augmentation, forward
  pass, loss and gradients (the expensive part, fused by XLA);
* ``optimizer.apply(grads, vars)`` outside it, which all-reduces the gradients across
  replicas and updates the mirrored variables;
* an outer ``tf.function`` that runs ``strategy.run`` for ``num_steps`` steps per call.

Only that outer loop goes through autograph (its ``for`` and ``break``): the per-replica step
and the eval step have no Python control flow on tensors, and converting the per-replica step
converted the optimizer's Keras code with it, about a CPU-second per trace (README, "Start-up
time").

Augmentation seeds are ``augment.step_seed(base_seed, global_step, replica_id)``: a pure
function of the position in training, so a resumed run draws the same augmentations. The
global step is ``optimizer.iterations``, which counts every step taken, including steps the
loss-scale optimizer skipped on an overflow (``training.optimizers``), so it also equals the
batches consumed and drives the learning-rate schedule in step with the data.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import tensorflow as tf

import augment

# Totals returned by a train call: CE summed over examples, correct top-1, examples, reg loss,
# and the steps run (fewer than asked when a step's loss was not finite: the call stops there).
TRAIN_TOTALS = ("ce_sum", "correct", "count", "reg_sum", "steps")
EVAL_TOTALS = ("ce_sum", "top1", "top5", "count")

# What the progress line says while the first call of a new train step traces and compiles
# it (seconds to minutes): a figure measured on this project's 2 loaded CPU cores (README).
COMPILING = ("compiling the train step (the first step includes it; an augmented phase "
             "typically takes 30 s to 2 min on 2 CPU cores, and --noxla, aug=none or "
             "--model=smoke trial runs start faster on a CPU)...")


def ranks_of_true_class(labels: tf.Tensor, probs: tf.Tensor) -> tf.Tensor:
    """How many classes score strictly higher than the true one (0 = top-1 hit).

    Pure arithmetic, so it compiles under XLA (unlike some top-k kernels) and top-k accuracy is
    ``rank < k``. Ties count in the true class's favour, as ``tf.math.in_top_k`` does. A row
    with any non-finite score gets the largest int32 rank, a miss for every k: a NaN model is
    never right (``NaN > x`` is false, so a plain count would call every NaN row a top-1 hit).
    """
    true_p = tf.gather(probs, tf.cast(labels, tf.int32), axis=1, batch_dims=1)
    rank = tf.reduce_sum(tf.cast(probs > true_p[:, None], tf.int32), axis=1)
    finite = tf.reduce_all(tf.math.is_finite(probs), axis=1)
    return tf.where(finite, rank, tf.int32.max)


@dataclasses.dataclass
class TrainStep:
    """A compiled train step for one (image size, batch, augmentation) signature.

    Attributes:
      run: ``run(iterator, num_steps) -> float32 [5]`` totals (see ``TRAIN_TOTALS``), reduced
        over replicas and summed over the steps; stops after the first step whose totals
        (loss included) are not finite, so the caller can name that step.
      compute: the inner per-replica ``tf.function`` (``jit_compile=xla``), exposed so tests
        and benchmarks can prove XLA compiled it; None when traced inline (see
        ``cross_replica_layers``).
      traced: the argument specs ``compute`` was traced for, one tuple per variant.
    """

    run: Callable
    compute: tf.types.experimental.GenericFunction | None
    traced: list = dataclasses.field(default_factory=list)


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy, *, recipe: Callable | None,
                    global_batch_size: int, base_seed: int, xla: bool = True,
                    cross_replica_layers: bool = False) -> TrainStep:
    """Builds the distributed train step (see the module docstring for the design).

    Args:
      model: built under ``strategy.scope()``; outputs float32 probabilities.
      optimizer: built under the same scope (a ``LossScaleOptimizer`` for mixed float16).
      strategy: the distribution strategy.
      recipe: an augmentation ``(images, seed) -> images`` or None; runs inside ``compute``.
      global_batch_size: examples per step over all replicas (the loss is averaged over it,
        since the optimizer sums gradients across replicas).
      base_seed: the run's seed, folded with the step and replica id for augmentation.
      xla: compile ``compute`` with XLA.
      cross_replica_layers: the model all-reduces inside its forward pass (synchronised
        BatchNorm). Under ``MirroredStrategy`` that all-reduce is a ``merge_call``, which TF
        refuses inside a nested ``tf.function`` (measured: "merge_call called while defining a
        new graph"), so with several replicas ``compute`` is traced inline into the outer
        function, without XLA, and ``TrainStep.compute`` is None.
    """
    replicas = strategy.num_replicas_in_sync
    variables = model.trainable_variables
    inline = cross_replica_layers and replicas > 1

    # No autograph: no Python control flow on tensors here, and converting the recipe's code
    # (its source parsed and rewritten) added ~30 CPU-s to an augmented phase's first step.
    @tf.autograph.experimental.do_not_convert
    def compute_fn(images, labels, seed):
        x = recipe(images, seed) if recipe is not None else images
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            ce = tf.cast(keras.losses.sparse_categorical_crossentropy(labels, probs), tf.float32)
            loss = tf.reduce_sum(ce) / global_batch_size
            reg = tf.add_n([tf.cast(l, tf.float32) for l in model.losses]) if model.losses \
                else tf.constant(0.0)
            total = loss + reg / replicas
            scaled = optimizer.scale_loss(total)
        grads = tape.gradient(scaled, variables)
        pred = tf.argmax(probs, axis=1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(pred == tf.cast(labels, tf.int32), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return grads, tf.stack([tf.reduce_sum(ce), correct, count, reg / replicas])

    compute = compute_fn if inline else tf.function(compute_fn, jit_compile=xla,
                                                     reduce_retracing=True)
    traced = []

    def replica_step(images, labels):
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = augment.step_seed(base_seed, optimizer.iterations, replica_id)
        specs = tuple(tf.TensorSpec(t.shape, t.dtype) for t in (images, labels, seed))
        if specs not in traced:  # Python runs only while tracing
            traced.append(specs)
        grads, totals = compute(images, labels, seed)
        optimizer.apply(grads, variables)
        return totals

    return TrainStep(run=_steps_loop(strategy, tf.autograph.experimental.do_not_convert(
        replica_step)), compute=None if inline else compute, traced=traced)


def _steps_loop(strategy: tf.distribute.Strategy, replica_step: Callable) -> Callable:
    """``run(iterator, num_steps)``: the replicas' steps in one ``tf.function``, stopping
    after the first step whose totals are not finite."""

    @tf.function
    def run(iterator, num_steps):
        totals = tf.zeros([len(TRAIN_TOTALS) - 1], tf.float32)
        done = tf.constant(0.0)
        for _ in tf.range(num_steps):
            images, labels = next(iterator)
            per_replica = strategy.run(replica_step, args=(images, labels))
            step_totals = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            totals += step_totals
            done += 1.0
            if not tf.reduce_all(tf.math.is_finite(step_totals)):
                break
        return tf.concat([totals, [done]], axis=0)

    return run


def make_eval_step(model: keras.Model, *, xla: bool = True) -> Callable:
    """``step(images, labels) -> float32 [4]`` totals (``EVAL_TOTALS``) plus probabilities.

    Runs on the default device (the first replica's copy of mirrored variables): validation
    is small next to training, and this avoids uneven last batches across replicas.
    """
    @tf.function(jit_compile=xla, reduce_retracing=True, autograph=False)
    def step(images, labels):
        probs = tf.cast(model(images, training=False), tf.float32)
        ce = keras.losses.sparse_categorical_crossentropy(labels, probs)
        rank = ranks_of_true_class(labels, probs)
        totals = tf.stack([tf.reduce_sum(ce),
                           tf.reduce_sum(tf.cast(rank < 1, tf.float32)),
                           tf.reduce_sum(tf.cast(rank < 5, tf.float32)),
                           tf.cast(tf.shape(labels)[0], tf.float32)])
        return totals, probs
    return step


def regularization_loss(model: keras.Model) -> float:
    """The model's current weight-decay term (added to val loss, as Keras reports it)."""
    return float(sum(float(l) for l in model.losses)) if model.losses else 0.0


def is_xla_compiled(fn: tf.types.experimental.GenericFunction, *args) -> bool:
    """True when ``fn``'s concrete function for ``args`` carries ``_XlaMustCompile=True``.

    This is what ``tf.function(jit_compile=True)`` sets and what XLA honours; Keras' silent
    fallbacks show up as its absence. ``args`` may be tensors or ``tf.TensorSpec``.
    """
    return _marked_for_xla(fn.get_concrete_function(*args))


def train_step_xla_compiled(step: TrainStep) -> bool:
    """True when every variant the step's inner function was traced for is marked for XLA
    (False when it was traced inline, or not yet traced).

    Reads the traces already made: asking ``get_concrete_function`` outside the replica
    context would trace the whole step (augmentation and model) once more.
    """
    if step.compute is None or not step.traced:
        return False
    # pylint: disable-next=protected-access
    traces = getattr(step.compute, "_list_all_concrete_functions", None)
    if traces is None:  # a TensorFlow without it: the public way, at the cost of a retrace
        return all(is_xla_compiled(step.compute, *specs) for specs in step.traced)
    concrete = list(traces())
    return bool(concrete) and all(_marked_for_xla(c) for c in concrete)


def _marked_for_xla(concrete) -> bool:
    attr = concrete.function_def.attr.get("_XlaMustCompile")
    return bool(attr is not None and attr.b)
