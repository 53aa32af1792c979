"""The per-epoch TensorBoard scalars, written without the ``tensorboard`` package."""

from __future__ import annotations

import tensorflow as tf

SCALARS = ("lr", "loss", "acc", "val_loss", "val_acc", "val_top5", "images_per_s")


def scalar_metadata() -> bytes:
    """TensorBoard's scalar-plugin metadata, built from TF's own protos.

    ``tf.summary.scalar`` needs the ``tensorboard`` package installed; ``tf.summary.write``
    with this metadata writes the identical event without it.
    """
    from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel
    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = "scalars"
    md.data_class = summary_pb2.DATA_CLASS_SCALAR
    return md.SerializeToString()


def write_epoch(writer, row: dict) -> None:
    """Writes one history row's scalars at step ``row["epoch"]`` and flushes."""
    metadata = scalar_metadata()
    with writer.as_default(step=row["epoch"]):
        for k in SCALARS:
            tf.summary.write(k, tf.constant(float(row[k]), tf.float32), metadata=metadata)
    writer.flush()
