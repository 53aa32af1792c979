"""Re-reads a build and checks it against its manifest.

    python -m tinyimagenet_tfrecords.verify data/tin-jpeg
    python -m tinyimagenet_tfrecords.verify data/tin-jpeg --nodecode   # framing + counts only
    python -m tinyimagenet_tfrecords.verify gs://bucket/tin-raw          # any tf.io.gfile URL

Checks, naming the shard (and record) at fault: the manifest loads and its classes are the
sorted wnids labelled 0..N-1; no shard is missing and no unlisted shard is present; every
shard's sha256; every record's TFRecord CRCs (TF's reader) and features; labels in range and
matching their wnid (-1 and no box for test); filenames unique per split; IMAGE_FORMAT agrees
with the storage; every record's ``HEIGHT x WIDTH`` is among its split's ``image_sizes`` (when
recorded: the readers trust a single one); every image decodes to ``[HEIGHT, WIDTH, 3]`` with
``features.decode_image``, the decoder the input pipeline itself calls; the example counts per
shard, split and class.

:func:`find_corrupt_shards` is the quick answer to a ``DataLossError`` during training: which
shard of a split holds a record whose CRC does not match.
"""

from __future__ import annotations

import collections
import hashlib
import os
import sys

from plumbing import cli as cli_lib
from plumbing import paths
from tinyimagenet_tfrecords import features
from tinyimagenet_tfrecords import manifest as manifest_lib
from tinyimagenet_tfrecords.manifest import BuildError


class VerifyError(BuildError):
    """The build does not match its manifest; the message names the file (and record).

    ``problems`` lists every bad shard as ``(path, what is wrong)`` (empty for a fault of the
    manifest itself).
    """

    def __init__(self, message: str, problems=()):
        super().__init__(message)
        self.problems = list(problems)


def _check_classes(build_dir: str, manifest: dict) -> list[str]:
    where = manifest_lib.manifest_path(build_dir)
    classes = manifest.get("classes", [])
    wnids = [c["wnid"] for c in classes]
    if [c["label"] for c in classes] != list(range(len(classes))):
        raise VerifyError(f"{where}: class labels are not 0..{len(classes) - 1} in order")
    if wnids != sorted(set(wnids)):
        raise VerifyError(f"{where}: class wnids are not sorted and unique")
    if manifest.get("num_classes") != len(classes):
        raise VerifyError(f"{where}: num_classes {manifest.get('num_classes')} but "
                          f"{len(classes)} classes listed")
    if manifest.get("storage") not in features.STORAGE_FORMATS:
        raise VerifyError(f"{where}: unknown storage {manifest.get('storage')!r}")
    return wnids


def _records(path: str, decode: bool, storage: str):
    """Yields numpy batches of the checked fields of every record of one shard."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    def parse(record):
        ex = tf.io.parse_single_example(record, features.PARSE_SPEC)
        out = {k: ex[k] for k in (features.LABEL, features.WNID, features.FILENAME,
                                  features.IMAGE_FORMAT, features.HEIGHT, features.WIDTH,
                                  features.BBOX)}
        out["size"] = tf.strings.length(ex[features.IMAGE], unit="BYTE")
        if decode:
            image = features.decode_image(ex[features.IMAGE], storage, ex[features.HEIGHT],
                                          ex[features.WIDTH])
            out["shape"] = tf.shape(image, out_type=tf.int64)
        return out

    dataset = (tf.data.TFRecordDataset(path, buffer_size=8 << 20)
               .map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(512))
    return dataset.as_numpy_iterator()


def verify_build(build_dir: str, *, decode: bool = True) -> dict:
    """Checks ``build_dir`` against its manifest; returns ``{split: num_examples}``.

    Every shard is checked even after a bad one, so one run names all that need rebuilding.

    Args:
      build_dir: a finished build folder or ``tf.io.gfile`` URL.
      decode: also decode every image (the slow part; framing, features and counts are
        always checked).

    Raises:
      manifest.BuildError: not a finished build of this schema.
      VerifyError: naming the file (and record) at fault; for bad shards ``problems`` lists
        every one with what is wrong with it.
    """
    manifest = manifest_lib.load_manifest(build_dir)
    wnids = _check_classes(build_dir, manifest)
    where = manifest_lib.manifest_path(build_dir)
    listed = {s["file"] for split in manifest["splits"].values() for s in split["shards"]}
    present = {n for n in paths.listdir(build_dir) if n.endswith(".tfrecord")}
    if present - listed:
        raise VerifyError(f"{build_dir}: shards not in the manifest: {sorted(present - listed)}")
    storage = manifest["storage"]
    check = _ShardCheck(where, wnids, storage, decode)
    summary, problems = {}, []
    for split, info in manifest["splits"].items():
        names: set = set()
        per_class: collections.Counter = collections.Counter()
        sizes = info.get("image_sizes")
        sizes = None if sizes is None else {tuple(hw) for hw in sizes}
        found = [check(paths.join(build_dir, shard["file"]), shard, split, names,
                       per_class, sizes) for shard in info["shards"]]
        bad = [(path, reason) for path, reason, _ in found if reason]
        problems += bad
        summary[split] = sum(count for _, _, count in found)
        if not bad:  # split totals only mean something when every shard read
            try:
                _check_split(where, split, info, summary[split], per_class)
            except VerifyError as e:
                if not problems:
                    raise
                problems.append((where, str(e).removeprefix(f"{where}: ")))
    if problems:
        raise VerifyError(_problems_line(problems), problems=problems)
    return summary


class _ShardCheck:
    """Checks one shard at a time: ``(path, what is wrong or "", records read)``."""

    def __init__(self, where: str, wnids: list, storage: str, decode: bool):
        self.where, self.wnids, self.storage, self.decode = where, wnids, storage, decode
        self.allowed_formats = {b"raw"} if storage == "raw" else {b"jpeg", b"png"}

    def __call__(self, path, shard, split, names, per_class, sizes=None
                 ) -> tuple[str, str, int]:
        if not paths.exists(path):
            return path, f"missing shard (listed in {self.where})", 0
        wrong, count = [], 0
        if _sha256(path) != shard["sha256"]:
            wrong.append(f"sha256 differs from {self.where}")
        size = paths.getsize(path)
        if "bytes" in shard and size != shard["bytes"]:
            wrong.append(f"{size} bytes, {self.where} says {shard['bytes']}")
        try:
            count = self._read(path, split, names, per_class, sizes)
            if count != shard["num_examples"]:
                wrong.append(f"{count} records, {self.where} says {shard['num_examples']}")
        except VerifyError as e:
            wrong.append(str(e).removeprefix(f"{path}: "))
        return path, "; ".join(wrong), count

    def _read(self, path, split, names, per_class, sizes) -> int:
        """Reads every record of ``path``; returns their count (VerifyError at the first bad
        one). ``sizes``: the split's recorded ``(height, width)`` set, None if unrecorded."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        count = 0
        try:
            for batch in _records(path, self.decode, self.storage):
                _check_batch(batch, path, count, split, self.wnids, self.allowed_formats,
                             self.decode, sizes)
                for i, name in enumerate(batch[features.FILENAME]):
                    if name in names:
                        raise VerifyError(f"{path}: record {count + i}: file name "
                                          f"{name.decode()} repeated in split {split}")
                    names.add(name)
                per_class.update(w.decode() for w in batch[features.WNID] if w)
                count += len(batch[features.LABEL])
        except tf.errors.OpError as e:
            raise VerifyError(f"{path}: unreadable after record {count}: "
                              f"{e.message.splitlines()[0]}") from e
        return count


def _check_split(where: str, split: str, info: dict, total: int, per_class) -> None:
    if total != info["num_examples"]:
        raise VerifyError(f"{where}: split {split} has {total} examples in its shards but "
                          f"num_examples {info['num_examples']}")
    if dict(per_class) != info["per_class"]:
        diff = sorted(w for w in set(per_class) | set(info["per_class"])
                      if per_class.get(w, 0) != info["per_class"].get(w, 0))
        raise VerifyError(f"{where}: split {split} per_class counts differ from the shards "
                          f"for {diff[:5]}")


def _problems_line(problems: list[tuple[str, str]], named: int = 5) -> str:
    """One line for every bad shard: the first in full, the others by file name."""
    path, reason = problems[0]
    rest = [p.rsplit("/", 1)[-1] for p, _ in problems[1:]]
    if not rest:
        return f"{path}: {reason}"
    more = f", and {len(rest) - named} more" if len(rest) > named else ""
    return (f"{path}: {reason} (and {len(rest)} more bad shard{'s' if len(rest) > 1 else ''}: "
            f"{', '.join(rest[:named])}{more})")


def _sha256(path: str) -> str:
    """sha256 of a local file or a ``tf.io.gfile`` URL, read in 8 MB blocks."""
    digest = hashlib.sha256()
    with paths.open_binary(path) as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_corrupt_shards(build_dir: str, split: str) -> list[tuple[str, str]]:
    """The shards of ``split`` holding a record TensorFlow cannot read (bad CRC, cut short).

    Reads every record's framing with TF's own reader (no parsing or decoding), so it names
    the file behind a ``DataLossError`` ("corrupted record at <offset>") that tf.data raised
    without saying which shard. Missing shards are reported too.

    Returns:
      ``[(shard path, reason), ...]`` in manifest order; empty when every shard reads.

    Raises:
      manifest.BuildError: not a finished build, or no such split.
    """
    manifest = manifest_lib.load_manifest(build_dir)
    return find_corrupt_files(manifest_lib.shard_paths(build_dir, manifest, split))


def find_corrupt_files(files) -> list[tuple[str, str]]:
    """:func:`find_corrupt_shards` for shard ``files`` (an opened build's, say): the ones that
    are missing or hold a record TensorFlow cannot read, ``[(path, reason), ...]`` in order."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    bad = []
    for path in files:
        if not paths.exists(path):
            bad.append((path, "missing"))
            continue
        try:
            for _ in tf.data.TFRecordDataset(path, buffer_size=8 << 20).batch(1024):
                pass
        except tf.errors.OpError as e:
            bad.append((path, e.message.splitlines()[0]))
    return bad


def _check_batch(batch, path, offset, split, wnids, allowed_formats, decode,
                 sizes=None) -> None:
    labels = batch[features.LABEL]
    for i, label in enumerate(labels):
        at = f"{path}: record {offset + i} ({batch[features.FILENAME][i].decode()})"
        wnid = batch[features.WNID][i].decode()
        if split == "test":
            if label != features.NO_LABEL or wnid:
                raise VerifyError(f"{at}: test example has label {label} / wnid {wnid!r}")
        elif not 0 <= label < len(wnids) or wnids[label] != wnid:
            raise VerifyError(f"{at}: label {label} does not match wnid {wnid!r}")
        fmt = batch[features.IMAGE_FORMAT][i]
        if fmt not in allowed_formats:
            raise VerifyError(f"{at}: image format {fmt.decode()!r} in a build stored as "
                              f"{sorted(f.decode() for f in allowed_formats)}")
        h, w = int(batch[features.HEIGHT][i]), int(batch[features.WIDTH][i])
        if sizes is not None and (h, w) not in sizes:
            raise VerifyError(f"{at}: {h}x{w} is not among split {split}'s image_sizes "
                              f"{sorted(sizes)} in the manifest")
        if fmt == b"raw" and batch["size"][i] != h * w * 3:
            raise VerifyError(f"{at}: {batch['size'][i]} raw bytes for {h}x{w}x3")
        if decode and tuple(batch["shape"][i]) != (h, w, 3):
            raise VerifyError(f"{at}: decodes to {tuple(batch['shape'][i])}, expected "
                              f"{(h, w, 3)}")
        box = batch[features.BBOX][i]
        if split == "test" and tuple(box) != features.NO_BBOX:
            raise VerifyError(f"{at}: test example has a box {tuple(box)}")


def run(build_dir: str, decode: bool = True) -> int:
    """CLI body: verifies, prints one line (stdout when OK, stderr on error; above it a line
    per bad shard when there are several), returns the status.

    Exit status 2 when ``build_dir`` is not a finished build (bad input), 1 when the build
    fails a check, 0 when it passes.
    """
    try:
        summary = verify_build(build_dir, decode=decode)
    except VerifyError as e:
        if len(e.problems) > 1:  # each bad shard in full, then the one line that ends it
            for path, reason in e.problems:
                print(f"verify: {path}: {reason}", file=sys.stderr)
        print(f"verify: error: {e}", file=sys.stderr)
        return cli_lib.EXIT_FAILURE
    except BuildError as e:
        print(f"verify: error: {e}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    counts = ", ".join(f"{split} {n}" for split, n in summary.items())
    print(f"verify: {build_dir}: OK ({counts} examples"
          f"{', every image decoded' if decode else ''})")
    return 0


def main(argv) -> int:
    """Maps the arguments to :func:`run`: one build folder or URL, and ``--decode``."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    if len(argv) != 2:
        print("verify: error: usage: python -m tinyimagenet_tfrecords.verify BUILD_DIR "
              "[--nodecode]", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    cli_lib.import_tensorflow_quietly()
    return run(argv[1], decode=flags.FLAGS.decode)


def _define_flags() -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_bool("decode", True, "Decode every image as the input pipeline does (else "
                      "framing, features and counts only).")


def cli() -> None:
    """Console-script entry point (``tin-verify``), same as ``python -m ...verify``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    cli_lib.run(main, __name__)


if __name__ == "__main__":
    cli()
