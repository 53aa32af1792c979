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

The loop reads top to bottom as stages: :func:`run` sets up (``_set_up``), then per epoch
``_run_epoch``: the phase start, ``_train``, ``_validate``, ``_decide`` (the plain rules of
:mod:`training.rules`), then ``_apply``, ``_save`` and ``_report``. A non-finite val loss or
weight stops the run in ``_decide``, before anything of that epoch is saved. A
:class:`training.hooks.Hooks` passed to :func:`run` sees each stage from outside.

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

import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

import augment
import models
from plumbing import cli
from plumbing import paths
from plumbing import progress
from tinyimagenet_tfrecords import manifest as manifest_lib
from tinyimagenet_tfrecords import pipeline
from training import batchnorm
from training import cluster as cluster_lib
from training import config as config_lib
from training import evaluate as evaluate_lib
from training import multiworker
from training import optimizers as optimizers_lib
from training import readers as readers_lib
from training import reports
from training import rules
from training import schedules
from training import steps as steps_lib
from training import strategy as strategy_lib
from training import summaries
from training.errors import Diverged, RunError
from training.hooks import Hooks
from training.run_folder import check_output_folder  # noqa: F401  (also used by tests)
from training.state import TrainState, WeightCopy, all_finite, optimizer_slots

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


def build_model(cfg: config_lib.RunConfig, num_classes: int) -> keras.Model:
    """The model ``cfg`` names, with its BatchNorm settings (``--bn_momentum``,
    ``--sync_bn``) applied; call under the strategy's scope."""
    model = models.build(cfg.model, num_classes=num_classes,
                         image_size=_model_image_size(cfg), width=cfg.width)
    if cfg.bn_momentum:
        batchnorm.set_bn_momentum(model, cfg.bn_momentum)
    if cfg.sync_bn:
        batchnorm.set_bn_synchronized(model)
    return model


def _model_image_size(cfg: config_lib.RunConfig) -> int | None:
    sizes = {p.image_size for p in cfg.phases} | {cfg.val_image_size}
    return sizes.pop() if len(sizes) == 1 else None


def _log(msg: str) -> None:
    progress.log(msg)


@dataclasses.dataclass
class _Run:
    """Everything the epochs of one run share (built by :func:`_set_up`)."""

    cfg: config_lib.RunConfig
    num_train: int
    strategy: tf.distribute.Strategy
    chief: bool
    hooks: Hooks
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    plateau: schedules.ReduceLROnPlateau
    state: TrainState
    best: WeightCopy
    phase_best: WeightCopy | None
    ckpt: tf.train.Checkpoint
    manager: multiworker.CheckpointManager
    eval_step: object
    writer: object
    readers: readers_lib.EvalReaders  # built once per (split, size, batch), reused each epoch
    history: list
    exported: int = 0  # the epoch whose best weights best.keras holds (0: none written by us)
    train_steps: dict = dataclasses.field(default_factory=dict)
    stream: tuple | None = None  # (phase index, iterator over the training stream)

    @property
    def best_path(self) -> str:
        return os.path.join(self.cfg.out, "best.keras")


def connect(cfg: config_lib.RunConfig) -> tf.distribute.Strategy:
    """Seeds, op determinism, precision policy, then the strategy: under a multi-worker
    ``TF_CONFIG``, once every worker has joined within ``cfg.cluster_timeout`` seconds.

    Writes nothing. ``training.run`` calls it before it takes the output folder: a worker
    that cannot reach the others may be ended by the hard exit of the connection watchdog
    (``training.cluster``), which no ``finally`` survives, so no folder may exist yet.

    Raises:
      RunError: a strategy that contradicts ``TF_CONFIG``. RunFailure: the other workers
        could not be reached in time.
    """
    cluster = cluster_lib.from_environment()
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(cfg.precision)
    with cluster_lib.peer_failures(cluster):
        return strategy_lib.make_strategy(cluster_lib.strategy_name(cfg.strategy, cluster),
                                          cluster=cluster, timeout_s=cfg.cluster_timeout)


def run(cfg: config_lib.RunConfig, build: manifest_lib.Build,
        strategy: tf.distribute.Strategy, *, flags_text: str = "",
        hooks: Hooks | None = None) -> dict:
    """Trains (or resumes) the run ``cfg`` describes; returns the final summary dict.

    Called by ``training.run`` (``training/runner.py``), which has validated ``cfg``, opened
    the build, checked its shards, made ``strategy`` (:func:`connect`) and taken the output
    folder; nothing here reads the manifest again.

    Under a multi-worker ``TF_CONFIG`` every worker calls this with the same ``cfg``; only
    the chief writes ``cfg.out`` (see ``training.multiworker``), and a lost worker ends the
    others with a ``RunFailure``.

    Args:
      cfg: the validated settings.
      build: the opened build of ``cfg.data`` (``manifest.open_build``).
      strategy: what :func:`connect` returned for ``cfg``.
      flags_text: the effective command-line flags, saved as ``flags.txt`` for the record.
      hooks: called at fixed points of each epoch (:class:`training.hooks.Hooks`).

    Raises:
      RunError: bad output folder or a batch the replicas do not divide.
      Diverged: a non-finite loss or weights; nothing of that epoch was saved.
    """
    cluster = cluster_lib.from_environment()
    with cluster_lib.peer_failures(cluster):
        r = _set_up(cfg, build, strategy, flags_text, hooks or Hooks())
        for epoch in range(int(r.state.epoch.numpy()), cfg.total_epochs):
            _run_epoch(r, epoch)
        return _finish(r)


# --- set up ------------------------------------------------------------------------------

def _set_up(cfg, build, strategy, flags_text: str, hooks: Hooks) -> _Run:
    """Output folder, model, optimizer, checkpoint (restored if any); seeds and strategy come
    first, from :func:`connect`."""
    chief = cluster_lib.is_chief(strategy)  # the only writer of cfg.out
    _check_batches(cfg, strategy.num_replicas_in_sync)
    _prepare_folder(cfg, strategy, chief, flags_text)
    num_train = build.split("train").num_examples
    _log(f"strategy: {strategy_lib.describe(strategy)}; XLA {'on' if cfg.xla else 'off'}; "
         f"precision {cfg.precision}")
    with strategy.scope():
        model = build_model(cfg, build.num_classes)
        optimizer = optimizers_lib.make_optimizer(cfg, make_schedule(cfg, num_train))
        optimizer.build(model.trainable_variables)
        plateau = schedules.ReduceLROnPlateau(cfg.plateau_factor, cfg.plateau_patience,
                                              cfg.plateau_min_lr)
    hooks.model_built(model)
    _warn(cfg, strategy.num_replicas_in_sync)
    r = _Run(cfg=cfg, num_train=num_train, strategy=strategy, chief=chief, hooks=hooks,
             model=model, optimizer=optimizer, plateau=plateau, **checkpoint_parts(
                 cfg, model, optimizer, plateau, chief),
             eval_step=steps_lib.make_eval_step(model, xla=cfg.xla),
             writer=multiworker.summary_writer(os.path.join(cfg.out, "tensorboard"),
                                               chief=chief), history=[],
             readers=readers_lib.EvalReaders(build))
    _restore(r)
    return r


def _check_batches(cfg, replicas: int) -> None:
    for i, p in enumerate(cfg.phases, 1):
        if p.batch_size % replicas:
            raise RunError(f"phase {i}: global batch {p.batch_size} is not divisible by "
                           f"{replicas} replicas")


def _prepare_folder(cfg, strategy, chief: bool, flags_text: str) -> None:
    """Only now, with every input checked, is the output folder touched."""
    fingerprint = cfg.fingerprint()
    multiworker.check_same_settings(strategy, fingerprint)
    if not chief:
        return
    resuming = check_output_folder(cfg.out, fingerprint)
    paths.makedirs(cfg.out)
    if not resuming:
        paths.atomic_write_json(os.path.join(cfg.out, CONFIG_NAME), fingerprint)
    if flags_text:
        paths.atomic_write_text(os.path.join(cfg.out, "flags.txt"), flags_text)


def _warn(cfg, replicas: int) -> None:
    batchnorm.warn_small_replica_batches(cfg.phases, replicas, cfg.sync_bn, _log)
    if cfg.sync_bn and cfg.xla and replicas > 1:
        _log("warning: --sync_bn with several replicas: the per-replica step runs without XLA "
             "(MirroredStrategy's all-reduce cannot sit inside the compiled function)")
    if cfg.xla and not _train_step_xla(cfg):
        _log("warning: --deterministic: the train step runs without XLA (TensorFlow has no "
             "deterministic XLA kernel for MaxPool's gradient); evaluation keeps XLA")


def _train_step_xla(cfg) -> bool:
    """XLA for the train step unless op determinism is on: TensorFlow then refuses to compile
    MaxPool's gradient, which every network here has."""
    return cfg.xla and not cfg.deterministic


def checkpoint_parts(cfg, model, optimizer, plateau, chief: bool) -> dict:
    """The loop state and the checkpoint manager that saves it with model and optimizer:
    ``state``, ``best``, ``phase_best`` (None unless a phase has ``init=best``; it copies the
    optimizer's slots too), ``ckpt`` and ``manager``.

    Loop bookkeeping is per process, not mirrored: MultiWorkerMirroredStrategy cannot
    broadcast the string history to the other workers (every worker computes the same one).
    """
    state, best = TrainState(), WeightCopy(model, "best")
    parts = dict(model=model, optimizer=optimizer, state=state, plateau=plateau, best=best)
    phase_best = None
    if any(p.init == "best" for p in cfg.phases):
        phase_best = parts["phase_best"] = WeightCopy(model, "phase_best", optimizer)
    ckpt = tf.train.Checkpoint(**parts)
    manager = multiworker.CheckpointManager(ckpt, os.path.join(cfg.out, "checkpoints"),
                                            chief=chief, max_to_keep=cfg.keep_checkpoints)
    return dict(state=state, best=best, phase_best=phase_best, ckpt=ckpt, manager=manager)


def _restore(r: _Run) -> None:
    """Continues from the last checkpoint, if any; best.keras is re-exported from it."""
    latest = r.manager.latest_checkpoint
    if latest:
        r.ckpt.restore(latest).assert_existing_objects_matched()
        _log(f"resumed from {latest} after epoch {int(r.state.epoch.numpy())}")
    if r.chief and latest and int(r.best.epoch.numpy()):
        # The checkpoint is the record: best.keras may lag it (killed before the export).
        _export_best(r)
    r.history = r.state.get_history()
    if r.chief:
        _write_history(r.cfg.out, r.history)


# --- one epoch: train, validate, decide, save, report -----------------------------------

def _run_epoch(r: _Run, epoch: int) -> None:
    """Epoch ``epoch`` (0-based) from its phase's start to its report."""
    cfg = r.cfg
    phase_idx, phase = cfg.phase_at(epoch)
    first = epoch == cfg.phase_start(phase_idx)
    if first:
        _start_phase(r, phase_idx, phase)
    r.hooks.epoch_started(epoch + 1, r.model)
    row = _train(r, epoch, phase_idx, phase)
    _validate(r, row)
    lr = _current_lr(r.optimizer)
    decision = _decide(r, row, lr=lr, first=first, plateau_phase=phase.plateau)
    if decision.diverged:
        n = steps_per_epoch(cfg, phase, r.num_train)
        raise Diverged(rules.diverged_message(
            epoch=epoch + 1, phase=phase_idx + 1, step=n, steps=n,
            what="the validation loss or the weights are", saved_epoch=_saved_epoch(r)))
    _apply(r, decision, row, lr)
    _save(r, row, decision.checkpoint)
    _report(r, row)


def _start_phase(r: _Run, phase_idx: int, phase: config_lib.Phase) -> None:
    """``init=best`` puts the previous phase's best weights (and optimizer slots) back."""
    pb = r.phase_best
    start = rules.phase_start(init=phase.init, phase_best=None if pb is None else pb.record())
    if start.load is not None:
        pb.put()
        _log(f"phase {phase_idx + 1}: starting from the best weights of phase {phase_idx} "
             f"(epoch {start.load.epoch}, val top-1 {start.load.val_acc:.4f})")
    if start.phase_best is not None:
        pb.set_record(start.phase_best)


def _train(r: _Run, epoch: int, phase_idx: int, phase: config_lib.Phase) -> dict:
    """Trains one epoch from the run's training stream; returns its history row."""
    step = r.train_steps.get(phase.signature)
    compiling = step is None
    if step is None:
        recipe = None if phase.augment == "none" else augment.get_recipe(phase.augment)
        step = r.train_steps[phase.signature] = steps_lib.make_train_step(
            r.model, r.optimizer, r.strategy, recipe=recipe,
            global_batch_size=phase.batch_size, base_seed=r.cfg.seed,
            xla=_train_step_xla(r.cfg), cross_replica_layers=r.cfg.sync_bn)
    if r.stream is None or r.stream[0] != phase_idx:
        # One stream per phase, continued across its epochs; a new phase (other batch or
        # image size) picks the stream up at the same example.
        r.stream = (phase_idx, _training_stream(r.cfg, r.readers.build, r.strategy, phase,
                                                int(r.state.examples.numpy())))
    n_steps = steps_per_epoch(r.cfg, phase, r.num_train)
    row = _train_epoch(r.cfg, step, r.optimizer, r.stream[1], epoch=epoch,
                       phase_idx=phase_idx, phase=phase, n_steps=n_steps,
                       compiling=compiling, saved_epoch=_saved_epoch(r))
    r.state.examples.assign_add(n_steps * phase.batch_size)
    return row


def _validate(r: _Run, row: dict) -> None:
    """Adds the val loss (with the weight-decay term, as Keras reports it) and top-1/5."""
    val = multiworker.evaluate_split(r.strategy, r.model, r.readers, eval_step=r.eval_step,
                                     image_size=r.cfg.val_image_size,
                                     batch_size=r.cfg.eval_batch_size)
    row.update(val_loss=val["loss"] + steps_lib.regularization_loss(r.model),
               val_acc=val["top1"], val_top5=val["top5"])
    row["seconds"] = time.perf_counter() - row.pop("_t0")


def _decide(r: _Run, row: dict, *, lr: float, first: bool,
            plateau_phase: bool) -> rules.Decision:
    """The end-of-epoch rules (:func:`rules.decide`) on this epoch's plain values."""
    cfg = r.cfg
    facts = rules.EpochFacts(
        epoch=row["epoch"], val_loss=row["val_loss"], val_acc=row["val_acc"],
        weights_finite=all_finite(list(r.model.weights) + optimizer_slots(r.optimizer)),
        lr=lr, first_of_phase=first,
        plateau_phase=plateau_phase, last_of_run=row["epoch"] == cfg.total_epochs,
        checkpoint_every=cfg.checkpoint_every)
    return rules.decide(facts, best=r.best.record(),
                        phase_best=None if r.phase_best is None else r.phase_best.record(),
                        plateau=r.plateau.as_rule())


def _apply(r: _Run, d: rules.Decision, row: dict, lr: float) -> None:
    """Carries a decision out: learning rate, plateau state, best-weight copies, history."""
    r.plateau.store(d.plateau)
    if d.lr != lr:
        r.optimizer.learning_rate = d.lr
        _log(f"ReduceLROnPlateau: learning rate {lr:.3g} -> {d.lr:.3g}")
    r.history.append(row)
    _log(_epoch_line(row, r.cfg.total_epochs))
    if d.new_best:
        r.best.take(row["val_acc"], row["epoch"])
        r.state.best_val_acc.assign(row["val_acc"])
    if d.new_phase_best:
        r.phase_best.take(row["val_acc"], row["epoch"])
    r.state.epoch.assign(row["epoch"])
    r.state.phase.assign(row["phase"] - 1)
    r.state.history.assign(json.dumps(r.history))


def _save(r: _Run, row: dict, checkpoint: bool) -> None:
    """The checkpoint (when due), then best.keras (never ahead of it), then the history."""
    if checkpoint:
        r.manager.save(checkpoint_number=row["epoch"])
        r.hooks.checkpoint_saved(row["epoch"])
        if r.chief and int(r.best.epoch.numpy()) != r.exported:
            _export_best(r)
    if r.chief:
        _write_history(r.cfg.out, r.history)


def _report(r: _Run, row: dict) -> None:
    summaries.write_epoch(r.writer, row)
    r.hooks.epoch_recorded(row, r.model)


def _saved_epoch(r: _Run) -> int:
    """The epoch of the run folder's newest checkpoint (0: none yet)."""
    latest = r.manager.latest_checkpoint
    return int(latest.rsplit("-", 1)[-1]) if latest else 0


# --- finish ------------------------------------------------------------------------------

def _finish(r: _Run) -> dict:
    """The summary; the chief also evaluates best.keras into ``eval/``."""
    r.writer.flush()
    summary = {"epochs": len(r.history), "best_val_acc": float(r.state.best_val_acc.numpy()),
               "best_epoch": int(r.best.epoch.numpy()),
               "last": r.history[-1] if r.history else None,
               "replicas": r.strategy.num_replicas_in_sync,
               "xla_compiled": {"/".join(map(str, sig)): steps_lib.train_step_xla_compiled(s)
                                for sig, s in r.train_steps.items()}}
    if not r.chief:
        return summary
    cfg = r.cfg
    if paths.isfile(r.best_path):
        best = evaluate_lib.load_model(r.best_path)
        report = evaluate_lib.write_report(
            best, r.readers.build, os.path.join(cfg.out, "eval"), readers=r.readers,
            image_size=cfg.val_image_size, batch_size=cfg.eval_batch_size, xla=cfg.xla,
            misclassified=cfg.misclassified, worst_k=cfg.worst_classes,
            model_name=r.best_path)
        summary.update(top1=report["top1"], top5=report["top5"],
                       worst_classes=[c["name"] for c in report["worst_classes"]])
        _log(reports.report_text(report).rstrip())
    paths.atomic_write_json(os.path.join(cfg.out, "summary.json"), summary)
    return summary


# --- helpers ----------------------------------------------------------------------------

def _training_stream(cfg, build, strategy, phase, start_example: int):
    """An iterator over the run's training stream from global example ``start_example`` on,
    batched and sized for ``phase``.

    Replica r of R reads part r of the shards wherever it runs (``training.multiworker``),
    each part its own stream of seeded passes (``pipeline.training_records``) that starts at
    ``rules.replica_start_example``: every replica consumed the same share of each batch.
    """
    start = rules.replica_start_example(start_example, strategy.num_replicas_in_sync)
    input_fn = multiworker.per_replica_input_fn(lambda parts, part: pipeline.training_stream(
        build, batch_size=phase.batch_size // parts, image_size=phase.image_size,
        seed=cfg.seed, deterministic=True, num_input_pipelines=parts,
        input_pipeline_id=part, start_example=start))
    return iter(strategy.distribute_datasets_from_function(input_fn))


def _train_epoch(cfg, step, optimizer, iterator, *, epoch, phase_idx, phase, n_steps,
                 compiling=False, saved_epoch=0) -> dict:
    """Runs one epoch of ``n_steps`` from the stream ``iterator``; returns its row.

    Raises:
      Diverged: a step's training loss was not finite (the epoch's weights are not saved).
    """
    t0 = time.perf_counter()
    lr_now = _current_lr(optimizer)
    bar = progress.Progress(n_steps, per_step=phase.batch_size,
                            wait_note=steps_lib.COMPILING if compiling else "",
                            wait_done="compiled", enabled=cfg.progress,
                            prefix=f"epoch {epoch + 1}: ")
    totals = dict.fromkeys(steps_lib.TRAIN_TOTALS, 0.0)
    chunk = max(1, min(cfg.steps_per_call, n_steps))
    done, t_start, images_timed = 0, None, 0
    while done < n_steps:
        cli.raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt was dropped somewhere
        k = min(chunk, n_steps - done)
        got = dict(zip(steps_lib.TRAIN_TOTALS,
                       step.run(iterator, tf.constant(k, tf.int32)).numpy().astype(np.float64),
                       strict=True))
        if not all(math.isfinite(v) for v in got.values()):
            raise Diverged(rules.diverged_message(
                epoch=epoch + 1, phase=phase_idx + 1, step=done + int(got["steps"]),
                steps=n_steps, what="the training loss is", saved_epoch=saved_epoch))
        totals = {name: totals[name] + got[name] for name in totals}
        if t_start is None:  # the first call includes tracing/compiling: time from after it
            t_start = time.perf_counter()
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
    paths.atomic_write_text(os.path.join(out, "history.csv"), reports.history_csv(history))
    paths.atomic_write_json(os.path.join(out, "history.json"), history)
    reports.plot_curves(history, out)


def _save_model_atomic(model: keras.Model, path: str) -> None:
    """``model.save`` to a temporary ``.keras`` next to ``path``, then ``os.replace``."""
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    model.save(tmp)
    paths.replace(tmp, path)


def _export_best(r: _Run) -> None:
    """Writes the run's best weights as best.keras (atomically); the model's own weights are
    put back afterwards."""
    current = [w.numpy() for w in r.model.weights]
    r.best.put()
    try:
        _save_model_atomic(r.model, r.best_path)
    finally:
        for w, v in zip(r.model.weights, current, strict=True):
            w.assign(v)
    r.exported = int(r.best.epoch.numpy())
    r.hooks.best_exported(r.best_path, r.exported)
