"""The run's output folder: refuse another run's folder, hold a lock, leave nothing half-made.

:class:`RunFolder` is entered once every input has been checked. It creates ``--out`` (or
adopts an empty one), takes the lock file ``run.lock`` (pid and host of the training process;
a second training into the same folder is refused, a lock left by a dead process on this host
is taken over) and, when the run fails or is interrupted before its first checkpoint on a
folder this invocation started, removes everything it created: a folder that holds a
``config.json`` but no checkpoint would look like a started run.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import socket

from plumbing import paths
from training.errors import RunError, RunFailure

CONFIG_NAME = "config.json"
CLASSES_NAME = "classes.json"
LOCK_NAME = "run.lock"
CHECKPOINTS = "checkpoints"


def check_output_folder(out: str, fingerprint: dict) -> bool:
    """Refuses a folder that holds another run; returns True when resuming this run.

    Raises:
      RunError: ``out`` is a file, or holds a ``config.json`` with other settings, or holds
        files but no ``config.json`` (not a run folder: nothing is overwritten).
    """
    if paths.exists(out) and not paths.isdir(out):
        raise RunError(f"--out={out} is a file, not a folder")
    path = os.path.join(out, CONFIG_NAME)
    if paths.isfile(path):
        try:
            old = json.loads(paths.read_text(path))
        except json.JSONDecodeError:
            raise RunError(f"{path}: not valid JSON; not a run folder of this program")
        if old != fingerprint:
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            raise RunError(f"--out={out} holds another run (settings differ: {', '.join(diff)}); "
                           "use a new --out or the same flags to resume")
        return True
    if paths.isdir(out) and set(paths.listdir(out)) - {LOCK_NAME, CLASSES_NAME}:
        raise RunError(f"--out={out} is not empty and holds no {CONFIG_NAME}; "
                       "refusing to write into it")
    return False


def check_classes(out: str, wnids: list[str]) -> None:
    """Refuses to resume a run on a build with other classes (``classes.json`` differs)."""
    path = os.path.join(out, CLASSES_NAME)
    if not paths.isfile(path):
        return
    old = json.loads(paths.read_text(path)).get("wnids")
    if old != list(wnids):
        raise RunError(f"{path}: this run was trained on {len(old or ())} other classes than "
                       f"the build's {len(wnids)}; use the build it was started on")


def last_checkpoint_epoch(out: str) -> int:
    """The epoch of the newest checkpoint in ``out`` (0 when there is none)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    latest = tf.train.latest_checkpoint(os.path.join(out, CHECKPOINTS))
    match = re.search(r"ckpt-(\d+)$", latest or "")
    return int(match.group(1)) if match else 0


def remove_checkpoint_temps(out: str) -> list[str]:
    """Removes the ``ckpt-N_temp*`` folders a failed checkpoint write leaves behind."""
    pattern = os.path.join(out, CHECKPOINTS, "*_temp*")
    if paths.is_url(out):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        temps = tf.io.gfile.glob(pattern)
    else:
        temps = glob.glob(pattern)
    for path in temps:
        paths.rmtree(path) if paths.isdir(path) else _unlink(path)
    return temps


def _unlink(path: str) -> None:
    try:
        if paths.is_url(path):
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            tf.io.gfile.remove(path)
        else:
            os.remove(path)
    except (OSError, Exception):  # noqa: BLE001 - gfile raises tf.errors, not OSError
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def not_writable(out: str, err: OSError) -> RunError:
    """The one-line error for an ``--out`` the process may not write."""
    where = err.filename or out
    return RunError(f"--out={out}: cannot write {where} ({err.strerror or err})")


class RunLock:
    """``<out>/run.lock``: held by one training process at a time.

    The file holds ``{"pid", "host"}``; it is created with ``O_EXCL``, so two processes cannot
    both take it. A lock whose pid is dead on this host is stale and taken over; a lock from
    another host cannot be checked and is refused (delete it by hand if that run is gone).
    """

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK_NAME)
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        if paths.is_url(self.path):
            # Object stores have no exclusive create: refuse a lock held elsewhere, then take it
            # (a race between two starts within moments is not caught there).
            holder = self._read()
            if holder and holder != me:
                raise RunError(
                    f"--out={os.path.dirname(self.path)} is in use by another training (pid "
                    f"{holder.get('pid')} on {holder.get('host')}, lock {self.path}); wait for "
                    "it or delete the lock if that run is gone")
            paths.atomic_write_bytes(self.path, json.dumps(me).encode("utf-8"))
            self.held = True
            return
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read()
                if (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
                        and not _pid_alive(holder["pid"])) or holder.get("pid") is None:
                    _unlink(self.path)  # stale (dead pid on this host) or unreadable: take over
                    continue
                raise RunError(
                    f"--out={os.path.dirname(self.path)} is in use by another training (pid "
                    f"{holder.get('pid')} on {holder.get('host')}, lock {self.path}); wait for "
                    "it or use another --out") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunError(f"{self.path}: could not take the lock (another process races for it)")

    def _read(self) -> dict:
        try:
            if paths.is_url(self.path) and not paths.exists(self.path):
                return {}
            data = json.loads(paths.read_text(self.path))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.held:
            _unlink(self.path)
            self.held = False


class RunFolder:
    """Context manager: the checked, locked output folder of one invocation.

    Args:
      out: the ``--out`` folder.
      fingerprint: ``RunConfig.fingerprint()``, compared with a ``config.json`` found there.
      wnids: the build's class list, kept as ``classes.json`` (and compared on resume).

    On an exception inside the block: a folder this invocation created (or found empty) and
    that holds no checkpoint yet is removed again (an empty folder found is emptied), and
    checkpoint temporaries are removed in every case. The lock is always released.
    """

    def __init__(self, out: str, fingerprint: dict, wnids: list[str]):
        self.out = out
        self.fingerprint = fingerprint
        self.wnids = list(wnids)
        self.resuming = False
        self.created = False
        self.fresh = False
        self.lock = RunLock(out)

    def __enter__(self) -> "RunFolder":
        self.resuming = check_output_folder(self.out, self.fingerprint)
        if self.resuming:
            check_classes(self.out, self.wnids)
        self.fresh = not self.resuming
        try:
            if not paths.isdir(self.out):
                paths.makedirs(self.out)
                self.created = True
            self.lock.acquire()
            classes = os.path.join(self.out, CLASSES_NAME)
            if not paths.isfile(classes):
                paths.atomic_write_json(classes, {"wnids": self.wnids})
        except OSError as e:
            self._cleanup()
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise not_writable(self.out, e) from None
            raise RunFailure(f"{e.filename or self.out}: {e.strerror or e}") from None
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._cleanup()
        else:
            self.lock.release()
        return False

    def _cleanup(self) -> None:
        if not self.lock.held:  # another process owns the folder: touch nothing of it
            if self.created:
                paths.rmtree(self.out)
            return
        remove_checkpoint_temps(self.out)
        if self.fresh and paths.isdir(self.out) and not last_checkpoint_epoch(self.out):
            if self.created:
                paths.rmtree(self.out)
            else:
                for name in paths.listdir(self.out):
                    path = os.path.join(self.out, name)
                    paths.rmtree(path) if paths.isdir(path) else _unlink(path)
        self.lock.release()
