"""Naming the corrupt shard when a read fails while training or evaluating.

tf.data's ``DataLossError`` says "corrupted record at <offset>" without the file; the
converter's ``verify.find_corrupt_shards`` re-reads the split to name it. (The cheap start-up
check that every shard is there is ``manifest.check_shards``.)
"""

from __future__ import annotations

import re

from training.errors import RunFailure


def data_loss_failure(build, error: Exception, splits=("train", "val")) -> RunFailure:
    """The one-line :class:`RunFailure` for a ``DataLossError`` met while reading ``build``
    (an opened ``manifest.Build``): names the corrupt shard(s), found by re-reading the
    shards of ``splits`` (the manifest is not read again)."""
    from tinyimagenet_tfrecords import verify  # pylint: disable=import-outside-toplevel
    paths = [p for s in splits if s in build.split_names for p in build.split(s).paths]
    bad = [path for path, _ in verify.find_corrupt_files(paths)]
    match = re.search(r"corrupted record at \d+|truncated record at \d+", str(error))
    detail = match.group(0) if match else "corrupted record"
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        return RunFailure(f"{bad[0]}{more}: corrupt shard ({detail}); rebuild the data "
                          "(tin-verify names every bad shard); the last checkpoint is kept")
    return RunFailure(f"{build.path}: data loss while reading ({detail}); run tin-verify on it")
