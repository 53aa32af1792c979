"""``manifest.json``: the description of a finished build, shared by build, verify and input.

A build folder is *finished* exactly when it holds a manifest with this schema version: the
converter writes into a temporary folder and renames it into place only when complete (or, for
a ``tf.io.gfile`` URL such as ``gs://...``, copies the shards first and the manifest last).

Local paths use ``os`` only; a URL (``scheme://``) goes through ``tf.io.gfile``, imported on
first use, so the converter stays TensorFlow-free for local builds.
"""

from __future__ import annotations

import json
import os

from tinyimagenet_tfrecords import features

MANIFEST_NAME = "manifest.json"


class BuildError(Exception):
    """A build folder is missing, unfinished, or was written with another schema."""


# --- Paths: local or tf.io.gfile URL ------------------------------------------------------------


def is_url(path: str) -> bool:
    """``scheme://...`` (``gs://``, ``s3://``, ``hdfs://``, ``ram://``); http(s) is a source."""
    return "://" in str(path) and not str(path).startswith(("http://", "https://"))


def _gfile():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.io.gfile


def join(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name if is_url(folder) else os.path.join(folder, name)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    if is_url(path):
        return [n.rstrip("/") for n in _gfile().listdir(path)]
    return os.listdir(path)


def getsize(path: str) -> int:
    return _gfile().stat(path).length if is_url(path) else os.path.getsize(path)


def read_text(path: str) -> str:
    if is_url(path):
        with _gfile().GFile(path, "r") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


# --- The manifest --------------------------------------------------------------------------------


def manifest_path(build_dir: str) -> str:
    return join(build_dir, MANIFEST_NAME)


def load_manifest(build_dir: str) -> dict:
    """Reads and sanity-checks ``<build_dir>/manifest.json`` (a local folder or a gfile URL).

    Raises:
      BuildError: naming the folder, when it does not exist, holds no manifest (an unfinished
        or foreign folder), the manifest is not valid JSON, or its schema differs from
        :data:`features.SCHEMA_VERSION`.
    """
    if not isdir(build_dir):
        raise BuildError(f"{build_dir}: no such build folder")
    path = manifest_path(build_dir)
    if not exists(path):
        raise BuildError(
            f"{path}: missing; {build_dir} is not a finished build "
            "(run python -m tinyimagenet_tfrecords.build)")
    try:
        manifest = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise BuildError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != features.SCHEMA_VERSION:
        raise BuildError(
            f"{path}: built with schema version {version}, this reader needs "
            f"{features.SCHEMA_VERSION}; rebuild with --overwrite")
    return manifest


def shard_paths(build_dir: str, manifest: dict, split: str) -> list[str]:
    """Shard paths (absolute, or URLs under a URL ``build_dir``) of ``split``, in manifest order."""
    splits = manifest["splits"]
    if split not in splits:
        raise BuildError(
            f"{manifest_path(build_dir)}: split {split!r} not built (has {sorted(splits)})")
    return [join(build_dir, s["file"]) for s in splits[split]["shards"]]


def check_shards(build_dir: str, manifest: dict, splits) -> None:
    """Checks cheaply (no read) that every shard of ``splits`` exists with its recorded size.

    Meant for the start of a training run: a deleted or truncated shard is named before
    anything is written. Builds whose manifest records no ``bytes`` per shard (made before
    sizes were recorded) are checked for existence only.

    Raises:
      BuildError: one line naming the first missing or wrongly sized shard.
    """
    for split in splits:
        listed = manifest["splits"][split]["shards"] if split in manifest["splits"] else None
        if listed is None:
            shard_paths(build_dir, manifest, split)  # raises, naming the split
        for shard in listed:
            path = join(build_dir, shard["file"])
            if not exists(path):
                raise BuildError(f"{path}: missing shard (listed in {manifest_path(build_dir)}); "
                                 "rebuild with --overwrite")
            expected = shard.get("bytes")
            if expected is not None:
                size = getsize(path)
                if size != expected:
                    raise BuildError(
                        f"{path}: {size} bytes, {manifest_path(build_dir)} says {expected} "
                        "(truncated or replaced); rebuild with --overwrite")
