"""Predict the classes of any images with an exported SavedModel or a ``.keras`` model.

``python -m training.predict --model exported/x (or runs/x/best.keras) PATH...``: a PATH is an
image file, a folder (searched recursively), a ``.zip``, a ``tf.io.gfile`` URL (``gs://...``)
or ``-`` for a list of paths on stdin. Folders and zips contribute the files whose name ends in
an image extension (:data:`IMAGE_EXTENSIONS`); a file named explicitly is always tried.

Images are decoded and preprocessed by the export's own graph (``training.export``: the
SavedModel's ``serving_default``, or the same function built around a ``.keras`` model), in
batches, so the probabilities equal the SavedModel's. Writes CSV (``file``, then wnid, name and
probability of the top 5) or JSON lines to stdout or ``--output``.

A file that cannot be used gets one line on stderr (``predict: FILE: reason``) and the others
are still predicted: empty, not an image, truncated/corrupt, smaller than ``--min_size`` or
over ``--max_pixels`` (read from the header before decoding). CMYK JPEGs are converted to RGB
and 16-bit PNGs scaled to 8 bits by TensorFlow's decoders, so they are predicted.
Exit status: 0 every file predicted (or ``--skip_failures``), 1 some file failed, 2 bad usage
or model, 130 interrupted.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import re
import struct
import sys
import time
import zipfile

from plumbing import paths as paths_lib
from training.errors import RunError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit
DEFAULT_MIN_SIZE = 8

Source = collections.namedtuple("Source", "label read")
Failure = collections.namedtuple("Failure", "label reason")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _zip_sources(path: str, data: bytes) -> list[Source]:
    archive = zipfile.ZipFile(io.BytesIO(data))
    return [Source(f"{path}:{name}", lambda n=name: archive.read(n))
            for name in sorted(archive.namelist())
            if not name.endswith("/") and _is_image_name(name)]


def _folder_sources(path: str) -> list[Source]:
    found = []
    if paths_lib.is_url(path):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        for root, _, files in tf.io.gfile.walk(path):
            found += [paths_lib.join(root, f) for f in files]
    else:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            found += [os.path.join(root, f) for f in files]
    return [Source(f, lambda f=f: paths_lib.read_bytes(f)) for f in sorted(found)
            if _is_image_name(f)]


def expand_path(path: str) -> tuple[list[Source], list[Failure]]:
    """The images a PATH stands for (see the module doc), or a failure naming it."""
    try:
        if paths_lib.isdir(path):
            return _folder_sources(path), []
        if not paths_lib.exists(path):
            return [], [Failure(path, "no such file or folder")]
        if path.lower().endswith(".zip"):
            return _zip_sources(path, paths_lib.read_bytes(path)), []
    except (OSError, zipfile.BadZipFile) as e:
        return [], [Failure(path, f"cannot read: {getattr(e, 'strerror', None) or e}")]
    return [Source(path, lambda: paths_lib.read_bytes(path))], []


def list_sources(paths, stdin=None) -> tuple[list[Source], list[Failure]]:
    """Every image of ``paths`` in order; ``-`` reads one path per line from ``stdin``."""
    sources, failures = [], []
    for path in paths:
        names = [ln.strip() for ln in (stdin or sys.stdin)] if path == "-" else [path]
        for name in filter(None, names):
            s, f = expand_path(name)
            sources += s
            failures += f
    return sources, failures


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG, GIF, BMP or JPEG header; None when not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:4] in (b"GIF8",) and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walks the JPEG markers to the first start-of-frame."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def check_bytes(data: bytes, *, min_size: int, max_pixels: int) -> str | None:
    """Why ``data`` cannot be predicted before decoding it, or None."""
    if not data:
        return "empty file"
    size = header_size(data)
    if size is None:
        return None
    w, h = size
    if w * h > max_pixels:
        return f"image is {w}x{h} ({w * h / 1e6:.1f} MP), over --max_pixels={max_pixels}"
    if min(w, h) < min_size:
        return f"image is {w}x{h}, smaller than --min_size={min_size} px"
    return None


_TF_CONTEXT = re.compile(r"Graph execution error|Detected at node|<stack traces|^\s*\[\[|^\s*$")


def decode_error_reason(error: Exception) -> str:
    """TensorFlow's decode error as one short line (no op names, no graph context)."""
    text = getattr(error, "message", None) or str(error)
    lines = [ln for ln in text.splitlines()  # stack-trace and node lines are indented
             if not _TF_CONTEXT.search(ln) and not ln[:1].isspace()] or [text]
    line = re.sub(r"\{\{[^}]*\}\}", "", lines[0])
    line = re.split(r"\s\[\[|\s\[Op:", line)[0].strip()
    if "Unknown image file format" in line:
        return "not an image (unknown format; JPEG, PNG, GIF, BMP or WebP expected)"
    return f"cannot decode: {line}"[:200]


def load_predictor(model_path: str):
    """``fn(list of encoded bytes) -> dict of numpy outputs`` for a SavedModel folder or a
    ``.keras`` file (RunError naming it when it is neither)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from training import export  # pylint: disable=import-outside-toplevel
    if paths_lib.isfile(paths_lib.join(model_path, "saved_model.pb")):
        try:
            serve = tf.saved_model.load(model_path).signatures[export.SIGNATURE_BYTES]
        except (KeyError, ValueError, OSError, tf.errors.OpError) as e:
            raise RunError(f"--model={model_path}: not a SavedModel written by "
                           f"training.export: {str(e).splitlines()[0][:200]}") from None
        return lambda batch: {k: v.numpy() for k, v in serve(images=tf.constant(batch)).items()}
    model, record = export.load_keras_with_classes(model_path)
    fns = export.serving_functions(model, record, export.model_image_size(model, record))
    serve = fns[export.SIGNATURE_BYTES]
    return lambda batch: {k: v.numpy() for k, v in serve(tf.constant(batch)).items()}


def predict_batch(predictor, items):
    """``[(label, outputs row | reason)]`` for ``items`` = ``[(label, bytes)]``.

    One call for the batch; when TensorFlow refuses it (a file that does not decode), each
    image is run alone so that only the bad ones fail.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not items:
        return []
    try:
        out = predictor([data for _, data in items])
        return [(label, {k: v[i] for k, v in out.items()}) for i, (label, _) in
                enumerate(items)]
    except tf.errors.InvalidArgumentError as e:
        if len(items) == 1:
            return [(items[0][0], decode_error_reason(e))]
    return [r for item in items for r in predict_batch(predictor, [item])]


def _texts(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def format_row(label: str, row: dict, fmt: str) -> str:
    """One output line: CSV (``file`` + wnid/name/probability per rank) or a JSON object."""
    wnids, names = _texts(row["top5_wnids"]), _texts(row["top5_names"])
    probs = [float(p) for p in row["top5_probabilities"]]
    if fmt == "jsonl":
        return json.dumps({"file": label, "wnids": wnids, "names": names,
                           "probabilities": probs}) + "\n"
    buf = io.StringIO()
    fields = [label]
    for w, n, p in zip(wnids, names, probs):
        fields += [w, n, f"{p:.6f}"]
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def csv_header(k: int = 5) -> str:
    cols = ["file"] + [f"{c}_{i}" for i in range(1, k + 1)
                       for c in ("wnid", "name", "probability")]
    return ",".join(cols) + "\n"


def _batches(sources, batch_size: int, checks: dict, failures: list):
    """Batches of ``(label, bytes)``; unreadable or refused files go to ``failures``."""
    batch = []
    for src in sources:
        try:
            data = src.read()
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            failures.append(Failure(src.label, f"cannot read: "
                                               f"{getattr(e, 'strerror', None) or e}"))
            continue
        reason = check_bytes(data, **checks)
        if reason:
            failures.append(Failure(src.label, reason))
            continue
        batch.append((src.label, data))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_files(model_path: str, paths, *, write, fmt: str = "csv", batch_size: int = 64,
                  min_size: int = DEFAULT_MIN_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
                  progress: bool = True, on_failure=None, stdin=None) -> dict:
    """Predicts every image of ``paths``; ``write(text)`` gets each output line in order.

    Args:
      on_failure: called with each :class:`Failure` as it happens (the CLI prints it).

    Returns:
      ``{"predicted": n, "failed": [Failure], "seconds": s}``.
    """
    from plumbing.progress import Progress  # pylint: disable=import-outside-toplevel
    report = on_failure or (lambda f: None)
    sources, failures = list_sources(paths, stdin)
    for f in failures:
        report(f)
    predictor = load_predictor(model_path)
    if fmt == "csv":
        write(csv_header())
    bar = Progress(len(sources), enabled=progress and len(sources) > batch_size,
                   prefix="predict ")
    t0, done, predicted = time.perf_counter(), 0, 0
    skipped = []
    for batch in _batches(sources, batch_size, {"min_size": min_size, "max_pixels": max_pixels},
                          skipped):
        for f in skipped:
            report(f)
        failures += skipped
        done += len(batch) + len(skipped)
        skipped.clear()
        for label, result in predict_batch(predictor, batch):
            if isinstance(result, str):
                failures.append(Failure(label, result))
                report(failures[-1])
            else:
                write(format_row(label, result, fmt))
                predicted += 1
        bar.update(done)
    for f in skipped:
        report(f)
    failures += skipped
    return {"predicted": predicted, "failed": failures, "seconds": time.perf_counter() - t0}


def _summary_line(result: dict) -> str:
    n, secs = result["predicted"], result["seconds"]
    rate = n / secs if secs > 0 else 0.0
    return (f"predict: {n} images predicted, {len(result['failed'])} failed in {secs:.1f} s "
            f"({rate:.1f} images/s)")


def main(argv):
    """CLI: maps flags to :func:`predict_files`; exit status as in the module doc."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    from plumbing import cli as cli_lib  # pylint: disable=import-outside-toplevel
    fv = flags.FLAGS

    def fail(msg, status):
        print(f"predict: error: {msg}", file=sys.stderr, flush=True)
        return status

    if not fv.model or len(argv) < 2:
        return fail("give --model=SAVEDMODEL_DIR|MODEL.keras and at least one PATH "
                    "(an image, a folder, a .zip, a URL or - for a list on stdin)",
                    cli_lib.EXIT_BAD_INPUT)
    cli_lib.import_tensorflow_quietly()
    lines = []
    write = lines.append if fv.output else (lambda t: (sys.stdout.write(t), sys.stdout.flush()))
    try:
        result = predict_files(
            fv.model, argv[1:], write=write, fmt=fv.format, batch_size=fv.batch_size,
            min_size=fv.min_size, max_pixels=fv.max_pixels, progress=fv.progress,
            on_failure=lambda f: print(f"predict: {f.label}: {f.reason}", file=sys.stderr,
                                       flush=True))
        if fv.output:
            paths_lib.atomic_write_bytes(fv.output, "".join(lines).encode("utf-8"))
    except RunError as e:
        return fail(str(e).splitlines()[0], cli_lib.EXIT_BAD_INPUT)
    except OSError as e:
        return fail(f"{e.filename or fv.output or 'stdout'}: {e.strerror or e}",
                    cli_lib.EXIT_FAILURE)
    except KeyboardInterrupt:
        return fail("interrupted", cli_lib.EXIT_INTERRUPTED)
    print(_summary_line(result), file=sys.stderr)
    if result["failed"] and not fv.skip_failures:
        return cli_lib.EXIT_FAILURE
    return cli_lib.EXIT_OK


def _define_flags() -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("model", None, "an exported SavedModel folder (training.export) or a "
                        ".keras model file")
    flags.DEFINE_string("output", None, "write the predictions here (default: stdout)")
    flags.DEFINE_enum("format", "csv", ["csv", "jsonl"], "csv or JSON lines")
    flags.DEFINE_integer("batch_size", 64, "images per model call", lower_bound=1)
    flags.DEFINE_integer("min_size", DEFAULT_MIN_SIZE, "refuse images with a side shorter "
                         "than this (px)", lower_bound=1)
    flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS, "refuse images with more pixels "
                         "than this (decompression bombs)", lower_bound=1)
    flags.DEFINE_bool("skip_failures", False, "exit 0 even when some files failed (they are "
                      "still named on stderr)")
    flags.DEFINE_bool("progress", True, "show a progress bar (on stderr) for long lists")


if __name__ == "__main__":
    from plumbing import cli as _cli
    # libjpeg's "Premature end of JPEG data" is a C++ ERROR log line; the file's own line
    # says it, so the C++ log is silenced entirely (its errors surface as exceptions).
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    _cli.quiet_tensorflow()
    _define_flags()
    _cli.run(main, __name__)
