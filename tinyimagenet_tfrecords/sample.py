"""Extracts a small real sample of Tiny ImageNet (the tests' optional extra coverage).

    python -m tinyimagenet_tfrecords.sample --src tiny-imagenet-200.zip --out sample --classes 10
    TIN_SAMPLE=$PWD/sample python -m pytest -q tests

Takes the first ``classes`` wnids (sorted) of a folder or the official zip (read in place):
their train images and box files, the val images of those classes with their
``val_annotations.txt`` lines, the first ``test_images`` test images, ``wnids.txt`` and the
matching ``words.txt`` lines, in the official layout. The source is validated by
``source.scan`` first; the sample is written into a temporary folder beside ``out`` and
renamed into place when complete.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from plumbing import cli as cli_lib
from tinyimagenet_tfrecords import source as source_lib


class SampleError(Exception):
    """The sample cannot be made as asked (bad arguments, existing output); names what."""


def extract_sample(src: str, out: str, *, classes: int = 10, test_images: int = 100) -> dict:
    """Writes a ``classes``-class sample of ``src`` into ``out``; returns images per split.

    Args:
      src: a Tiny ImageNet folder or zip (``tiny-imagenet-200.zip``), read in place.
      out: the sample's folder (must not exist).
      classes: how many classes (the first wnids in sorted order).
      test_images: how many test images (natural file-name order).

    Raises:
      SampleError: ``out`` exists or ``classes`` is not in ``[1, number of classes]``.
      source.SourceError: the source is unusable, naming the file (and line).
    """
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise SampleError(f"{out}: exists; choose a new --out")
    if classes < 1 or test_images < 0:
        raise SampleError(f"--classes must be >= 1 and --test_images >= 0, got {classes} and "
                          f"{test_images}")
    ref = source_lib.open_source(src)
    scanned = source_lib.scan(ref)
    if classes > len(scanned.wnids):
        raise SampleError(f"--classes {classes}: {ref.display(source_lib.WNIDS_FILE)} lists "
                          f"only {len(scanned.wnids)}")
    chosen = scanned.wnids[:classes]
    keep = set(chosen)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        def write(relpath: str, data: bytes) -> None:
            path = os.path.join(tmp, *relpath.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

        def lines(relpath: str, wanted) -> bytes:
            text = source_lib.read_file(ref, relpath).decode("utf-8-sig")
            return "".join(line + "\n" for line in text.splitlines()
                           if line.strip() and wanted(line.split())).encode()

        write(source_lib.WNIDS_FILE, "".join(w + "\n" for w in chosen).encode())
        if scanned.names:
            write(source_lib.WORDS_FILE, "".join(f"{w}\t{scanned.names.get(w, '')}\n"
                                                 for w in chosen).encode())
        counts = {"train": 0, "val": 0, "test": 0}
        for entry in scanned.entries["train"]:
            if entry.wnid in keep:
                write(entry.relpath, source_lib.read_file(ref, entry.relpath))
                counts["train"] += 1
        for wnid in chosen:
            if wnid not in scanned.without_boxes:
                boxes = f"train/{wnid}/{wnid}_boxes.txt"
                write(boxes, source_lib.read_file(ref, boxes))
        val = [e for e in scanned.entries["val"] if e.wnid in keep]
        names = {e.filename for e in val}
        for entry in val:
            write(entry.relpath, source_lib.read_file(ref, entry.relpath))
        write(source_lib.VAL_ANNOTATIONS,
              lines(source_lib.VAL_ANNOTATIONS, lambda f: f[0] in names))
        counts["val"] = len(val)
        for entry in scanned.entries["test"][:test_images]:
            write(entry.relpath, source_lib.read_file(ref, entry.relpath))
            counts["test"] += 1
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv) -> int:
    """Maps the flags to :func:`extract_sample`; one line on stderr and a status on error."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    fv = flags.FLAGS
    if len(argv) > 1:
        print(f"sample: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    try:
        counts = extract_sample(fv.src, fv.out, classes=fv.classes, test_images=fv.test_images)
    except (SampleError, source_lib.SourceError) as e:
        print(f"sample: error: {e}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    except OSError as e:
        print(f"sample: error: {e.filename or fv.out}: {e.strerror or e}", file=sys.stderr)
        return cli_lib.EXIT_FAILURE
    print(f"{os.path.abspath(fv.out)}: {counts['train']} train, {counts['val']} val, "
          f"{counts['test']} test images")
    return cli_lib.EXIT_OK


def _define_flags() -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("src", None, "Tiny ImageNet folder or zip (tiny-imagenet-200.zip).")
    flags.DEFINE_string("out", None, "The sample folder to create (the dataset root).")
    flags.DEFINE_integer("classes", 10, "Classes (the first wnids in sorted order).")
    flags.DEFINE_integer("test_images", 100, "Test images.")
    flags.mark_flags_as_required(["src", "out"])


if __name__ == "__main__":
    _define_flags()
    cli_lib.run(main, __name__)
