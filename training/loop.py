"""The fit loop: curriculum phases, checkpoints and exact resume, per-epoch outputs.

Resume is exact because everything random is a function of the position in training:
the training data are one stream of seeded data passes (``pipeline.training_records``) read
from the example the checkpoint recorded, augmentation seeds come from ``(seed, global step,
replica id)``, and the learning rate from the optimizer's step (Triangular2) or from the
checkpointed plateau state. A checkpoint holds the model, the optimizer (step, slots, learning
rate), the epoch counter, the stream position, the plateau state, the metrics history and the
best weights (of the run, and of the phase for ``init=best``); re-running the same command
continues after the last checkpointed epoch, neither repeating nor skipping one. ``best.keras``
is exported only after the checkpoint that records its weights.

Output folder (``cfg.out``)::

    config.json          effective settings (a different run refuses to start here)
    flags.txt            the effective flags (written by train_main)
    checkpoints/         tf.train.CheckpointManager files
    history.csv          one row per epoch (reports.CSV_FIELDS); history.json the same
    loss.png accuracy.png
    best.keras           the model with the best val top-1 so far (as of the last checkpoint)
    tensorboard/         tf.summary scalars
    eval/                the final evaluation report of best.keras (training.evaluate)
"""

from __future__ import annotations

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

import augment
import models
from tinyimagenet_tfrecords import pipeline
from training import cluster as cluster_lib
from training import config as config_lib
from training import console
from training import evaluate as evaluate_lib
from training import fileio
from training import multiworker
from training import optimizers as optimizers_lib
from training import reports
from training import schedules
from training import steps as steps_lib
from training import strategy as strategy_lib
from training.errors import Diverged, RunError
from training.run_folder import check_output_folder  # noqa: F401  (also used by tests)

CONFIG_NAME = "config.json"




def steps_per_epoch(cfg: config_lib.RunConfig, phase: config_lib.Phase,
                    num_train: int) -> int:
    """``cfg.steps_per_epoch`` if set, else enough batches to see every training image once
    (782 for 100,000 images at batch 128)."""
    return cfg.steps_per_epoch or max(1, math.ceil(num_train / phase.batch_size))


def make_schedule(cfg: config_lib.RunConfig, num_train: int):
    """The learning rate: a :class:`schedules.Triangular2` over all phases or a constant."""
    if cfg.lr_schedule == "triangular2":
        table = [{"epochs": p.epochs, "min_lr": p.min_lr, "max_lr": p.max_lr,
                  "step_epochs": p.step_epochs} for p in cfg.phases]
        spe = [steps_per_epoch(cfg, p, num_train) for p in cfg.phases]
        return schedules.Triangular2(schedules.phases_from_epochs(table, spe))
    return cfg.learning_rate


class TrainState(tf.Module):
    """Loop state saved in every checkpoint next to the model and optimizer."""

    def __init__(self):
        super().__init__(name="train_state")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.phase = tf.Variable(0, dtype=tf.int64, trainable=False, name="phase")
        self.best_val_acc = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")
        # Training examples consumed so far (over all replicas): the data stream's position.
        self.examples = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples")

    def get_history(self) -> list[dict]:
        return json.loads(self.history.numpy().decode("utf-8"))


class WeightCopy(tf.Module):
    """A copy of a model's weights (BatchNorm statistics included) kept in the checkpoint.

    Holds the best weights of the run (exported as ``best.keras`` only after the checkpoint
    that records them) and, for phases with ``init=best``, the best weights of the current
    phase. ``val_acc`` is -1 until a first copy is taken.
    """

    def __init__(self, model: keras.Model, name: str):
        super().__init__(name=name)
        self.values = [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False)
                       for w in model.weights]
        self.val_acc = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="val_acc")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")

    def take(self, model: keras.Model, val_acc: float, epoch: int) -> None:
        for v, w in zip(self.values, model.weights, strict=True):
            v.assign(w.value)
        self.val_acc.assign(val_acc)
        self.epoch.assign(epoch)

    def put(self, model: keras.Model) -> None:
        for v, w in zip(self.values, model.weights, strict=True):
            w.assign(v)

    def forget(self) -> None:
        self.val_acc.assign(-1.0)
        self.epoch.assign(0)


def batch_norm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += batch_norm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
    return found


def set_bn_momentum(model: keras.Model, momentum: float) -> int:
    """Sets every BatchNormalization layer's moving-average momentum; returns how many.

    Keras' 0.99 needs several hundred steps before the moving statistics used at validation
    describe the network; short CPU runs (tests, demos) use e.g. 0.9. Full recipes keep 0.99.
    """
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def xla_compiled(step: steps_lib.TrainStep) -> bool:
    """True when every traced variant of the step's inner function is marked for XLA."""
    if step.compute is None:  # traced inline (synchronised BatchNorm on several replicas)
        return False
    concretes = step.compute._list_all_concrete_functions()  # noqa: SLF001 - tracing record
    return bool(concretes) and all(
        c.function_def.attr["_XlaMustCompile"].b if "_XlaMustCompile" in c.function_def.attr
        else False for c in concretes)


def _setup_precision(precision: str) -> None:
    keras.mixed_precision.set_global_policy(
        "float32" if precision == "float32" else precision)


def _model_image_size(cfg: config_lib.RunConfig) -> int | None:
    sizes = {p.image_size for p in cfg.phases} | {cfg.val_image_size}
    return sizes.pop() if len(sizes) == 1 else None


def _log(msg: str) -> None:
    console.log(msg)


def run(cfg: config_lib.RunConfig, manifest: dict, *, flags_text: str = "") -> dict:
    """Trains (or resumes) the run ``cfg`` describes; returns the final summary dict.

    Called by ``training.run`` (``training/runner.py``), which has validated ``cfg``, loaded
    the build's ``manifest`` and checked its shards.

    Under a multi-worker ``TF_CONFIG`` every worker calls this with the same ``cfg``; only
    the chief writes ``cfg.out`` (see ``training.multiworker``), and a lost worker ends the
    others with a ``RunFailure``.

    Args:
      cfg: the validated settings.
      manifest: the build's manifest (``manifest.load_manifest(cfg.data)``).
      flags_text: the effective command-line flags, saved as ``flags.txt`` for the record.

    Raises:
      RunError: bad output folder or a batch the replicas do not divide.
    """
    cluster = cluster_lib.from_environment()
    with cluster_lib.peer_failures(cluster):
        return _run(cfg, manifest, cluster, flags_text=flags_text)


def _run(cfg: config_lib.RunConfig, manifest: dict, cluster, *, flags_text: str) -> dict:
    num_train = manifest["splits"]["train"]["num_examples"]
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    _setup_precision(cfg.precision)
    strategy = strategy_lib.make_strategy(cluster_lib.strategy_name(cfg.strategy, cluster),
                                          cluster=cluster, timeout_s=cfg.cluster_timeout)
    chief = cluster_lib.is_chief(strategy)  # the only writer of cfg.out
    for i, p in enumerate(cfg.phases, 1):
        if p.batch_size % strategy.num_replicas_in_sync:
            raise RunError(f"phase {i}: global batch {p.batch_size} is not divisible by "
                           f"{strategy.num_replicas_in_sync} replicas")
    # Only now, with every input checked, is the output folder touched.
    fingerprint = cfg.fingerprint()
    cluster_lib.check_same_settings(strategy, fingerprint)
    if chief:
        resuming = check_output_folder(cfg.out, fingerprint)
        fileio.makedirs(cfg.out)
        if not resuming:
            reports.atomic_write_json(os.path.join(cfg.out, CONFIG_NAME), fingerprint)
        if flags_text:
            reports.atomic_write_text(os.path.join(cfg.out, "flags.txt"), flags_text)

    _log(f"strategy: {strategy_lib.describe(strategy)}; XLA {'on' if cfg.xla else 'off'}; "
         f"precision {cfg.precision}")
    with strategy.scope():
        model = models.build(cfg.model, num_classes=manifest["num_classes"],
                             image_size=_model_image_size(cfg), width=cfg.width)
        if cfg.bn_momentum:
            set_bn_momentum(model, cfg.bn_momentum)
        if cfg.sync_bn:
            set_bn_synchronized(model)
        optimizer = optimizers_lib.make_optimizer(cfg, make_schedule(cfg, num_train))
        optimizer.build(model.trainable_variables)
        plateau = schedules.ReduceLROnPlateau(cfg.plateau_factor, cfg.plateau_patience,
                                              cfg.plateau_min_lr)
    _warn_small_replica_batches(cfg, strategy.num_replicas_in_sync)
    if cfg.sync_bn and cfg.xla and strategy.num_replicas_in_sync > 1:
        _log("warning: --sync_bn with several replicas: the per-replica step runs without XLA "
             "(MirroredStrategy's all-reduce cannot sit inside the compiled function)")
    # Loop bookkeeping is per process, not mirrored: MultiWorkerMirroredStrategy cannot
    # broadcast the string history to the other workers (every worker computes the same one).
    state = TrainState()
    best = WeightCopy(model, "best")
    parts = dict(model=model, optimizer=optimizer, state=state, plateau=plateau, best=best)
    phase_best = None
    if any(p.init == "best" for p in cfg.phases):
        phase_best = parts["phase_best"] = WeightCopy(model, "phase_best")
    ckpt = tf.train.Checkpoint(**parts)
    manager = multiworker.CheckpointManager(ckpt, os.path.join(cfg.out, "checkpoints"),
                                            chief=chief, max_to_keep=cfg.keep_checkpoints)
    best_path = os.path.join(cfg.out, "best.keras")
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        _log(f"resumed from {manager.latest_checkpoint} after epoch {int(state.epoch.numpy())}")
    exported = 0  # the epoch whose best weights best.keras holds (0: none written by us)
    if chief and manager.latest_checkpoint and int(best.epoch.numpy()):
        # The checkpoint is the record: best.keras may lag it (killed before the export).
        _export_best(model, best, best_path)
        exported = int(best.epoch.numpy())
    history = state.get_history()
    if chief:
        _write_history(cfg.out, history)

    eval_step = steps_lib.make_eval_step(model, xla=cfg.xla)
    train_steps: dict[tuple, steps_lib.TrainStep] = {}
    writer = multiworker.summary_writer(os.path.join(cfg.out, "tensorboard"), chief=chief)
    stream = None  # (phase index, iterator over the training stream)

    for epoch in range(int(state.epoch.numpy()), cfg.total_epochs):
        phase_idx, phase = cfg.phase_at(epoch)
        if epoch == cfg.phase_start(phase_idx) and phase_best is not None:
            if phase.init == "best" and int(phase_best.epoch.numpy()):
                phase_best.put(model)
                _log(f"phase {phase_idx + 1}: starting from the best weights of phase "
                     f"{phase_idx} (epoch {int(phase_best.epoch.numpy())}, val top-1 "
                     f"{float(phase_best.val_acc.numpy()):.4f})")
            phase_best.forget()
        step = train_steps.get(phase.signature)
        compiling = step is None
        if step is None:
            recipe = None if phase.augment == "none" else augment.get_recipe(phase.augment)
            step = train_steps[phase.signature] = steps_lib.make_train_step(
                model, optimizer, strategy, recipe=recipe, global_batch_size=phase.batch_size,
                base_seed=cfg.seed, xla=cfg.xla, cross_replica_layers=cfg.sync_bn)
        if stream is None or stream[0] != phase_idx:
            # One stream per phase, continued across its epochs; a new phase (other batch or
            # image size) picks the stream up at the same example.
            stream = (phase_idx, _training_stream(cfg, strategy, phase,
                                                  int(state.examples.numpy())))
        n_steps = steps_per_epoch(cfg, phase, num_train)
        row = _train_epoch(cfg, step, optimizer, stream[1], epoch=epoch, phase_idx=phase_idx,
                           phase=phase, n_steps=n_steps, compiling=compiling)
        state.examples.assign_add(n_steps * phase.batch_size)
        val = multiworker.evaluate_split(strategy, model, cfg.data, eval_step=eval_step,
                                         image_size=cfg.val_image_size,
                                         batch_size=cfg.eval_batch_size)
        row.update(val_loss=val["loss"] + steps_lib.regularization_loss(model),
                   val_acc=val["top1"], val_top5=val["top5"])
        row["seconds"] = time.perf_counter() - row.pop("_t0")
        if phase.plateau:
            if epoch == cfg.phase_start(phase_idx):
                # Each original phase was its own fit() call with a fresh callback.
                plateau.reset()
            lr = _current_lr(optimizer)
            new_lr = plateau.update(row["val_loss"], lr)
            if new_lr != lr:
                optimizer.learning_rate = new_lr
                _log(f"ReduceLROnPlateau: learning rate {lr:.3g} -> {new_lr:.3g}")
        history.append(row)
        _log(_epoch_line(row, cfg.total_epochs))
        usable = math.isfinite(row["val_loss"])
        new_best = usable and row["val_acc"] > float(best.val_acc.numpy())
        if new_best:
            best.take(model, row["val_acc"], epoch + 1)
            state.best_val_acc.assign(row["val_acc"])
        if phase_best is not None and usable and \
                row["val_acc"] > float(phase_best.val_acc.numpy()):
            phase_best.take(model, row["val_acc"], epoch + 1)
        state.epoch.assign(epoch + 1)
        state.phase.assign(phase_idx)
        state.history.assign(json.dumps(history))
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.total_epochs:
            manager.save(checkpoint_number=epoch + 1)
            # best.keras follows the checkpoint that records it, never precedes it.
            if chief and int(best.epoch.numpy()) != exported:
                _export_best(model, best, best_path)
                exported = int(best.epoch.numpy())
        if chief:
            _write_history(cfg.out, history)
        _summaries(writer, row)

    writer.flush()
    summary = {"epochs": len(history), "best_val_acc": float(state.best_val_acc.numpy()),
               "best_epoch": int(best.epoch.numpy()),
               "last": history[-1] if history else None,
               "replicas": strategy.num_replicas_in_sync,
               "xla_compiled": {"/".join(map(str, sig)): xla_compiled(s)
                                for sig, s in train_steps.items()}}
    if not chief:
        return summary
    if fileio.isfile(best_path):
        best = evaluate_lib.load_model(best_path)
        report = evaluate_lib.write_report(
            best, cfg.data, os.path.join(cfg.out, "eval"), manifest=manifest,
            image_size=cfg.val_image_size, batch_size=cfg.eval_batch_size, xla=cfg.xla,
            misclassified=cfg.misclassified, worst_k=cfg.worst_classes, model_name=best_path)
        summary.update(top1=report["top1"], top5=report["top5"],
                       worst_classes=[r["name"] for r in report["worst_classes"]])
        _log(reports.report_text(report).rstrip())
    reports.atomic_write_json(os.path.join(cfg.out, "summary.json"), summary)
    return summary


def _training_stream(cfg, strategy, phase, start_example: int):
    """An iterator over the run's training stream from global example ``start_example`` on,
    batched and sized for ``phase``.

    Replica r of R reads part r of the shards wherever it runs (``training.multiworker``),
    each part its own stream of seeded passes (``pipeline.training_records``) that starts at
    ``start_example // R``: every replica consumed the same share of each global batch.
    """
    replicas = strategy.num_replicas_in_sync
    input_fn = multiworker.per_replica_input_fn(lambda parts, part: pipeline.make_dataset(
        cfg.data, "train", batch_size=phase.batch_size // parts, image_size=phase.image_size,
        training=True, seed=cfg.seed, deterministic=True, num_input_pipelines=parts,
        input_pipeline_id=part, start_example=start_example // replicas))
    return iter(strategy.distribute_datasets_from_function(input_fn))


def _train_epoch(cfg, step, optimizer, iterator, *, epoch, phase_idx, phase, n_steps,
                 compiling=False) -> dict:
    """Runs one epoch of ``n_steps`` from the stream ``iterator``; returns its row.

    Raises:
      Diverged: a step's training loss was not finite (the epoch's weights are not saved).
    """
    t0 = time.perf_counter()
    lr_now = _current_lr(optimizer)
    bar = console.Progress(n_steps, batch_size=phase.batch_size, compiling=compiling,
                           enabled=cfg.progress, prefix=f"epoch {epoch + 1}: ")
    totals = dict.fromkeys(steps_lib.TRAIN_TOTALS, 0.0)
    chunk = max(1, min(cfg.steps_per_call, n_steps))
    done, t_start = 0, None
    while done < n_steps:
        k = min(chunk, n_steps - done)
        got = dict(zip(steps_lib.TRAIN_TOTALS,
                       step.run(iterator, tf.constant(k, tf.int32)).numpy().astype(np.float64),
                       strict=True))
        if not all(math.isfinite(v) for v in got.values()):
            at = done + int(got["steps"])
            raise Diverged(f"epoch {epoch + 1} (phase {phase_idx + 1}), step {at} of "
                           f"{n_steps}: the training loss is not finite; stopped, the last "
                           "checkpoint (if any) is kept")
        totals = {name: totals[name] + got[name] for name in totals}
        if t_start is None:  # the first call includes tracing/compiling: time from after it
            t_start, images_timed = time.perf_counter(), 0
        else:
            images_timed += k * phase.batch_size
        done += k
        bar.update(done, **_train_metrics(totals, done))
    elapsed = time.perf_counter() - t_start
    rate = images_timed / elapsed if images_timed and elapsed > 0 else \
        totals["count"] / max(time.perf_counter() - t0, 1e-9)
    return {"epoch": epoch + 1, "phase": phase_idx + 1, "image_size": phase.image_size,
            "batch_size": phase.batch_size, "lr": lr_now, **_train_metrics(totals, n_steps),
            "images_per_s": rate, "_t0": t0}


def _train_metrics(totals: dict, steps: int) -> dict:
    """Mean training loss (cross-entropy per example plus the L2 penalty per step, as Keras
    reports it) and top-1 accuracy from the summed ``steps.TRAIN_TOTALS``."""
    count = max(totals["count"], 1.0)
    return {"loss": totals["ce_sum"] / count + totals["reg_sum"] / steps,
            "acc": totals["correct"] / count}


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(np.asarray(keras.ops.convert_to_numpy(lr)))


def _epoch_line(row: dict, total: int) -> str:
    return (f"epoch {row['epoch']}/{total} phase {row['phase']} {row['image_size']}px "
            f"lr {row['lr']:.3g}: loss {row['loss']:.4f} acc {row['acc']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f} "
            f"val_top5 {row['val_top5']:.4f} ({row['images_per_s']:.0f} img/s, "
            f"{row['seconds']:.1f} s)")


def _write_history(out: str, history: list[dict]) -> None:
    reports.atomic_write_text(os.path.join(out, "history.csv"), reports.history_csv(history))
    reports.atomic_write_json(os.path.join(out, "history.json"), history)
    reports.plot_curves(history, out)


def _scalar_metadata() -> bytes:
    """TensorBoard's scalar-plugin metadata, built from TF's own protos.

    ``tf.summary.scalar`` needs the ``tensorboard`` package installed; ``tf.summary.write``
    with this metadata writes the identical event without it.
    """
    from tensorflow.core.framework import summary_pb2
    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = "scalars"
    md.data_class = summary_pb2.DATA_CLASS_SCALAR
    return md.SerializeToString()


def _summaries(writer, row: dict) -> None:
    metadata = _scalar_metadata()
    with writer.as_default(step=row["epoch"]):
        for k in ("lr", "loss", "acc", "val_loss", "val_acc", "val_top5", "images_per_s"):
            tf.summary.write(k, tf.constant(float(row[k]), tf.float32), metadata=metadata)
    writer.flush()


def _save_model_atomic(model: keras.Model, path: str) -> None:
    """``model.save`` to a temporary ``.keras`` next to ``path``, then ``os.replace``."""
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    model.save(tmp)
    fileio.replace(tmp, path)


def _export_best(model: keras.Model, best: WeightCopy, path: str) -> None:
    """Writes ``best``'s weights as ``path`` (atomically); the model's own weights are put
    back afterwards."""
    current = [w.numpy() for w in model.weights]
    best.put(model)
    try:
        _save_model_atomic(model, path)
    finally:
        for w, v in zip(model.weights, current, strict=True):
            w.assign(v)


def set_bn_synchronized(model: keras.Model) -> int:
    """Makes every BatchNormalization layer compute batch statistics over all replicas
    (Keras' ``synchronized=True``: an all-reduce of the moments); returns how many."""
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.synchronized = True
    return len(layers)


# BatchNorm over fewer examples than this per replica gives noisy statistics.
MIN_BN_BATCH = 16


def _warn_small_replica_batches(cfg, replicas: int) -> None:
    """One warning line per phase whose BatchNorm statistics come from < 16 examples."""
    for i, p in enumerate(cfg.phases, 1):
        per_replica = p.batch_size // replicas
        normalised = p.batch_size if cfg.sync_bn else per_replica
        if normalised < MIN_BN_BATCH:
            hint = (" (add --sync_bn to normalise over all replicas' examples)"
                    if replicas > 1 and not cfg.sync_bn else "")
            _log(f"warning: phase {i}: BatchNorm statistics from {normalised} examples "
                 f"per step ({p.batch_size} over {replicas} replica(s)){hint}")
