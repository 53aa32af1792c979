"""The class list a saved model carries: wnids, human-readable names, evaluation image size.

A ``.keras`` file is a zip archive (``config.json``, ``metadata.json``, ``model.weights.h5``);
Keras' loader reads only those members, so a ``classes.json`` member inside the archive travels
with the file wherever it is copied and changes nothing Keras loads. :func:`embed` writes it
(``training.run`` does so for ``best.keras`` when training ends); :func:`model_classes` reads
it, falling back to the ``classes.json`` sidecar of the run folder (runs that ended before
this existed, or a copied model with ``<model>.classes.json`` beside it). A SavedModel export
carries the same list as constants of its graph (``training.export``).
"""

from __future__ import annotations

import io
import json
import os
import zipfile

from plumbing import paths

MEMBER = "classes.json"
SIDECAR = "classes.json"


def classes_from_build(build) -> tuple[list[str], list[str]]:
    """``(wnids, names)`` of an opened build (``manifest.Build``), in label order (the
    model's output order); a class without a name is named by its wnid."""
    return list(build.wnids), [c.name or c.wnid for c in build.classes]


def info(wnids, names=None, image_size: int | None = None) -> dict:
    """The stored record: names default to the wnids (a sidecar holds wnids only)."""
    wnids = [str(w) for w in wnids]
    names = [str(n) for n in names] if names else list(wnids)
    if len(names) != len(wnids):
        raise ValueError(f"{len(wnids)} wnids but {len(names)} names")
    return {"wnids": wnids, "names": names, "image_size": image_size}


def embed(model_path: str, record: dict) -> None:
    """Writes ``record`` (see :func:`info`) into the ``.keras`` archive, atomically.

    Replaces an earlier ``classes.json`` member; every other member is copied unchanged.
    """
    old = zipfile.ZipFile(io.BytesIO(paths.read_bytes(model_path)))
    buf = io.BytesIO()
    with old, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            if item.filename != MEMBER:
                new.writestr(item, old.read(item.filename))
        new.writestr(MEMBER, json.dumps(record, indent=1))
    paths.atomic_write_bytes(model_path, buf.getvalue())


def embedded(model_path: str) -> dict | None:
    """The record inside a ``.keras`` archive, or None (no member, or not a zip)."""
    try:
        with zipfile.ZipFile(io.BytesIO(paths.read_bytes(model_path))) as z:
            if MEMBER not in z.namelist():
                return None
            return info(**_fields(json.loads(z.read(MEMBER))))
    except (zipfile.BadZipFile, ValueError, KeyError, TypeError):
        return None


def sidecar_path(model_path: str) -> str | None:
    """``<model>.classes.json``, else the run folder's ``classes.json``; None for neither."""
    for path in (model_path + "." + SIDECAR,
                 os.path.join(os.path.dirname(paths.abspath(model_path)), SIDECAR)):
        if paths.isfile(path):
            return path
    return None


def model_classes(model_path: str) -> tuple[dict | None, str | None]:
    """``(record, where)`` for a ``.keras`` model: the embedded list first, then a sidecar.

    ``where`` names the source for messages (``<model>`` or the sidecar's path); both are None
    when the model carries no class list.
    """
    record = embedded(model_path)
    if record is not None:
        return record, model_path
    path = sidecar_path(model_path)
    if path is None:
        return None, None
    data = json.loads(paths.read_text(path))
    return info(**_fields(data)), path


def _fields(data: dict) -> dict:
    return {"wnids": data["wnids"], "names": data.get("names"),
            "image_size": data.get("image_size")}
