"""``manifest.json``: the description of a finished build, shared by build, verify and input.

A build folder is *finished* exactly when it holds a manifest with this schema version: the
converter writes into a temporary folder and renames it into place only when complete.
"""

from __future__ import annotations

import json
import os

from tinyimagenet_tfrecords import features

MANIFEST_NAME = "manifest.json"


class BuildError(Exception):
    """A build folder is missing, unfinished, or was written with another schema."""


def manifest_path(build_dir: str) -> str:
    return os.path.join(build_dir, MANIFEST_NAME)


class _LocalFiles:
    """The subset of ``tf.io.gfile`` used here, for local paths without TensorFlow (the
    converter's worker processes never import it)."""

    isdir = staticmethod(os.path.isdir)
    exists = staticmethod(os.path.exists)
    GFile = staticmethod(open)


def _filesystem(build_dir: str):
    """``tf.io.gfile`` for URLs (``gs://``, ``s3://``, ``ram://``, ...), else plain ``os``."""
    if "://" in str(build_dir):
        import tensorflow as tf
        return tf.io.gfile
    return _LocalFiles


def load_manifest(build_dir: str) -> dict:
    """Reads and sanity-checks ``<build_dir>/manifest.json``.

    Raises:
      BuildError: naming the folder, when it does not exist, holds no manifest (an unfinished
        or foreign folder), the manifest is not valid JSON, or its schema differs from
        :data:`features.SCHEMA_VERSION`.
    """
    fs = _filesystem(build_dir)
    if not fs.isdir(build_dir):
        raise BuildError(f"{build_dir}: no such build folder")
    path = manifest_path(build_dir)
    if not fs.exists(path) or fs.isdir(path):
        raise BuildError(
            f"{path}: missing; {build_dir} is not a finished build "
            "(run python -m tinyimagenet_tfrecords.build)")
    try:
        with fs.GFile(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise BuildError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
    version = manifest.get("schema_version")
    if version != features.SCHEMA_VERSION:
        raise BuildError(
            f"{path}: built with schema version {version}, this reader needs "
            f"{features.SCHEMA_VERSION}; rebuild with --overwrite")
    return manifest


def shard_paths(build_dir: str, manifest: dict, split: str) -> list[str]:
    """Absolute shard paths of ``split``, in manifest order."""
    splits = manifest["splits"]
    if split not in splits:
        raise BuildError(
            f"{manifest_path(build_dir)}: split {split!r} not built (has {sorted(splits)})")
    return [os.path.join(build_dir, s["file"]) for s in splits[split]["shards"]]
