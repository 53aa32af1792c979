"""What the fit loop does differently when it runs on several workers (hosts).

* Input: each replica of the job reads its own part of the shards, chosen by its *global*
  replica id (:func:`per_replica_input_fn`), so what replica ``r`` trains on does not depend on
  how the replicas are spread over hosts: two GPUs in one host and one GPU in each of two
  hosts train on the same batches with the same augmentation seeds.
* Validation: each worker evaluates its part of the split with the chief's BatchNorm
  statistics and the totals are summed across workers, so the split is evaluated once per
  epoch, not once per worker, and every worker gets the same numbers (the plateau schedule
  and best-model choice agree everywhere) — the same numbers as a one-host run.
* Checkpoints: every worker must take part in a save (reading distributed variables can need
  collectives), but only the chief's lands in the run folder; the others save into a local
  temporary folder that is deleted at once. Everyone restores the chief's latest checkpoint.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Callable

import numpy as np
import tensorflow as tf

from training import cluster as cluster_lib
from training.errors import RunError


def per_replica_input_fn(make_part: Callable[[int, int], tf.data.Dataset]):
    """An ``input_fn(input_context)`` for ``strategy.distribute_datasets_from_function``.

    Args:
      make_part: ``make_part(num_parts, part_id) -> dataset`` of per-replica batches of the
        ``part_id``-th of ``num_parts`` parts of the data (e.g. ``pipeline.training_stream``
        with ``num_input_pipelines=num_parts, input_pipeline_id=part_id``).

    The worker's input pipeline feeds its ``k`` local replicas in turn (element ``i`` goes to
    local replica ``i % k``), so it interleaves its replicas' parts in that order; replica ids
    are global (worker ``w`` holds replicas ``w*k .. w*k+k-1``).
    """
    def input_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        replicas = ctx.num_replicas_in_sync
        local = replicas // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local
        parts = [make_part(replicas, first + j) for j in range(local)]
        if local == 1:
            return parts[0]
        order = tf.data.Dataset.range(local).repeat()
        return tf.data.Dataset.choose_from_datasets(parts, order)
    return input_fn


def allreduce_sum(strategy: tf.distribute.Strategy, values) -> np.ndarray:
    """The sum over workers of each worker's ``values`` (float64); ``values`` itself on one
    worker. Every worker must call it, in the same order."""
    values = np.asarray(values, np.float64)
    n = cluster_lib.num_workers(strategy)
    if n == 1:
        return values
    local = strategy.num_replicas_in_sync // n
    zeros = np.zeros_like(values)

    def value_fn(ctx):
        # One contribution per worker: its first local replica's.
        first = ctx.replica_id_in_sync_group % local == 0
        return tf.constant(values if first else zeros)

    per_replica = strategy.experimental_distribute_values_from_function(value_fn)
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()


def check_same_settings(strategy, fingerprint: dict) -> None:
    """Every worker must run the same settings; all of them fail the same way if not.

    Raises:
      RunError: the workers were started with different flags (exit 2 on every worker).
    """
    n = cluster_lib.num_workers(strategy)
    if n == 1:
        return
    h = float(cluster_lib.settings_hash(fingerprint))
    total, squares = allreduce_sum(strategy, np.array([h, h * h]))
    if total * total != n * squares:  # equality iff every worker's hash is the same
        raise RunError(f"the {n} workers were started with different settings; run the "
                       "same command (flags) on every worker, only TF_CONFIG's task.index "
                       "differs")


def evaluate_split(strategy, model, readers, *, eval_step, split: str = "val",
                   image_size: int = 64, batch_size: int = 256) -> dict:
    """Loss, top-1 and top-5 over ``split``, the work shared by the workers.

    On one worker this is ``training.evaluate.evaluate_split``; on several, worker ``w``
    evaluates part ``w`` of the split (whole shard files when there are enough) and the
    totals are summed across workers. ``readers`` (a :class:`training.readers.EvalReaders`
    of the run's build) keeps each reader for the next epoch.
    """
    from training import evaluate as evaluate_lib  # pylint: disable=import-outside-toplevel
    n = cluster_lib.num_workers(strategy)
    if n == 1:
        return evaluate_lib.evaluate_split(model, readers.build, split=split,
                                           image_size=image_size, batch_size=batch_size,
                                           eval_step=eval_step, readers=readers)
    broadcast_from_chief(strategy, model.non_trainable_variables)
    ds = readers.get(split, image_size=image_size, batch_size=batch_size, num_parts=n,
                     part_id=cluster_lib.worker_id(strategy))
    totals = np.zeros(4, np.float64)
    for images, labels in ds:
        t, _ = eval_step(images, labels)
        totals += t.numpy()
    totals = allreduce_sum(strategy, totals)
    count = max(totals[3], 1.0)
    return {"loss": totals[0] / count, "top1": totals[1] / count, "top5": totals[2] / count,
            "count": int(totals[3])}


def broadcast_from_chief(strategy, variables) -> None:
    """Sets ``variables`` on every worker to the chief's values (one all-reduce).

    BatchNormalization's moving statistics are updated inside each replica's step from its
    own batches, so every replica holds its own; the checkpoint and ``best.keras`` keep the
    first replica's (the chief's). Evaluating with those everywhere makes the shared
    validation equal to a one-host run's and unchanged by a resume.
    """
    variables = list(variables)
    if cluster_lib.num_workers(strategy) == 1 or not variables:
        return
    values = [np.asarray(v.numpy()) for v in variables]
    flat = np.concatenate([x.astype(np.float64).ravel() for x in values])
    if cluster_lib.worker_id(strategy) != 0:
        flat = np.zeros_like(flat)
    flat = allreduce_sum(strategy, flat)
    start = 0
    for v, x in zip(variables, values):
        v.assign(flat[start:start + x.size].reshape(x.shape).astype(x.dtype))
        start += x.size


class CheckpointManager:
    """``tf.train.CheckpointManager``'s ``save`` / ``latest_checkpoint`` for any worker.

    The chief saves into ``directory``; other workers save into a private temporary folder
    and delete it right away (TensorFlow's multi-worker checkpointing: all must save, one
    keeps it). ``latest_checkpoint`` is always the chief's.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, *, chief: bool,
                 max_to_keep: int):
        self.directory = directory
        self.chief = chief
        self._checkpoint = checkpoint
        self._max_to_keep = max_to_keep
        self._manager = tf.train.CheckpointManager(checkpoint, directory,
                                                   max_to_keep=max_to_keep) if chief else None

    @property
    def latest_checkpoint(self) -> str | None:
        if self._manager is not None:
            return self._manager.latest_checkpoint
        return tf.train.latest_checkpoint(self.directory)

    def save(self, checkpoint_number: int | None = None) -> str | None:
        if self._manager is not None:
            return self._manager.save(checkpoint_number=checkpoint_number)
        tmp = tempfile.mkdtemp(prefix="tin-worker-ckpt-")
        try:
            tf.train.CheckpointManager(self._checkpoint, tmp, max_to_keep=1).save(
                checkpoint_number=checkpoint_number)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None


def summary_writer(logdir: str, *, chief: bool):
    """TensorBoard's writer on the chief; a writer that writes nothing elsewhere."""
    return tf.summary.create_file_writer(logdir) if chief else tf.summary.create_noop_writer()
