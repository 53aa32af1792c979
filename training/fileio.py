"""File I/O for run outputs that works on local paths and on any ``tf.io.gfile`` URL.

Runs and builds may live on shared or cloud storage (``gs://``, ``s3://``, ``hdfs://``,
``ram://`` in tests) so several hosts see the same files; local paths keep their POSIX
guarantees (atomic ``os.replace``, ``fsync``, permissions from the user's umask).
"""

from __future__ import annotations

import os
import secrets


def is_url(path: str) -> bool:
    """True for a ``scheme://...`` path, which only ``tf.io.gfile`` can open."""
    return "://" in str(path)


def _gfile():
    import tensorflow as tf  # imported late: local paths never need TensorFlow here
    return tf.io.gfile


def abspath(path: str) -> str:
    """``os.path.abspath`` for local paths; URLs unchanged (they are already absolute)."""
    return path if is_url(path) else os.path.abspath(path)


def join(*parts: str) -> str:
    return os.path.join(*parts)


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
        import shutil
        shutil.rmtree(path, ignore_errors=True)


def read_bytes(path: str) -> bytes:
    if is_url(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


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
        gfile = _gfile()
        try:
            with gfile.GFile(tmp, "wb") as f:
                f.write(data)
            gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            if gfile.exists(tmp):
                gfile.remove(tmp)
            raise
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


def replace(src: str, dst: str) -> None:
    """Moves ``src`` over ``dst`` (atomic on local filesystems)."""
    if is_url(src) or is_url(dst):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)
