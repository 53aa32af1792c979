"""The fit loop: curriculum phases, checkpoints and exact resume, per-epoch outputs.

Resume is exact because everything random is a function of the position in training:
the training data of epoch ``e`` come from a fresh pipeline seeded with ``(seed, e)``,
augmentation seeds from ``(seed, global step, replica id)``, and the learning rate from the
optimizer's step (Triangular2) or from the checkpointed plateau state. A checkpoint holds the
model, the optimizer (step, slots, learning rate), the epoch counter, the plateau state and the
metrics history; re-running the same command continues after the last checkpointed epoch,
neither repeating nor skipping one.

Output folder (``cfg.out``)::

    config.json          effective settings (a different run refuses to start here)
    flags.txt            the effective flags (written by train_main)
    checkpoints/         tf.train.CheckpointManager files
    history.csv          one row per epoch (reports.CSV_FIELDS); history.json the same
    loss.png accuracy.png
    best.keras           the model with the best val top-1 so far
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
from tinyimagenet_tfrecords import manifest as manifest_lib
from tinyimagenet_tfrecords import pipeline
from training import cluster as cluster_lib
from training import config as config_lib
from training import console
from training import evaluate as evaluate_lib
from training import fileio
from training import multiworker
from training import reports
from training import schedules
from training import steps as steps_lib
from training import strategy as strategy_lib
from training.errors import RunError
from training.run_folder import check_output_folder  # noqa: F401  (also used by tests)

CONFIG_NAME = "config.json"




def epoch_seed(seed: int, epoch: int) -> int:
    """The data-pipeline seed of ``epoch``: distinct per epoch, a pure function of both."""
    return int((seed * 1_000_003 + epoch * 7_919 + 12_345) % (2 ** 31 - 1))


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


def make_optimizer(cfg: config_lib.RunConfig, learning_rate) -> keras.optimizers.Optimizer:
    """Adam / RMSprop / SGD (+ loss scaling for mixed float16)."""
    if cfg.optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate, epsilon=cfg.epsilon)
    elif cfg.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(learning_rate, epsilon=cfg.epsilon)
    else:
        opt = keras.optimizers.SGD(learning_rate, momentum=0.9)
    if cfg.precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


class TrainState(tf.Module):
    """Loop state saved in every checkpoint next to the model and optimizer."""

    def __init__(self):
        super().__init__(name="train_state")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.phase = tf.Variable(0, dtype=tf.int64, trainable=False, name="phase")
        self.best_val_acc = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False, name="history")

    def get_history(self) -> list[dict]:
        return json.loads(self.history.numpy().decode("utf-8"))


def set_bn_momentum(model: keras.Model, momentum: float) -> int:
    """Sets every BatchNormalization layer's moving-average momentum; returns how many.

    Keras' 0.99 needs several hundred steps before the moving statistics used at validation
    describe the network; short CPU runs (tests, demos) use e.g. 0.9. Full recipes keep 0.99.
    """
    n = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested model: its layers too
            n += set_bn_momentum(layer, momentum)
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            n += 1
    return n


def xla_compiled(step: steps_lib.TrainStep) -> bool:
    """True when every traced variant of the step's inner function is marked for XLA."""
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


def run(cfg: config_lib.RunConfig, *, flags_text: str = "") -> dict:
    """Trains (or resumes) the run ``cfg`` describes; returns the final summary dict.

    Under a multi-worker ``TF_CONFIG`` every worker calls this with the same ``cfg``; only
    the chief writes ``cfg.out`` (see ``training.multiworker``), and a lost worker ends the
    others with a ``RunFailure``.

    Args:
      cfg: the validated settings.
      flags_text: the effective command-line flags, saved as ``flags.txt`` for the record.

    Raises:
      RunError: bad output folder. ``manifest.BuildError``: missing or unfinished data.
      ``config.ConfigError``: bad settings.
    """
    cluster = cluster_lib.from_environment()
    with cluster_lib.peer_failures(cluster):
        return _run(cfg, cluster, flags_text=flags_text)


def _run(cfg: config_lib.RunConfig, cluster, *, flags_text: str) -> dict:
    manifest = manifest_lib.load_manifest(cfg.data)
    config_lib.validate(cfg, recipe_names=augment.RECIPE_NAMES, model_names=models.NAMES)
    num_train = manifest["splits"]["train"]["num_examples"]
    if "val" not in manifest["splits"]:
        raise RunError(f"{cfg.data}: no val split; training needs one")
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
        optimizer = make_optimizer(cfg, make_schedule(cfg, num_train))
        optimizer.build(model.trainable_variables)
        plateau = schedules.ReduceLROnPlateau(cfg.plateau_factor, cfg.plateau_patience,
                                              cfg.plateau_min_lr)
    # Loop bookkeeping is per process, not mirrored: MultiWorkerMirroredStrategy cannot
    # broadcast the string history to the other workers (every worker computes the same one).
    state = TrainState()
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, state=state, plateau=plateau)
    manager = multiworker.CheckpointManager(ckpt, os.path.join(cfg.out, "checkpoints"),
                                            chief=chief, max_to_keep=cfg.keep_checkpoints)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        _log(f"resumed from {manager.latest_checkpoint} after epoch {int(state.epoch.numpy())}")
    history = state.get_history()
    if chief:
        _write_history(cfg.out, history)

    eval_step = steps_lib.make_eval_step(model, xla=cfg.xla)
    train_steps: dict[tuple, steps_lib.TrainStep] = {}
    writer = multiworker.summary_writer(os.path.join(cfg.out, "tensorboard"), chief=chief)
    best_path = os.path.join(cfg.out, "best.keras")

    for epoch in range(int(state.epoch.numpy()), cfg.total_epochs):
        phase_idx, phase = cfg.phase_at(epoch)
        step = train_steps.get(phase.signature)
        compiling = step is None
        if step is None:
            recipe = None if phase.augment == "none" else augment.get_recipe(phase.augment)
            step = train_steps[phase.signature] = steps_lib.make_train_step(
                model, optimizer, strategy, recipe=recipe, global_batch_size=phase.batch_size,
                base_seed=cfg.seed, xla=cfg.xla)
        n_steps = steps_per_epoch(cfg, phase, num_train)
        row = _train_epoch(cfg, strategy, step, optimizer, epoch=epoch, phase_idx=phase_idx,
                           phase=phase, n_steps=n_steps, compiling=compiling)
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
        if row["val_acc"] > float(state.best_val_acc.numpy()):
            state.best_val_acc.assign(row["val_acc"])
            if chief:
                _save_model_atomic(model, best_path)
        state.epoch.assign(epoch + 1)
        state.phase.assign(phase_idx)
        state.history.assign(json.dumps(history))
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.total_epochs:
            manager.save(checkpoint_number=epoch + 1)
        if chief:
            _write_history(cfg.out, history)
        _summaries(writer, row)

    writer.flush()
    summary = {"epochs": len(history), "best_val_acc": float(state.best_val_acc.numpy()),
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


def _train_epoch(cfg, strategy, step, optimizer, *, epoch, phase_idx, phase, n_steps,
                 compiling=False) -> dict:
    """Runs one epoch of ``n_steps`` on a pipeline seeded for this epoch; returns its row."""
    t0 = time.perf_counter()
    # Replica r reads part r of the shards, wherever it runs (training.multiworker).
    input_fn = multiworker.per_replica_input_fn(lambda parts, part: pipeline.make_dataset(
        cfg.data, "train", batch_size=phase.batch_size // parts, image_size=phase.image_size,
        training=True, seed=epoch_seed(cfg.seed, epoch), deterministic=True,
        num_input_pipelines=parts, input_pipeline_id=part))
    dataset = strategy.distribute_datasets_from_function(input_fn)
    iterator = iter(dataset)
    lr_now = _current_lr(optimizer)
    bar = console.Progress(n_steps, batch_size=phase.batch_size, compiling=compiling,
                           enabled=cfg.progress, prefix=f"epoch {epoch + 1}: ")
    totals = np.zeros(len(steps_lib.TRAIN_TOTALS), np.float64)
    chunk = max(1, min(cfg.steps_per_call, n_steps))
    done, t_start = 0, None
    while done < n_steps:
        k = min(chunk, n_steps - done)
        totals += step.run(iterator, tf.constant(k, tf.int32)).numpy()
        if t_start is None:  # the first call includes tracing/compiling: time from after it
            t_start, images_timed = time.perf_counter(), 0
        else:
            images_timed += k * phase.batch_size
        done += k
        count = max(totals[2], 1.0)
        bar.update(done, loss=totals[0] / count + totals[3] / done, acc=totals[1] / count)
    elapsed = time.perf_counter() - t_start
    count = max(totals[2], 1.0)
    rate = images_timed / elapsed if images_timed and elapsed > 0 else \
        totals[2] / max(time.perf_counter() - t0, 1e-9)
    return {"epoch": epoch + 1, "phase": phase_idx + 1, "image_size": phase.image_size,
            "batch_size": phase.batch_size, "lr": lr_now, "loss": totals[0] / count +
            totals[3] / n_steps, "acc": totals[1] / count, "images_per_s": rate, "_t0": t0}


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
