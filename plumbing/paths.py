"""Local paths and ``tf.io.gfile`` URLs behind one set of functions, and atomic writes.

Runs and builds may live on shared or cloud storage (``gs://``, ``s3://``, ``hdfs://``,
``ram://`` in tests) so several hosts see the same files; local paths keep their POSIX
guarantees (atomic ``os.replace``, ``fsync``, permissions from the user's umask) and never
import TensorFlow, so the converter's worker processes stay TensorFlow-free.

One definition of a URL (:func:`is_url`): a ``scheme://`` path that ``tf.io.gfile`` opens.
An ``http(s)://`` address is not one: ``tf.io.gfile`` has no web filesystem, so a web
address is a download source (:func:`is_web_address`; only the data builder's ``--src``
takes one, and downloads it explicitly). Everywhere else it is an ordinary missing path,
reported by name, instead of TensorFlow's "scheme not implemented" traceback.
"""

from __future__ import annotations

import json
import os
import secrets

_WEB_SCHEMES = ("http://", "https://")


def is_web_address(path: str) -> bool:
    """True for ``http://`` and ``https://``: something to download, not to open."""
    return str(path).lower().startswith(_WEB_SCHEMES)


def is_url(path: str) -> bool:
    """True for a ``scheme://...`` path that only ``tf.io.gfile`` can open (not a web address)."""
    return "://" in str(path) and not is_web_address(path)


def _gfile():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  # URLs only
    return tf.io.gfile


def abspath(path: str) -> str:
    """``os.path.abspath`` for local paths; URLs and web addresses unchanged (already absolute)."""
    return path if "://" in str(path) else os.path.abspath(path)


def join(folder: str, *names: str) -> str:
    """``os.path.join`` for local paths; ``/``-joined for a URL (no doubled slash)."""
    if is_url(folder):
        return "/".join([folder.rstrip("/"), *names])
    return os.path.join(folder, *names)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    """True when ``path`` exists and is not a folder."""
    if is_url(path):
        return _gfile().exists(path) and not _gfile().isdir(path)
    return os.path.isfile(path)


def listdir(path: str) -> list[str]:
    """Entry names (no trailing slashes; gfile adds them to folders on some filesystems)."""
    if is_url(path):
        return [n.rstrip("/") for n in _gfile().listdir(path)]
    return os.listdir(path)


def getsize(path: str) -> int:
    return _gfile().stat(path).length if is_url(path) else os.path.getsize(path)


def makedirs(path: str) -> None:
    """Creates ``path`` and its parents; no error when it exists."""
    if is_url(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def rmtree(path: str) -> None:
    """Removes a folder and everything in it; no error when it does not exist."""
    if is_url(path):
        if _gfile().exists(path):
            _gfile().rmtree(path)
    else:
        import shutil  # pylint: disable=import-outside-toplevel
        shutil.rmtree(path, ignore_errors=True)


def open_binary(path: str):
    """A binary file object for reading (``tf.io.gfile.GFile`` for a URL)."""
    return _gfile().GFile(path, "rb") if is_url(path) else open(path, "rb")


def read_bytes(path: str) -> bytes:
    with open_binary(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def replace(src: str, dst: str) -> None:
    """Moves ``src`` over ``dst`` (atomic on local filesystems)."""
    if is_url(src) or is_url(dst):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


# --- Atomic writes -------------------------------------------------------------------------------


def _tmp_name(path: str) -> str:
    folder, base = os.path.split(path)
    return os.path.join(folder, f".tmp-{base}.{os.getpid()}.{secrets.token_hex(4)}")


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` so a reader sees the old or the new file, never half.

    Local: a temporary file in the same folder (created with mode 0666, so the user's umask
    decides the permissions, as for any file the user creates), ``fsync``, ``os.replace``.
    URL: a temporary object renamed over ``path`` (object stores make each object appear
    whole anyway; the rename keeps a killed writer from leaving a truncated ``path``).
    """
    folder = os.path.dirname(path) if is_url(path) else os.path.dirname(os.path.abspath(path))
    makedirs(folder)
    tmp = _tmp_name(os.path.join(folder, os.path.basename(path)))
    if is_url(path):
        _write_url(tmp, path, data)
        return
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_url(tmp: str, path: str, data: bytes) -> None:
    gfile = _gfile()
    try:
        with gfile.GFile(tmp, "wb") as f:
            f.write(data)
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if gfile.exists(tmp):
            gfile.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj) -> None:
    """Indented, key-sorted JSON with a final newline (diffable, stable across runs)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
