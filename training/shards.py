"""Checks of the build's shards that training relies on: all there before it starts, and the
corrupt one named when a read fails.

The converter package may offer ``manifest.check_shards`` and ``verify.find_corrupt_shards``;
they are used when present, and this module's own checks (the same contract) otherwise.
"""

from __future__ import annotations

import os
import re

from tinyimagenet_tfrecords import manifest as manifest_lib
from training.errors import RunFailure


def check_shards(build_dir: str, manifest: dict, splits=("train", "val")) -> None:
    """Raises ``manifest.BuildError`` naming the first shard of ``splits`` that is missing or
    empty (a cheap check: no shard is read)."""
    helper = getattr(manifest_lib, "check_shards", None)
    if helper is not None:
        helper(build_dir, manifest, splits)
        return
    for split in splits:
        for path in manifest_lib.shard_paths(build_dir, manifest, split):
            if not os.path.isfile(path):
                raise manifest_lib.BuildError(
                    f"{path}: missing (listed in {manifest_lib.manifest_path(build_dir)}); "
                    "rebuild the data")
            if os.path.getsize(path) == 0:
                raise manifest_lib.BuildError(f"{path}: empty shard; rebuild the data")


def find_corrupt_shards(build_dir: str, manifest: dict, split: str) -> list[str]:
    """The shards of ``split`` whose TFRecord framing or CRCs fail (reads every record)."""
    try:
        from tinyimagenet_tfrecords import verify  # pylint: disable=import-outside-toplevel
        helper = getattr(verify, "find_corrupt_shards", None)
    except ImportError:
        helper = None
    if helper is not None:
        return list(helper(build_dir, split))
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    bad = []
    for path in manifest_lib.shard_paths(build_dir, manifest, split):
        try:
            for _ in tf.data.TFRecordDataset(path, buffer_size=8 << 20).batch(4096):
                pass
        except tf.errors.DataLossError:
            bad.append(path)
    return bad


def data_loss_failure(build_dir: str, manifest: dict, error: Exception,
                      splits=("train", "val")) -> RunFailure:
    """The one-line :class:`RunFailure` for a ``DataLossError`` met while training: names the
    corrupt shard(s), found by re-reading the splits."""
    bad = [p for s in splits if s in manifest["splits"]
           for p in find_corrupt_shards(build_dir, manifest, s)]
    match = re.search(r"corrupted record at \d+|truncated record at \d+", str(error))
    detail = match.group(0) if match else "corrupted record"
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return RunFailure(f"{bad[0]}{more}: corrupt shard ({detail}); rebuild the data "
                          "(tin-verify names every bad shard); the last checkpoint is kept")
    return RunFailure(f"{build_dir}: data loss while reading ({detail}); run tin-verify on it")
