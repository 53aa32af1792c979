"""Converts Tiny ImageNet (folder, zip, or URL of the zip) into sharded TFRecords + manifest.

    python -m tinyimagenet_tfrecords.build --src tiny-imagenet-200 --out data/tin-jpeg
    python -m tinyimagenet_tfrecords.build --src tiny-imagenet-200.zip --out data/tin-raw \\
        --storage raw
    python -m tinyimagenet_tfrecords.build \\
        --src http://cs231n.stanford.edu/tiny-imagenet-200.zip --out data/tin-jpeg

How it stays fast and safe:
- The main process only lists and cross-checks the source (``source.scan``); worker processes
  (``forkserver``, never importing TensorFlow) each write whole shards: read, fully decode
  with PIL (validation; the pixels for ``raw``), serialize with ``features.encode_example``
  and frame TFRecords themselves (length, masked CRC32C, data, masked CRC32C) with the
  ``google-crc32c`` C extension. Without it, workers fall back to ``tf.io.TFRecordWriter``.
- Train examples are shuffled once with ``seed`` and cut into contiguous shards of that
  permutation, so every shard mixes all classes; output bytes do not depend on ``workers``.
- Everything is written into a hidden temporary folder beside ``out_dir`` (same filesystem);
  ``manifest.json`` is written last and the folder renamed into place, so a killed build never
  leaves a folder that looks finished. Folders and files follow the user's umask.
- ``out_dir`` may be a ``tf.io.gfile`` URL (``gs://``, ``s3://``, ``hdfs://``, ``ram://``): the
  build is made in a local temporary folder, then copied there shard by shard with
  ``manifest.json`` last, so an interrupted copy never looks finished. Only this copy imports
  TensorFlow (in the main process; the workers never do).
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time

from plumbing import cli as cli_lib
from plumbing import paths
from plumbing.progress import Progress
from tinyimagenet_tfrecords import download
from tinyimagenet_tfrecords import features
from tinyimagenet_tfrecords import manifest as manifest_lib
from tinyimagenet_tfrecords import source as source_lib
from tinyimagenet_tfrecords.manifest import BuildError

DEFAULT_SHARDS = {"train": 16, "val": 4, "test": 4}

# Bytes per example besides the image (features, framing) for the disk-space estimate.
_RECORD_OVERHEAD = 200


class WriteError(BuildError):
    """The file system refused a write (no space, read-only, permission); names the path.

    A failure while running (exit 1), unlike a bad source or a conflicting ``--out`` (exit 2).
    """

try:
    import google_crc32c as _gcrc
    _FAST_CRC = getattr(_gcrc, "implementation", "c") == "c"
except ImportError:  # pragma: no cover - depends on the environment
    _gcrc = None
    _FAST_CRC = False


# --- TFRecord framing -------------------------------------------------------------------------


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C (needs ``google-crc32c``)."""
    crc = _gcrc.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked CRC of the length, data, masked CRC of the data."""
    header = struct.pack("<Q", len(data))
    return b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                     struct.pack("<I", masked_crc32c(data))))


class _ShardWriter:
    """Writes TFRecords to ``path`` and returns the file's sha256 on close.

    Own framing with the fast CRC when available (no TensorFlow in the worker); otherwise
    ``tf.io.TFRecordWriter`` (same bytes, but each worker pays the TensorFlow import).
    """

    def __init__(self, path: str):
        self.path = path
        self._sha = hashlib.sha256()
        if _FAST_CRC:
            self._file = open(path, "wb")
            self._pending: list[bytes] = []
            self._pending_size = 0
            self._tf_writer = None
        else:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            self._tf_writer = tf.io.TFRecordWriter(path)

    def write(self, record: bytes) -> None:
        if self._tf_writer is not None:
            self._tf_writer.write(record)
            return
        framed = frame_record(record)
        self._pending.append(framed)
        self._pending_size += len(framed)
        if self._pending_size > (4 << 20):
            self._flush()

    def _flush(self) -> None:
        chunk = b"".join(self._pending)
        self._sha.update(chunk)
        self._file.write(chunk)
        self._pending, self._pending_size = [], 0

    def close(self) -> str:
        if self._tf_writer is not None:
            self._tf_writer.close()
            return download.file_sha256(self.path)
        self._flush()
        self._file.close()
        return self._sha.hexdigest()


# --- Workers ----------------------------------------------------------------------------------

_COUNTER = None  # images done, shared with the main process (multiprocessing.Value)


class _LocalCounter:
    """Stands in for ``multiprocessing.Value`` when the build runs in-process."""

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def get_lock(self):
        return self._lock


def _init_worker(counter) -> None:
    global _COUNTER
    _COUNTER = counter


def _tick(n: int) -> None:
    if _COUNTER is not None and n:
        with _COUNTER.get_lock():
            _COUNTER.value += n


def write_shard(task: dict) -> dict:
    """Writes one shard (worker entry point; plain arguments, picklable result).

    Args:
      task: ``ref`` (SourceRef), ``path`` (output file), ``entries`` (list of tuples
        ``(relpath, filename, label, wnid, bbox)``), ``storage``, ``skip_corrupt``.

    Returns:
      ``{"file", "num_examples", "sha256", "bytes", "per_class", "sizes", "skipped",
      "converted", "cpu_s"}`` (``sizes``: the distinct ``(height, width)`` stored).

    Raises:
      source.CorruptImageError: for an undecodable image unless ``skip_corrupt``.
    """
    try:
        return _write_shard(task)
    except OSError as e:  # the output side (reads are wrapped above): name the shard
        raise OSError(e.errno, e.strerror or str(e), e.filename or task["path"]) from None


def _write_shard(task: dict) -> dict:
    cpu_start = time.process_time()
    ref, storage = task["ref"], task["storage"]
    writer = _ShardWriter(task["path"])
    per_class: dict[str, int] = {}
    sizes: set[tuple[int, int]] = set()
    skipped, converted = [], []
    count = pending_ticks = 0
    try:
        for relpath, filename, label, wnid, bbox in task["entries"]:
            pending_ticks += 1
            if pending_ticks == 64:
                _tick(pending_ticks)
                pending_ticks = 0
            try:
                data = source_lib.read_file(ref, relpath)
                prepared = source_lib.prepare_image(data, storage, ref.display(relpath))
            except (OSError, KeyError) as e:
                raise source_lib.SourceError(f"{ref.display(relpath)}: cannot read: {e}") from e
            except source_lib.CorruptImageError as e:  # undecodable, or a damaged zip member
                if not task["skip_corrupt"]:
                    raise
                skipped.append({"file": relpath, "reason": str(e)})
                continue
            if prepared.converted:
                converted.append({"file": relpath, "reason": prepared.converted})
            writer.write(features.encode_example(
                image=prepared.data, image_format=prepared.image_format,
                height=prepared.height, width=prepared.width, label=label, wnid=wnid,
                filename=filename, bbox=bbox))
            if wnid:
                per_class[wnid] = per_class.get(wnid, 0) + 1
            sizes.add((int(prepared.height), int(prepared.width)))
            count += 1
        _tick(pending_ticks)
    finally:
        sha = writer.close()
    return {"file": os.path.basename(task["path"]), "num_examples": count, "sha256": sha,
            "bytes": os.path.getsize(task["path"]), "per_class": per_class,
            "sizes": sorted(sizes), "skipped": skipped, "converted": converted,
            "cpu_s": time.process_time() - cpu_start}


# --- Planning ---------------------------------------------------------------------------------


def resolve_shards(shards, splits) -> dict[str, int]:
    """``None`` -> defaults; an int -> that many shards for every split; a dict per split."""
    if shards is None:
        shards = DEFAULT_SHARDS
    if isinstance(shards, int):
        shards = {s: shards for s in splits}
    out = {}
    for split in splits:
        n = int(shards.get(split, DEFAULT_SHARDS[split]))
        if n < 1:
            raise ValueError(f"shards for {split} must be >= 1, got {n}")
        out[split] = n
    return out


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def plan_shards(entries: list, split: str, num_shards: int, seed: int) -> list[tuple[str, list]]:
    """Splits ``entries`` into ``(file name, entries)`` shards.

    Train: a seeded permutation (numpy PCG64, independent of the worker count) cut into
    contiguous equal parts, so every shard mixes all classes. Eval splits keep source order.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel

    if split == "train":
        order = np.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    num_shards = max(1, min(num_shards, len(entries)))
    bounds = [len(entries) * i // num_shards for i in range(num_shards + 1)]
    return [(shard_name(split, i, num_shards), entries[bounds[i]:bounds[i + 1]])
            for i in range(num_shards)]


# --- The build --------------------------------------------------------------------------------


def _run_tasks(tasks: list[dict], workers: int, counter) -> list[dict]:
    """Runs ``write_shard`` over ``tasks``; the first failure stops everything and re-raises."""
    if workers <= 1 or len(tasks) <= 1:
        _init_worker(counter)
        try:
            return [write_shard(t) for t in tasks]
        finally:
            _init_worker(None)
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["tinyimagenet_tfrecords.source",
                                      "tinyimagenet_tfrecords.features"])
    shared = ctx.Value("q", 0)
    results: dict[int, dict] = {}
    pool = ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(shared,))
    stop = threading.Event()

    def mirror():  # copy the shared count into the caller's counter for the progress line
        while not stop.wait(0.1):
            counter.value = shared.value

    mirror_thread = threading.Thread(target=mirror, daemon=True)
    mirror_thread.start()
    try:
        indexed = [dict(t, index=i) for i, t in enumerate(tasks)]
        for result in pool.imap_unordered(_write_indexed, indexed):
            results[result.pop("index")] = result
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        stop.set()
        mirror_thread.join()
        counter.value = shared.value
    return [results[i] for i in range(len(tasks))]


def _write_indexed(task: dict) -> dict:
    index = task.pop("index")
    return dict(write_shard(task), index=index)


def _build_args(src, shards, splits, storage, seed, skip_corrupt, sha256) -> dict:
    """The arguments that determine the output bytes (recorded; compared for idempotence)."""
    return {"src": src if paths.is_web_address(src) else os.path.abspath(src), "shards": shards,
            "splits": list(splits), "storage": storage, "seed": int(seed),
            "skip_corrupt": bool(skip_corrupt), "sha256": sha256}


def build_dataset(src: str, out_dir: str, *, shards=None, workers=None,
                  splits=("train", "val", "test"), storage: str = "raw", seed: int = 0,
                  overwrite: bool = False, skip_corrupt: bool = False, sha256=None,
                  progress: bool = True, download_dir=None, stats=None) -> dict:
    """Builds (or finds already built) the TFRecord shards of ``src`` in ``out_dir``.

    Args:
      src: extracted folder, ``tiny-imagenet-200.zip`` (read in place) or http(s) URL of it.
      out_dir: the build folder (created by an atomic rename when complete), or a
        ``tf.io.gfile`` URL (built locally, then copied with the manifest last).
      shards: shards per split: None (16 train, 4 val, 4 test), an int for every split, or a
        dict ``{split: n}``. Capped at the split's example count.
      workers: worker processes (default: CPU count). Does not change the output bytes.
      splits: which of train/val/test to build.
      storage: "raw" (decoded uint8 RGB; the default: decoding is then nearly free and the
        input pipeline runs near its read ceiling) or "jpeg" (the original bytes, ~8x smaller).
      seed: train shuffle seed.
      overwrite: replace an existing build (finished or not).
      skip_corrupt: skip undecodable images and damaged zip members (listed in the manifest)
        instead of failing.
      sha256: expected sha256 of the zip (URL or local zip).
      progress: draw progress on stderr.
      download_dir: where a URL is downloaded to (default: the folder holding ``out_dir``; for
        a URL ``out_dir``, the system's temporary folder); a URL ``out_dir`` is also built
        there before the copy.
      stats: optional dict, filled with timings for benchmarks: ``scan_s`` (listing and
        text files), ``write_s`` (all shards, wall), ``worker_cpu_s`` (CPU seconds of the
        shard writers, summed), ``total_s``.

    Returns:
      The manifest (as written to ``out_dir/manifest.json``).

    Raises:
      source.SourceError: bad input, naming the file (and line).
      download.DownloadError: a failed or mismatching download.
      manifest.BuildError: ``out_dir`` holds another build (or other files) and not
        ``overwrite``.
      WriteError: the file system refused a write (no space, read-only), naming the path;
        for space, with the size needed and that of ``--storage jpeg``.
    """
    if paths.is_url(out_dir):
        return _build_to_url(src, out_dir, shards=shards, workers=workers, splits=splits,
                             storage=storage, seed=seed, overwrite=overwrite,
                             skip_corrupt=skip_corrupt, sha256=sha256, progress=progress,
                             download_dir=download_dir, stats=stats)
    start = time.perf_counter()
    stats = {} if stats is None else stats
    splits, shard_counts, args = _check_build_args(src, shards, splits, storage, seed,
                                                   skip_corrupt, sha256)
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        existing = _check_existing(out_dir, args, overwrite)
        if existing is not None:
            if progress:
                print(f"{out_dir}: already built with the same arguments; nothing to do "
                      "(--overwrite rebuilds)", file=sys.stderr)
            return existing

    zip_or_dir = src
    if paths.is_web_address(src):
        zip_or_dir = download.fetch(src, download_dir or os.path.dirname(out_dir),
                                    sha256=sha256, progress=progress)
    elif sha256:
        if not os.path.isfile(src):
            raise ValueError("sha256 applies to a zip file or URL, not a folder")
        download.check_sha256(src, sha256)
    scan_start = time.perf_counter()
    ref = source_lib.open_source(zip_or_dir)
    scanned = source_lib.scan(ref, splits)
    stats["scan_s"] = time.perf_counter() - scan_start
    if scanned.without_boxes:  # named once, whether or not progress is drawn
        print(f"build: {len(scanned.without_boxes)} classes have no bounding-box file; their "
              f"boxes are recorded as absent (-1): {' '.join(scanned.without_boxes)}",
              file=sys.stderr)

    parent = os.path.dirname(out_dir)
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_dead_temporaries(out_dir)
        tmp = tempfile.mkdtemp(prefix=_temp_prefix(out_dir) + f"{os.getpid()}-", dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a build is shared as usual
        manifest = _write_build(scanned, tmp, shard_counts, splits, storage, seed,
                                skip_corrupt, workers or os.cpu_count() or 1, progress, stats)
        manifest.update(args=args, source=src, source_sha256=(
            download.file_sha256(zip_or_dir) if os.path.isfile(zip_or_dir) else None))
        with open(os.path.join(tmp, manifest_lib.MANIFEST_NAME), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _move_into_place(tmp, out_dir)
    except OSError as e:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, tmp or parent, out_dir, scanned, storage) from e
    except BaseException:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    stats["total_s"] = time.perf_counter() - start
    if progress:
        counts = ", ".join(f"{s} {manifest['splits'][s]['num_examples']}" for s in splits)
        print(f"{out_dir}: {counts} examples ({storage}); {skipped_text(manifest['skipped'])}, "
              f"{len(manifest['converted'])} converted", file=sys.stderr)
    return manifest


def skipped_text(skipped: list[dict], named: int = 3) -> str:
    """"N files skipped" naming the first few, so a user sees at once whether they are stray
    ``.DS_Store`` files or images that matter (all are in the manifest's ``skipped``)."""
    if not skipped:
        return "0 files skipped"
    names = ", ".join(s["file"] for s in skipped[:named])
    more = f" and {len(skipped) - named} more" if len(skipped) > named else ""
    noun = "file" if len(skipped) == 1 else "files"
    return f"{len(skipped)} {noun} skipped ({names}{more}; see manifest.json \"skipped\")"


def _check_build_args(src, shards, splits, storage, seed, skip_corrupt, sha256):
    """Validates the arguments; returns ``(splits, shard counts, recorded args)``."""
    splits = tuple(splits)
    if not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct names among {source_lib.SPLITS}: {splits}")
    if storage not in features.STORAGE_FORMATS:
        raise ValueError(f"storage must be one of {features.STORAGE_FORMATS}, got {storage!r}")
    shard_counts = resolve_shards(shards, splits)
    return splits, shard_counts, _build_args(src, shard_counts, splits, storage, seed,
                                             skip_corrupt, sha256)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def estimate_bytes(scanned, storage: str) -> int:
    """About how many bytes the shards of ``scanned`` take in ``storage`` (from the first image).

    Raw stores ``height x width x 3`` bytes per image; jpeg keeps the files' own bytes, which
    the first image's size stands in for. Cheap: one image is read.
    """
    entries = [e for split in scanned.entries.values() for e in split]
    if not entries:
        return 0
    data = source_lib.read_file(scanned.ref, entries[0].relpath)
    if storage == "raw":
        from PIL import Image  # pylint: disable=import-outside-toplevel
        import io  # pylint: disable=import-outside-toplevel
        with Image.open(io.BytesIO(data)) as image:
            per_image = image.size[0] * image.size[1] * 3
    else:
        per_image = len(data)
    return len(entries) * (per_image + _RECORD_OVERHEAD)


def _write_error(e: OSError, path: str, out_dir: str, scanned, storage: str) -> WriteError:
    """One line for a refused write: the path, the reason, and for space what is needed."""
    where = e.filename or path
    message = f"{where}: cannot write the build ({e.strerror or e})"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            need = {s: estimate_bytes(scanned, s) for s in features.STORAGE_FORMATS}
        except (OSError, KeyError, source_lib.SourceError, ValueError):
            need = None
        if need:
            message += (f"; the build needs about {_size(need[storage])} free in "
                        f"{os.path.dirname(out_dir)}")
            if storage != "jpeg":
                message += f"; --storage jpeg needs about {_size(need['jpeg'])}"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        message += f"; choose an --out on a writable file system ({os.path.dirname(out_dir)})"
    return WriteError(message)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _build_to_url(src: str, url: str, *, overwrite: bool, download_dir, progress: bool,
                  **kwargs) -> dict:
    """Builds in a local temporary folder, then copies it to ``url`` with the manifest last."""
    splits, shard_counts, args = _check_build_args(
        src, kwargs["shards"], kwargs["splits"], kwargs["storage"], kwargs["seed"],
        kwargs["skip_corrupt"], kwargs["sha256"])
    del splits, shard_counts
    if paths.exists(url):
        existing = _check_existing(url, args, overwrite)
        if existing is not None:
            if progress:
                print(f"{url}: already built with the same arguments; nothing to do "
                      "(--overwrite rebuilds)", file=sys.stderr)
            return existing
    local_root = tempfile.mkdtemp(prefix="tin-build-", dir=download_dir)
    try:
        local = os.path.join(local_root, "build")
        manifest = build_dataset(src, local, overwrite=True, progress=progress,
                                 download_dir=download_dir or local_root, **kwargs)
        manifest["args"] = args
        copy_build(local, url, manifest)
    finally:
        shutil.rmtree(local_root, ignore_errors=True)
    if progress:
        print(f"{url}: copied", file=sys.stderr)
    return manifest


def copy_build(local_dir: str, url: str, manifest: dict) -> None:
    """Copies a finished local build to a ``tf.io.gfile`` URL, ``manifest.json`` last.

    An existing build at ``url`` loses its manifest first (so it never looks finished while
    its shards are replaced); on failure the shards copied so far are deleted.

    Raises:
      WriteError: naming the URL when the copy fails.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    gfile = tf.io.gfile
    target = manifest_lib.manifest_path(url)
    copied = []
    try:
        gfile.makedirs(url)
        if gfile.exists(target):
            gfile.remove(target)
        listed = {s["file"] for split in manifest["splits"].values() for s in split["shards"]}
        for name in gfile.listdir(url):  # shards of a replaced build
            if name.endswith(".tfrecord") and name not in listed:
                gfile.remove(paths.join(url, name))
        for name in sorted(listed):
            dest = paths.join(url, name)
            gfile.copy(os.path.join(local_dir, name), dest, overwrite=True)
            copied.append(dest)
        with gfile.GFile(target, "w") as f:
            f.write(json.dumps(manifest, indent=1))
    except (tf.errors.OpError, OSError) as e:
        for dest in copied:
            try:
                gfile.remove(dest)
            except (tf.errors.OpError, OSError):
                pass
        reason = e.message if isinstance(e, tf.errors.OpError) else str(e)
        raise WriteError(f"{url}: cannot copy the build there ({reason.splitlines()[0]})") from e


def _temp_prefix(out_dir: str) -> str:
    """Hidden temporary folders beside ``out_dir``: ``.<name>.tmp-<host>-<pid>-<random>``."""
    host = socket.gethostname().replace("-", "_") or "host"
    return f".{os.path.basename(out_dir)}.tmp-{host}-"


def _remove_dead_temporaries(out_dir: str) -> None:
    """Deletes temporary folders left by killed builds of ``out_dir`` on this host.

    Only folders whose builder process (pid in the name) no longer exists; a live build's
    folder, or one from another host sharing the filesystem, is left alone.
    """
    parent, prefix = os.path.dirname(out_dir), _temp_prefix(out_dir)
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        try:
            pid = int(name[len(prefix):].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except PermissionError:  # alive, someone else's
            continue


def _check_existing(out_dir: str, args: dict, overwrite: bool):
    """Returns the existing manifest when it was built with ``args`` (and not overwrite)."""
    if not paths.isdir(out_dir):
        raise BuildError(f"{out_dir}: exists and is not a folder")
    if overwrite:
        return None
    if not paths.exists(manifest_lib.manifest_path(out_dir)):
        if paths.listdir(out_dir):
            raise BuildError(f"{out_dir}: exists and is not a finished build; pass "
                             "--overwrite to replace it")
        return None
    try:
        existing = manifest_lib.load_manifest(out_dir)
    except BuildError as e:
        raise BuildError(f"{e}; pass --overwrite to replace it") from e
    if existing.get("args") == args:
        return existing
    old = existing.get("args", {})
    differ = sorted(k for k in set(old) | set(args) if old.get(k) != args.get(k))
    raise BuildError(f"{out_dir}: already holds a build with different arguments "
                     f"({', '.join(differ)}); pass --overwrite to replace it")


def _move_into_place(tmp: str, out_dir: str) -> None:
    if not os.path.exists(out_dir):
        os.rename(tmp, out_dir)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-",
                           dir=os.path.dirname(out_dir))
    os.rmdir(old)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_build(scanned, tmp, shard_counts, splits, storage, seed, skip_corrupt, workers,
                 progress, stats) -> dict:
    tasks, task_split = [], []
    for split in splits:
        entries = [(e.relpath, e.filename, e.label, e.wnid, e.bbox)
                   for e in scanned.entries[split]]
        for name, part in plan_shards(entries, split, shard_counts[split], seed):
            tasks.append({"ref": scanned.ref, "path": os.path.join(tmp, name), "entries": part,
                          "storage": storage, "skip_corrupt": skip_corrupt})
            task_split.append(split)
    total = sum(len(t["entries"]) for t in tasks)
    counter = _LocalCounter()
    write_start = time.perf_counter()
    bar = Progress(total, enabled=progress, interval=10.0, prefix=f"build {storage} ")
    with bar.watching(lambda: counter.value):
        results = _run_tasks(tasks, workers, counter)
    stats["write_s"] = time.perf_counter() - write_start
    stats["worker_cpu_s"] = sum(r["cpu_s"] for r in results)

    out_splits = {}
    skipped = [{"file": f, "reason": "stray file (not part of the dataset layout)"}
               for f in scanned.stray]
    converted = []
    for split in splits:
        shards = [r for r, s in zip(results, task_split) if s == split]
        per_class: dict[str, int] = {}
        for r in shards:
            for wnid, n in r["per_class"].items():
                per_class[wnid] = per_class.get(wnid, 0) + n
            skipped.extend(r["skipped"])
            converted.extend(r["converted"])
        if split == "train":
            for wnid in scanned.wnids:
                if not per_class.get(wnid):
                    raise source_lib.SourceError(
                        f"{scanned.ref.display('train/' + wnid + '/images')}: empty class "
                        f"{wnid} (every image skipped as corrupt)")
        num = sum(r["num_examples"] for r in shards)
        if num == 0:
            raise source_lib.SourceError(
                f"{scanned.ref.display(split)}: no usable image (all skipped as corrupt)")
        out_splits[split] = {
            "num_examples": num,
            "per_class": {w: per_class[w] for w in scanned.wnids if w in per_class},
            # Every stored [height, width]: one size lets the readers trace one decoder.
            "image_sizes": [list(hw) for hw in sorted({tuple(hw) for r in shards
                                                       for hw in r["sizes"]})],
            "shards": [{"file": r["file"], "num_examples": r["num_examples"],
                        "bytes": r["bytes"], "sha256": r["sha256"]} for r in shards]}
    return {
        "schema_version": features.SCHEMA_VERSION, "storage": storage,
        "num_classes": len(scanned.wnids), "classes": scanned.classes, "splits": out_splits,
        "skipped": skipped, "converted": converted, "num_stray_files": len(scanned.stray),
        "classes_without_boxes": list(scanned.without_boxes),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }


# --- CLI ----------------------------------------------------------------------------------

def exit_status(error: BaseException) -> int:
    """The exit status of a build error: 1 for failures while running, 2 for bad input."""
    if isinstance(error, (WriteError, download.DownloadError, OSError)):
        return cli_lib.EXIT_FAILURE
    return cli_lib.EXIT_BAD_INPUT


def main(argv) -> int:
    """Maps the flags to :func:`build_dataset`; one line on stderr and a status on error."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    fv = flags.FLAGS
    if len(argv) > 1:
        print(f"build: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    try:
        build_dataset(
            fv.src, fv.out,
            shards={"train": fv.train_shards, "val": fv.val_shards, "test": fv.test_shards},
            workers=fv.workers, splits=tuple(fv.splits), storage=fv.storage, seed=fv.seed,
            overwrite=fv.overwrite, skip_corrupt=fv.skip_corrupt, sha256=fv.sha256,
            progress=fv.progress, download_dir=fv.download_dir)
    except (source_lib.SourceError, download.DownloadError, BuildError, ValueError,
            OSError) as e:
        print(f"build: error: {e}", file=sys.stderr)
        return exit_status(e)
    except KeyboardInterrupt:
        print("build: interrupted; no output was left behind", file=sys.stderr)
        return 130
    return 0


def _define_flags() -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("src", None, "Tiny ImageNet folder, its zip, or an http(s) URL of the "
                        "zip (e.g. http://cs231n.stanford.edu/tiny-imagenet-200.zip).")
    flags.DEFINE_string("out", None, "Output build folder, or a tf.io.gfile URL (gs://...): "
                        "built locally, then copied with manifest.json last.")
    flags.DEFINE_integer("train_shards", DEFAULT_SHARDS["train"], "Train shards.", lower_bound=1)
    flags.DEFINE_integer("val_shards", DEFAULT_SHARDS["val"], "Val shards.", lower_bound=1)
    flags.DEFINE_integer("test_shards", DEFAULT_SHARDS["test"], "Test shards.", lower_bound=1)
    flags.DEFINE_integer("workers", None, "Worker processes (default: CPU count).",
                         lower_bound=1)
    flags.DEFINE_list("splits", ["train", "val", "test"], "Splits to build.")
    flags.DEFINE_enum("storage", "raw", list(features.STORAGE_FORMATS),
                      "raw: decoded uint8 RGB (fastest to read); jpeg: the original bytes, "
                      "never re-encoded (~8x smaller).")
    flags.DEFINE_integer("seed", 0, "Train shuffle seed.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing build.")
    flags.DEFINE_bool("skip_corrupt", False, "Skip undecodable images and damaged zip members "
                      "(listed in the manifest) instead of failing.")
    flags.DEFINE_string("sha256", None, "Expected sha256 of the zip (URL or local zip).")
    flags.DEFINE_string("download_dir", None, "Where to download a URL (default: the "
                        "folder holding --out).")
    flags.DEFINE_bool("progress", True, "Progress line on stderr.")
    flags.mark_flags_as_required(["src", "out"])


def cli() -> None:
    """Console-script entry point (``tin-build``), same as ``python -m ...build``."""
    _define_flags()
    cli_lib.run(main, __name__)


if __name__ == "__main__":
    cli()
