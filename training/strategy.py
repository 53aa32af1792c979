"""Choosing the tf.distribute strategy and (for tests/demos) splitting the CPU into devices.

``MirroredStrategy`` over every visible GPU is the default; on one GPU or on CPU the default
strategy avoids the all-reduce machinery. Tests exercise the multi-replica code path on a CPU
by configuring logical CPU devices, which must happen before TensorFlow initialises devices.
"""

from __future__ import annotations

import tensorflow as tf


def configure_logical_cpus(n: int) -> None:
    """Splits the physical CPU into ``n`` logical devices (call before any TF op runs).

    Raises:
      RuntimeError: if TensorFlow already initialised its devices.
    """
    if n <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])


def make_strategy(name: str = "auto", *, cluster=None,
                  timeout_s: float = 300) -> tf.distribute.Strategy:
    """The strategy for ``name``.

    Args:
      name: ``"auto"``: MirroredStrategy over all GPUs when there are several, else over all
        logical CPUs when there are several (tests), else the default strategy;
        ``"mirrored"``: MirroredStrategy over all GPUs (or all CPUs without a GPU) even for one
        device; ``"default"``: no distribution; ``"multiworker"``: MultiWorkerMirroredStrategy
        over every worker of ``cluster`` (``training.cluster.Cluster``, from ``TF_CONFIG``),
        each with all its GPUs (or its CPU), once all joined within ``timeout_s`` seconds.
      cluster: this process's place in a multi-worker job; only for ``"multiworker"``.
      timeout_s: how long ``"multiworker"`` waits for the other workers.
    """
    if name == "multiworker":
        from training import cluster as cluster_lib
        if cluster is None:
            raise ValueError("the multiworker strategy needs a cluster (TF_CONFIG)")
        return cluster_lib.make_multiworker_strategy(cluster, timeout_s=timeout_s)
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "default" or (name == "auto" and len(devices) < 2):
        return tf.distribute.get_strategy()
    if name in ("auto", "mirrored"):
        # Between logical CPUs NCCL does not exist; the reduce-to-one-device all-reduce works
        # everywhere and is what MirroredStrategy already picks for GPUs without NCCL.
        cross = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross)
    raise ValueError(f"unknown strategy {name!r}")


def describe(strategy: tf.distribute.Strategy) -> str:
    """A one-line description for logs: strategy class, replica count, device names."""
    try:
        devices = tuple(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list
        devices = ("default device",)
    name = type(strategy).__name__
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        from training import cluster as cluster_lib
        n, i = cluster_lib.num_workers(strategy), cluster_lib.worker_id(strategy)
        name = (f"MultiWorkerMirroredStrategy (worker {i} of {n}"
                f"{', the chief' if i == 0 else ''})")
    return (f"{name} with {strategy.num_replicas_in_sync} replica(s): " + ", ".join(devices))
