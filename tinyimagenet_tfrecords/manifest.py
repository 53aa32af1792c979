"""``manifest.json``: the description of a finished build, shared by build, verify and input.

Readers open a build once (:func:`open_build`): the manifest is read and validated a single
time into an immutable :class:`Build` that is handed downstream instead of a path, so a run
reads ``manifest.json`` once per process however many datasets it makes (on a remote folder
each read is a request). The converter keeps the raw dict (:func:`load_manifest`).

A build folder is *finished* exactly when it holds a manifest with this schema version: the
converter writes into a temporary folder and renames it into place only when complete (or, for
a ``tf.io.gfile`` URL such as ``gs://...``, copies the shards first and the manifest last).

Paths go through :mod:`plumbing.paths`: local paths use ``os`` only, a URL goes through
``tf.io.gfile`` (imported on first use), so the converter stays TensorFlow-free for local builds.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Iterable, Optional

from plumbing import paths
from tinyimagenet_tfrecords import features

MANIFEST_NAME = "manifest.json"


class BuildError(Exception):
    """A build folder is missing, unfinished, or was written with another schema."""


# --- The manifest --------------------------------------------------------------------------------


def manifest_path(build_dir: str) -> str:
    return paths.join(build_dir, MANIFEST_NAME)


_reads = {"count": 0}
_reads_lock = threading.Lock()


def read_count() -> int:
    """How many times this process has read a ``manifest.json`` (every read goes through
    :func:`load_manifest`): the seam a test uses to prove a build is opened once."""
    return _reads["count"]


def load_manifest(build_dir: str) -> dict:
    """Reads and sanity-checks ``<build_dir>/manifest.json`` (a local folder or a gfile URL).

    The raw dict, for the converter and ``verify``; readers take :func:`open_build`'s object.

    Raises:
      BuildError: naming the folder, when it does not exist, holds no manifest (an unfinished
        or foreign folder), the manifest is not valid JSON, or its schema differs from
        :data:`features.SCHEMA_VERSION`.
    """
    if not paths.isdir(build_dir):
        raise BuildError(f"{build_dir}: no such build folder")
    path = manifest_path(build_dir)
    if not paths.exists(path):
        raise BuildError(
            f"{path}: missing; {build_dir} is not a finished build "
            "(run python -m tinyimagenet_tfrecords.build)")
    with _reads_lock:
        _reads["count"] += 1
    try:
        manifest = json.loads(paths.read_text(path))
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
    return [paths.join(build_dir, s["file"]) for s in splits[split]["shards"]]


def check_shards(build_dir: str, manifest: dict, splits) -> None:
    """Checks cheaply (no read) that every shard of ``splits`` exists with its recorded size.

    Meant for the start of a training run: a deleted or truncated shard is named before
    anything is written. Builds whose manifest records no ``bytes`` per shard (made before
    sizes were recorded) are checked for existence only. (An opened build has the same check
    as :meth:`Build.check_shards`.)

    Raises:
      BuildError: one line naming the first missing or wrongly sized shard.
    """
    for split in splits:
        listed = manifest["splits"][split]["shards"] if split in manifest["splits"] else None
        if listed is None:
            shard_paths(build_dir, manifest, split)  # raises, naming the split
        _check_listed(((paths.join(build_dir, s["file"]), s.get("bytes")) for s in listed),
                      manifest_path(build_dir))


def _check_listed(shards: Iterable[tuple[str, Optional[int]]], where: str) -> None:
    """Raises :class:`BuildError` for the first ``(path, bytes)`` missing or of another size."""
    for path, expected in shards:
        if not paths.exists(path):
            raise BuildError(f"{path}: missing shard (listed in {where}); "
                             "rebuild with --overwrite")
        if expected is not None:
            size = paths.getsize(path)
            if size != expected:
                raise BuildError(
                    f"{path}: {size} bytes, {where} says {expected} "
                    "(truncated or replaced); rebuild with --overwrite")


def part_size_of(counts: Iterable[int], num_parts: int = 1, part_id: int = 0) -> int:
    """Examples in part ``part_id`` of ``num_parts`` of shards holding ``counts`` examples.

    The readers' sharding rule: whole shard files when every part gets one, else every
    ``num_parts``-th example of the deterministic record order.
    """
    counts = [int(c) for c in counts]
    if num_parts > 1 and len(counts) >= num_parts:
        return sum(counts[part_id::num_parts])
    return (sum(counts) - part_id + num_parts - 1) // num_parts


# --- An opened build -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard file of a split, as the manifest lists it."""
    file: str
    path: str  # absolute, or a URL under a URL build
    num_examples: int
    bytes: Optional[int]  # None in builds made before sizes were recorded
    sha256: str


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    label: int
    wnid: str
    name: str


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a build: its shards in manifest order and its class counts."""
    name: str
    num_examples: int
    shards: tuple[Shard, ...]
    per_class: tuple[tuple[str, int], ...]  # (wnid, examples), in manifest order
    labelled: bool  # False for Tiny ImageNet's test split (every label is -1)
    # The distinct (height, width) stored; None in builds made before they were recorded.
    image_sizes: Optional[tuple[tuple[int, int], ...]] = None

    @property
    def uniform_size(self) -> Optional[tuple[int, int]]:
        """``(height, width)`` when every image of the split has it (the readers then trace
        one decoder instead of three), else None."""
        sizes = self.image_sizes
        return sizes[0] if sizes is not None and len(sizes) == 1 else None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(s.path for s in self.shards)

    def part_size(self, num_parts: int = 1, part_id: int = 0) -> int:
        """Examples in one reader part (one data pass of it); see :func:`part_size_of`."""
        return part_size_of((s.num_examples for s in self.shards), num_parts, part_id)


@dataclasses.dataclass(frozen=True)
class Build:
    """A finished build, opened once by :func:`open_build`; immutable, passed downstream.

    ``stored_size`` is the side every image was stored at when the manifest records one
    (``image_size``), else None: the converter keeps each source image's own size (64 px for
    Tiny ImageNet) and the readers resize per batch either way.
    """
    path: str
    manifest_path: str
    schema_version: int
    storage: str
    stored_size: Optional[int]
    classes: tuple[ClassInfo, ...]  # in label order: label i is classes[i]
    splits: tuple[Split, ...]
    source: Optional[str]
    _text: str = dataclasses.field(repr=False, compare=False)

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.splits)

    @property
    def wnids(self) -> tuple[str, ...]:
        return tuple(c.wnid for c in self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def manifest(self) -> dict:
        """A fresh copy of the raw manifest, for the few fields no attribute carries."""
        return json.loads(self._text)

    def split(self, name: str) -> Split:
        """The split ``name``; raises :class:`BuildError` naming the manifest if not built."""
        for s in self.splits:
            if s.name == name:
                return s
        raise BuildError(
            f"{self.manifest_path}: split {name!r} not built (has {sorted(self.split_names)})")

    def check_shards(self, splits: Iterable[str]) -> None:
        """:func:`check_shards` for this build: every shard of ``splits`` exists with its
        recorded size (no shard is read); one-line :class:`BuildError` otherwise."""
        for name in splits:
            _check_listed(((s.path, s.bytes) for s in self.split(name).shards),
                          self.manifest_path)


def open_build(path_or_url: str) -> Build:
    """Reads and validates ``manifest.json`` once; returns the immutable :class:`Build`.

    TensorFlow is imported only for a URL (as :func:`load_manifest`).

    Raises:
      BuildError: one line naming the folder or manifest: missing, unfinished or other-schema
        build, unknown storage, malformed fields, class labels that are not 0..N-1, or a
        split whose ``num_examples`` differs from its shards' sum.
    """
    manifest = load_manifest(path_or_url)
    where = manifest_path(path_or_url)
    try:
        return _parse_build(path_or_url, where, manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BuildError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None


def _parse_build(build_dir: str, where: str, manifest: dict) -> Build:
    storage = manifest.get("storage", "jpeg")
    if storage not in features.STORAGE_FORMATS:
        raise BuildError(f"{where}: unknown storage {storage!r}")
    classes = tuple(sorted((ClassInfo(int(c["label"]), str(c["wnid"]), str(c.get("name", "")))
                            for c in manifest["classes"]), key=lambda c: c.label))
    if [c.label for c in classes] != list(range(len(classes))):
        raise BuildError(f"{where}: class labels {[c.label for c in classes][:8]}... are not "
                         f"0..{len(classes) - 1}")
    splits = tuple(_parse_split(build_dir, where, name, info)
                   for name, info in manifest["splits"].items())
    size = manifest.get("image_size")
    return Build(path=build_dir, manifest_path=where, schema_version=manifest["schema_version"],
                 storage=storage, stored_size=None if size is None else int(size),
                 classes=classes, splits=splits, source=manifest.get("source"),
                 _text=json.dumps(manifest))


def _parse_split(build_dir: str, where: str, name: str, info: dict) -> Split:
    shards = tuple(Shard(file=str(s["file"]), path=paths.join(build_dir, s["file"]),
                         num_examples=int(s["num_examples"]),
                         bytes=None if s.get("bytes") is None else int(s["bytes"]),
                         sha256=str(s.get("sha256", ""))) for s in info["shards"])
    total = sum(s.num_examples for s in shards)
    listed = info.get("num_examples", total)
    if listed != total:
        raise BuildError(f"{where}: split {name!r} says num_examples {listed} but its shards "
                         f"hold {total}")
    per_class = tuple((str(w), int(n)) for w, n in info.get("per_class", {}).items())
    labelled = bool(info["labelled"]) if "labelled" in info else (
        name != "test" and bool(per_class))
    sizes = info.get("image_sizes")
    image_sizes = None if sizes is None else tuple((int(h), int(w)) for h, w in sizes)
    return Split(name=name, num_examples=total, shards=shards, per_class=per_class,
                 labelled=labelled, image_sizes=image_sizes)
