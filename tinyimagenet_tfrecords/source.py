"""Reads and validates a Tiny ImageNet copy: an extracted folder or the official zip in place.

The layout (``tiny-imagenet-200/`` of the official zip, with or without that top folder)::

    wnids.txt                         one wnid a line; labels are the sorted wnids' indices
    words.txt                         "<wnid>\\t<human names>" for (far more than) every wnid
    train/<wnid>/images/*.JPEG
    train/<wnid>/<wnid>_boxes.txt     "<file>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per image (optional:
                                      copies with added classes lack it; boxes then -1)
    val/images/*.JPEG
    val/val_annotations.txt           "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per image
    test/images/*.JPEG                no labels

:func:`scan` reads only the listing and the text files (fast, in the main process) and
refuses, naming the file and line, anything that would silently corrupt the labels.
:func:`prepare_image` validates and converts one image (in the worker processes).
Tolerated: CRLF line endings, a missing final newline, blank lines, stray files such as
``.DS_Store``/``Thumbs.db``/``__MACOSX`` (skipped and counted), grayscale/CMYK JPEGs and PNG
data behind a ``.JPEG`` name.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import zipfile
import zlib

from PIL import Image

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
WNIDS_FILE = "wnids.txt"
WORDS_FILE = "words.txt"
VAL_ANNOTATIONS = "val/val_annotations.txt"

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class SourceError(Exception):
    """The dataset copy is unusable as it is; the message names the file (and line)."""


class CorruptImageError(SourceError):
    """One image cannot be decoded (undecodable, truncated); ``--skip_corrupt`` skips these."""


# --- Reading a folder or a zip through one interface ----------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceRef:
    """A picklable handle on a dataset copy, reopened cheaply in each worker process.

    Attributes:
      kind: "dir" or "zip".
      path: absolute path of the folder or zip file.
      prefix: for zips, the member prefix of the dataset root ("" or "tiny-imagenet-200/").
    """
    kind: str
    path: str
    prefix: str = ""

    def display(self, relpath: str) -> str:
        """A file name for messages: a real path, or ``<zip>:<member>``."""
        if self.kind == "dir":
            return os.path.join(self.path, relpath)
        return f"{self.path}:{self.prefix}{relpath}"


_OPEN_ZIPS: dict[str, zipfile.ZipFile] = {}
_ZIP_MAGIC = b"PK\x03\x04"


def read_file(ref: SourceRef, relpath: str) -> bytes:
    """Returns the bytes of ``relpath`` (``/``-separated, relative to the dataset root).

    Raises:
      CorruptImageError: a zip member whose data is damaged (bad CRC, broken deflate stream),
        naming the member; ``--skip_corrupt`` skips it like an undecodable image.
      OSError, KeyError: the file is unreadable or absent.
    """
    if ref.kind == "dir":
        with open(os.path.join(ref.path, relpath), "rb") as f:
            return f.read()
    zf = _OPEN_ZIPS.get(ref.path)
    if zf is None:  # one open handle per process: workers read thousands of members
        zf = _OPEN_ZIPS[ref.path] = _open_zip(ref.path)
    try:
        return zf.read(ref.prefix + relpath)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CorruptImageError(f"{ref.display(relpath)}: corrupt zip member ({e})") from e


def _open_zip(path: str) -> zipfile.ZipFile:
    """Opens a zip, saying "corrupt or incomplete zip" (e.g. a cut download) on failure."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError) as e:
        raise SourceError(f"{path}: corrupt or incomplete zip ({e})") from e


def list_files(ref: SourceRef) -> list[str]:
    """All files under the dataset root, as ``/``-separated relative paths."""
    if ref.kind == "dir":
        out = []
        for dirpath, _, filenames in os.walk(ref.path):
            rel = os.path.relpath(dirpath, ref.path)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            out.extend(rel + name for name in filenames)
        return out
    with _open_zip(ref.path) as zf:
        names = zf.namelist()
    n = len(ref.prefix)
    return [name[n:] for name in names if name.startswith(ref.prefix) and not name.endswith("/")]


def open_source(path: str) -> SourceRef:
    """Resolves a local folder or zip to a :class:`SourceRef` (URLs: see ``download.py``).

    A zip's dataset root is the folder holding ``wnids.txt`` nearest to the top, so both the
    official zip (``tiny-imagenet-200/wnids.txt``) and a zip made inside the folder work.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, WNIDS_FILE)):
            raise SourceError(f"{os.path.join(path, WNIDS_FILE)}: missing; is {path} a "
                              "Tiny ImageNet folder (the one holding wnids.txt)?")
        return SourceRef("dir", path)
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such folder or zip file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
        if head == _ZIP_MAGIC:  # starts like a zip but has no readable central directory
            raise SourceError(f"{path}: corrupt or incomplete zip (no central directory; "
                              "a cut download?)")
        raise SourceError(f"{path}: neither a folder nor a zip file")
    with _open_zip(path) as zf:
        candidates = [n for n in zf.namelist()
                      if (n == WNIDS_FILE or n.endswith("/" + WNIDS_FILE))
                      and not n.startswith("__MACOSX/")]
    if not candidates:
        raise SourceError(f"{path}: no {WNIDS_FILE} inside; not a Tiny ImageNet zip")
    best = min(candidates, key=lambda n: n.count("/"))
    return SourceRef("zip", path, best[: -len(WNIDS_FILE)])


# --- Text files -------------------------------------------------------------------------------


def _lines(ref: SourceRef, relpath: str):
    """Yields ``(line_number, fields)`` of a tab/space-separated text file, skipping blanks.

    CRLF endings, a missing final newline and a UTF-8 BOM are tolerated.
    """
    try:
        text = read_file(ref, relpath).decode("utf-8-sig")
    except (OSError, KeyError) as e:
        raise SourceError(f"{ref.display(relpath)}: cannot read: {e}") from e
    except UnicodeDecodeError as e:
        raise SourceError(f"{ref.display(relpath)}: not UTF-8 text: {e}") from e
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def _read_wnids(ref: SourceRef) -> list[str]:
    seen: dict[str, int] = {}
    for number, line in _lines(ref, WNIDS_FILE):
        wnid = line.split()[0]
        if len(line.split()) != 1 or "/" in wnid:
            raise SourceError(f"{ref.display(WNIDS_FILE)}:{number}: expected one wnid, "
                              f"got {line!r}")
        if wnid in seen:
            raise SourceError(f"{ref.display(WNIDS_FILE)}:{number}: wnid {wnid} repeated "
                              f"(first on line {seen[wnid]})")
        seen[wnid] = number
    if not seen:
        raise SourceError(f"{ref.display(WNIDS_FILE)}: lists no wnid")
    return sorted(seen)


def _read_words(ref: SourceRef, wanted: set[str], have_file: bool) -> dict[str, str]:
    if not have_file:
        return {}
    names = {}
    for _, line in _lines(ref, WORDS_FILE):
        wnid, _, name = line.partition("\t")
        if wnid in wanted:
            names[wnid] = name.strip()
    return names


def _box(fields: list[str], where: str) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in fields)
    except ValueError as e:
        raise SourceError(f"{where}: bounding box {' '.join(fields)!r} is not 4 integers") from e
    if len(box) != 4:
        raise SourceError(f"{where}: expected 4 box coordinates, got {len(box)}")
    return box  # type: ignore[return-value]


# --- The scan -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image to convert: where it is and what it is labelled."""
    relpath: str
    filename: str
    label: int
    wnid: str
    bbox: tuple[int, int, int, int]


@dataclasses.dataclass
class Scan:
    """What :func:`scan` found: classes, the entries of each requested split, stray files."""
    ref: SourceRef
    wnids: list[str]
    names: dict[str, str]
    entries: dict[str, list[Entry]]
    stray: list[str]
    # Classes whose train folder has no ``<wnid>_boxes.txt`` (their boxes are NO_BOX).
    without_boxes: list[str] = dataclasses.field(default_factory=list)

    @property
    def classes(self) -> list[dict]:
        return [{"label": i, "wnid": w, "name": self.names.get(w, "")}
                for i, w in enumerate(self.wnids)]


_JUNK_NAMES = ("thumbs.db", "desktop.ini")


def _is_hidden_or_junk(relpath: str) -> bool:
    return (relpath.startswith((".", "__MACOSX/")) or "/." in relpath
            or relpath.rpartition("/")[2].lower() in _JUNK_NAMES)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def scan(ref: SourceRef, splits=SPLITS) -> Scan:
    """Lists and cross-checks the requested splits; reads no image.

    Raises:
      SourceError: naming the file (and line) for a train folder missing from or not listed
        in ``wnids.txt``, an empty class, a box or annotation line that is malformed, names an
        unknown wnid or a missing image, an image without its box/annotation, a missing split.
    """
    files, stray = [], []
    for f in list_files(ref):
        (stray if _is_hidden_or_junk(f) else files).append(f)
    fileset = set(files)
    wnids = _read_wnids(ref)
    wnid_set = set(wnids)
    label_of = {w: i for i, w in enumerate(wnids)}
    names = _read_words(ref, wnid_set, WORDS_FILE in fileset)

    # Group images and other files per folder once (a zip has no cheap directory listing).
    by_dir: dict[str, list[str]] = {}
    for f in files:
        head, _, tail = f.rpartition("/")
        by_dir.setdefault(head, []).append(tail)

    entries: dict[str, list[Entry]] = {}
    without_boxes: list[str] = []
    used: set[str] = {WNIDS_FILE, WORDS_FILE}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected some of {SPLITS}")
        if not any(d == split or d.startswith(split + "/") for d in by_dir):
            raise SourceError(f"{ref.display(split)}: split folder missing or empty")
        if split == "train":
            entries[split] = _scan_train(ref, by_dir, wnids, label_of, used, without_boxes)
        elif split == "val":
            entries[split] = _scan_val(ref, fileset, by_dir, label_of, used)
        else:
            images = sorted((n for n in by_dir.get("test/images", []) if _is_image_name(n)),
                            key=_natural_key)
            if not images:
                raise SourceError(f"{ref.display('test/images')}: no images")
            entries[split] = [Entry(f"test/images/{n}", n, -1, "", (-1, -1, -1, -1))
                              for n in images]
            used.update(e.relpath for e in entries[split])
    # Unused files inside the requested split folders are stray (counted, never silently read).
    for f in files:
        if f not in used and f.split("/")[0] in splits:
            stray.append(f)
    stray = sorted(set(stray))
    return Scan(ref, wnids, names, entries, stray, without_boxes)


NO_BOX = (-1, -1, -1, -1)


def _scan_train(ref, by_dir, wnids, label_of, used, without_boxes) -> list[Entry]:
    folders = sorted({d.split("/")[1] for d in by_dir if d.startswith("train/")})
    for folder in folders:
        if folder not in label_of:
            raise SourceError(f"{ref.display('train/' + folder)}: train folder not listed in "
                              f"{ref.display(WNIDS_FILE)}")
    out = []
    for wnid in wnids:
        label = label_of[wnid]
        images_dir = f"train/{wnid}/images"
        if wnid not in folders:
            raise SourceError(f"{ref.display(WNIDS_FILE)}: wnid {wnid} has no train folder "
                              f"{ref.display('train/' + wnid)}")
        # Plain sort: train order is a seeded permutation of this canonical order anyway.
        images = sorted(n for n in by_dir.get(images_dir, []) if _is_image_name(n))
        if not images:
            raise SourceError(f"{ref.display(images_dir)}: empty class {wnid} (no images)")
        boxes_file = f"train/{wnid}/{wnid}_boxes.txt"
        has_boxes = f"{wnid}_boxes.txt" in by_dir.get(f"train/{wnid}", [])
        if not has_boxes:  # a class added to a copy without boxes: built, boxes absent
            without_boxes.append(wnid)
            out.extend(Entry(f"{images_dir}/{n}", n, label, wnid, NO_BOX) for n in images)
            used.update(f"{images_dir}/{n}" for n in images)
            continue
        boxes: dict[str, tuple] = {}
        image_set = set(images)
        for number, line in _lines(ref, boxes_file):
            where = f"{ref.display(boxes_file)}:{number}"
            fields = line.split()
            if len(fields) != 5:
                raise SourceError(f"{where}: expected '<file> x0 y0 x1 y1', got {line!r}")
            if fields[0] in boxes:
                raise SourceError(f"{where}: {fields[0]} annotated twice")
            if fields[0] not in image_set:
                raise SourceError(f"{where}: box for {fields[0]}, which is not in "
                                  f"{ref.display(images_dir)}")
            boxes[fields[0]] = _box(fields[1:], where)
        for name in images:
            if name not in boxes:
                raise SourceError(f"{ref.display(images_dir + '/' + name)}: image has no box "
                                  f"in {ref.display(boxes_file)}")
            out.append(Entry(f"{images_dir}/{name}", name, label, wnid, boxes[name]))
        used.add(boxes_file)
        used.update(f"{images_dir}/{n}" for n in images)
    return out


def _scan_val(ref, fileset, by_dir, label_of, used) -> list[Entry]:
    if VAL_ANNOTATIONS not in fileset:
        raise SourceError(f"{ref.display(VAL_ANNOTATIONS)}: missing")
    images = {n for n in by_dir.get("val/images", []) if _is_image_name(n)}
    annotated: dict[str, Entry] = {}
    for number, line in _lines(ref, VAL_ANNOTATIONS):
        where = f"{ref.display(VAL_ANNOTATIONS)}:{number}"
        fields = line.split()
        if len(fields) != 6:
            raise SourceError(f"{where}: expected '<file> <wnid> x0 y0 x1 y1', got {line!r}")
        name, wnid = fields[0], fields[1]
        if wnid not in label_of:
            raise SourceError(f"{where}: unknown wnid {wnid} (not in wnids.txt)")
        if name in annotated:
            raise SourceError(f"{where}: {name} annotated twice")
        if name not in images:
            raise SourceError(f"{where}: annotation for {name}, which is not in "
                              f"{ref.display('val/images')}")
        annotated[name] = Entry(f"val/images/{name}", name, label_of[wnid], wnid,
                                _box(fields[2:], where))
    for name in sorted(images, key=_natural_key):
        if name not in annotated:
            raise SourceError(f"{ref.display('val/images/' + name)}: val image has no "
                              f"annotation in {ref.display(VAL_ANNOTATIONS)}")
    used.add(VAL_ANNOTATIONS)
    used.update(e.relpath for e in annotated.values())
    return [annotated[n] for n in sorted(annotated, key=_natural_key)]


# --- One image --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An image ready to store: the bytes, IMAGE_FORMAT, size, and whether it was converted."""
    data: bytes
    image_format: str
    height: int
    width: int
    converted: str = ""  # why the original bytes were not kept ("" when they were)


# Modes whose TF decoding (decode_jpeg with the accurate IDCT / decode_png, channels=3)
# equals PIL's .convert("RGB"): only for these may the original bytes be kept.
_KEEP_MODES = {"jpeg": ("L", "RGB"), "png": ("L", "RGB", "RGBA", "LA")}


def prepare_image(data: bytes, storage: str, name: str) -> Prepared:
    """Validates one image fully and returns what to store for ``storage``.

    Every image is fully decoded by PIL, so undecodable and truncated files are refused
    (PIL raises on truncated data) even when the original bytes are stored. For storage
    "jpeg" the original bytes are kept when TF's decoder gives exactly PIL's RGB (JPEG in
    L/RGB, PNG in L/RGB/RGBA/LA); anything else (CMYK/YCCK JPEGs, palette or 16-bit PNGs, other
    formats) is stored as lossless PNG of PIL's RGB. For "raw", decoded uint8 RGB, HWC.

    Raises:
      CorruptImageError: naming ``name``.
    """
    if storage not in ("jpeg", "raw"):
        raise ValueError(f"unknown storage {storage!r}")
    if data.startswith(_JPEG_MAGIC):
        kind = "jpeg"
    elif data.startswith(_PNG_MAGIC):
        kind = "png"
    else:
        kind = "other"
    try:
        image = Image.open(io.BytesIO(data))
        mode, (width, height) = image.mode, image.size
        keep = storage == "jpeg" and mode in _KEEP_MODES.get(kind, ())
        if keep and kind == "jpeg":
            # Only validating: DCT-domain downscaling still entropy-decodes every block (so
            # truncated or corrupt data still raises) but skips the IDCT and colour work.
            image.draft(mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
        if storage == "raw":
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return Prepared(rgb.tobytes(), "raw", height, width)
        if keep:
            return Prepared(data, kind, height, width)
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG", compress_level=1)
        return Prepared(out.getvalue(), "png", height, width,
                        converted=f"{image.format or kind} {mode} stored as lossless PNG of RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise CorruptImageError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
