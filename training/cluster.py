"""Several hosts: ``TF_CONFIG`` parsing, the multi-worker strategy, and the chief's role.

A multi-worker job is described by TensorFlow's standard ``TF_CONFIG`` environment variable,
the same on every host except ``task.index``::

    {"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}

Worker 0 (or the single ``chief`` task, when the cluster names one) is the *chief*: the only
process that writes the run folder. Every process runs the same custom training loop under
``tf.distribute.MultiWorkerMirroredStrategy``; a worker that cannot reach the others, or loses
one, ends with one line instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import hashlib
import json
import os
import subprocess
from typing import Callable

from training.errors import RunError, RunFailure

ENV = "TF_CONFIG"
DEFAULT_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker job (from ``TF_CONFIG``).

    Attributes:
      workers: every training task's address, chief first when there is a ``chief`` job.
      task_type: ``"worker"`` or ``"chief"``.
      task_index: index within ``task_type``.
    """

    workers: tuple[str, ...]
    task_type: str
    task_index: int
    has_chief_job: bool = False

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def worker_id(self) -> int:
        """0..num_workers-1, the chief being 0 (TensorFlow's ``id_in_cluster``)."""
        if self.task_type == "chief":
            return 0
        return self.task_index + (1 if self.has_chief_job else 0)

    @property
    def is_chief(self) -> bool:
        return self.worker_id == 0

    @property
    def address(self) -> str:
        return self.workers[self.worker_id]


def parse_tf_config(text: str | None) -> Cluster | None:
    """The :class:`Cluster` that ``TF_CONFIG`` text describes; None when unset or empty.

    Raises:
      RunError: the text is not JSON, or does not describe a cluster of ``worker`` (and at
        most one ``chief``) tasks with this task among them; the message says what is wrong.
    """
    if text is None or not text.strip():
        return None

    def bad(why: str) -> RunError:
        return RunError(f"{ENV}: {why}")

    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict):
        raise bad('needs {"cluster": {"worker": ["host:port", ...]}, "task": {...}}')
    jobs = cfg["cluster"]
    unsupported = sorted(set(jobs) - {"worker", "chief"})
    if unsupported:
        raise bad(f"job(s) {', '.join(unsupported)} not supported: this trainer uses "
                  "MultiWorkerMirroredStrategy (worker and optional chief jobs only)")
    for job, addrs in jobs.items():
        if (not isinstance(addrs, list) or not addrs
                or not all(isinstance(a, str) and _host_port(a) for a in addrs)):
            raise bad(f'cluster.{job} must be a non-empty list of "host:port" strings')
    if len(jobs.get("chief", [])) > 1:
        raise bad("at most one chief task")
    task = cfg.get("task")
    if not isinstance(task, dict):
        raise bad('needs "task": {"type": "worker", "index": N}')
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in jobs:
        raise bad(f"task.type {task_type!r} is not a job of the cluster ({', '.join(jobs)})")
    if not isinstance(index, int) or isinstance(index, bool) or not \
            0 <= index < len(jobs[task_type]):
        raise bad(f"task.index {index!r} not in 0..{len(jobs[task_type]) - 1} "
                  f"for job {task_type!r}")
    workers = tuple(jobs.get("chief", [])) + tuple(jobs.get("worker", []))
    if len(set(workers)) != len(workers):
        raise bad("the same host:port appears twice")
    return Cluster(workers=workers, task_type=task_type, task_index=index,
                   has_chief_job="chief" in jobs)


def _host_port(addr: str) -> bool:
    host, sep, port = addr.rpartition(":")
    return bool(host and sep and port.isdigit() and 0 < int(port) < 65536)


def from_environment(environ=None) -> Cluster | None:
    """:func:`parse_tf_config` of ``$TF_CONFIG``."""
    return parse_tf_config((os.environ if environ is None else environ).get(ENV))


def strategy_name(requested: str, cluster: Cluster | None) -> str:
    """The strategy to build: ``"auto"`` becomes ``"multiworker"`` under a cluster of two or
    more workers.

    Raises:
      RunError: ``multiworker`` without a ``TF_CONFIG``, or a multi-worker ``TF_CONFIG`` with
        a single-host strategy (the other workers would wait for this one forever).
    """
    multi = cluster is not None and cluster.num_workers > 1
    if requested == "auto":
        return "multiworker" if multi else "auto"
    if requested == "multiworker" and cluster is None:
        raise RunError(f"--strategy=multiworker needs the {ENV} environment variable "
                       "(README, 'Several hosts')")
    if requested != "multiworker" and multi:
        raise RunError(f"--strategy={requested} but {ENV} describes "
                       f"{cluster.num_workers} workers; use --strategy=multiworker or auto")
    return requested


# The watchdog's reader (``sh -c READER watchdog LINE``, stdin the pipe faulthandler writes):
# prints LINE once anything arrives, then drains the pipe until this process is gone (so its
# last writes never meet a closed pipe); at end-of-file with nothing read it ends silently.
# It ignores Ctrl-C and SIGTERM, which reach the whole process group, so that it still
# prints the line if this process is stuck where it cannot act on them.
_READER = ("trap '' INT TERM; IFS= read -r _ || exit 0; printf '%s\\n' \"$1\" >&2; "
           "exec cat >/dev/null")


def _watchdog(timeout_s: float, message: str) -> Callable[[], None]:
    """Ends this process with exit status 1 and ``train_main: error: MESSAGE`` as the last line
    on stderr unless the returned ``cancel()`` is called within ``timeout_s`` seconds.

    It must fire while the main thread is blocked in native code that holds the GIL (a chief
    whose workers never come waits that way in TensorFlow's context set-up), so no Python
    thread can do it. faulthandler's watchdog is a C thread: when the time is up it writes a
    traceback into a pipe and calls ``_exit(1)``; a tiny shell process (``_READER``), started
    now with the pipe as its stdin and this process's stderr, prints the one line when
    anything arrives. ``cancel()`` disarms the timer, closes the pipe (the reader ends
    silently) and reaps the reader. faulthandler has one such timer per process: arming this
    one replaces any other ``dump_traceback_later`` (pytest's ``faulthandler_timeout``, in a
    test that calls this in-process); ``faulthandler.enable`` (absl's) is unaffected.
    """
    read_fd, write_fd = os.pipe()  # not inheritable: the reader gets only its stdin end
    try:
        reader = subprocess.Popen(["/bin/sh", "-c", _READER, "watchdog",
                                   f"train_main: error: {message}"],
                                  stdin=read_fd, stdout=subprocess.DEVNULL)
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    faulthandler.dump_traceback_later(timeout_s, exit=True, file=write_fd)

    def cancel():
        faulthandler.cancel_dump_traceback_later()
        os.close(write_fd)
        reader.wait()
    return cancel


def make_multiworker_strategy(cluster: Cluster, *, timeout_s: float = DEFAULT_TIMEOUT_S):
    """``MultiWorkerMirroredStrategy`` for ``cluster``, once every worker has joined.

    Registration with the coordination service and a first all-reduce (a barrier) must
    finish within ``timeout_s``; afterwards a worker missing heartbeats for
    ``min(timeout_s, 60)`` seconds makes the others fail (see :func:`peer_failures`).
    Where TensorFlow itself never gives up (a chief whose workers never start waits in its
    context set-up, GIL held), :func:`_watchdog` ends the process ``timeout_s + 5`` seconds
    after the start: exit 1, the same one line, no ``finally`` run (so call this before
    anything is written).

    Raises:
      RunFailure: the other workers could not be reached in time (exit 1).
    """
    import tensorflow as tf
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    what = (f"worker {cluster.worker_id} ({cluster.address}) could not reach all "
            f"{cluster.num_workers} workers of {ENV} within {timeout_s:g} s")
    cancel_watchdog = _watchdog(timeout_s + 5, what)
    try:
        jobs = [coordination_config_pb2.CoordinatedJob(name="chief", num_tasks=1)] \
            if cluster.has_chief_job else []
        n_workers = cluster.num_workers - (1 if cluster.has_chief_job else 0)
        if n_workers:
            jobs.append(coordination_config_pb2.CoordinatedJob(name="worker",
                                                               num_tasks=n_workers))
        leader = "chief" if cluster.has_chief_job else "worker"
        context.context().configure_coordination_service(
            service_type="standalone", service_leader=f"/job:{leader}/replica:0/task:0",
            cluster_register_timeout_in_ms=int(timeout_s * 1000),
            heartbeat_timeout_in_ms=int(min(timeout_s, 60) * 1000),
            coordinated_jobs=jobs)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _barrier(strategy)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
            tf.errors.AbortedError, tf.errors.CancelledError) as e:
        raise RunFailure(f"{what}: {_first_line(e)}") from None
    finally:
        cancel_watchdog()
    return strategy


def _barrier(strategy) -> None:
    """One all-reduce over every replica: returns once all workers are up."""
    import tensorflow as tf
    @tf.function
    def count_replicas():
        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(lambda: tf.constant(1.0)), axis=None)
    out = count_replicas()
    if int(out.numpy()) != strategy.num_replicas_in_sync:
        raise RunFailure(f"barrier over {strategy.num_replicas_in_sync} replicas returned "
                         f"{float(out.numpy())}")


def _first_line(e: Exception) -> str:
    text = getattr(e, "message", None) or str(e)
    return (text.strip().splitlines() or [type(e).__name__])[0][:300]


@contextlib.contextmanager
def peer_failures(cluster: Cluster | None):
    """Turns a lost worker (collectives failing or timing out) into a one-line RunFailure."""
    if cluster is None or cluster.num_workers < 2:
        yield
        return
    import tensorflow as tf
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.InternalError) as e:
        raise RunFailure(f"worker {cluster.worker_id} ({cluster.address}) lost contact with "
                         f"the other workers: {_first_line(e)}; restart every worker with the "
                         "same command to resume from the chief's last checkpoint") from None


def writes_run_folder(cluster: Cluster | None) -> bool:
    """True unless this process is a non-chief worker of a multi-worker ``TF_CONFIG``."""
    return cluster is None or cluster.num_workers < 2 or cluster.is_chief


def is_chief(strategy=None) -> bool:
    """True in the process that writes the run folder (always, outside a multi-worker job)."""
    if strategy is None or not _is_multiworker(strategy):
        return True
    return bool(strategy.extended.should_checkpoint)


def _is_multiworker(strategy) -> bool:
    import tensorflow as tf
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and \
        getattr(strategy.extended, "_num_workers", 1) > 1


def num_workers(strategy) -> int:
    """Workers (hosts) taking part in ``strategy``: 1 unless multi-worker."""
    return int(getattr(strategy.extended, "_num_workers", 1)) if _is_multiworker(strategy) \
        else 1


def worker_id(strategy) -> int:
    """This worker's index 0..num_workers-1 (0 is the chief)."""
    if not _is_multiworker(strategy):
        return 0
    return int(strategy.extended._id_in_cluster)  # noqa: SLF001 - no public accessor


def settings_hash(fingerprint: dict) -> int:
    """A 20-bit hash of the run settings (exact in float64 sums of squares)."""
    text = json.dumps(fingerprint, sort_keys=True).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big") & 0xFFFFF
