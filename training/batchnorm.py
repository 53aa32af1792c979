"""BatchNormalization settings the fit loop applies to a built model.

Keras' layer defaults suit long runs on one device; short CPU runs want a faster moving
average, and several replicas with small per-replica batches want statistics over all of
them (``--sync_bn``).
"""

from __future__ import annotations

from typing import Callable

import keras

# BatchNorm over fewer examples than this per replica gives noisy statistics.
MIN_BN_BATCH = 16


def batch_norm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += batch_norm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
    return found


def set_bn_momentum(model: keras.Model, momentum: float) -> int:
    """Sets every BatchNormalization layer's moving-average momentum; returns how many.

    Keras' 0.99 needs several hundred steps before the moving statistics used at validation
    describe the network; short CPU runs (tests, demos) use e.g. 0.9. Full recipes keep 0.99.
    """
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def set_bn_synchronized(model: keras.Model) -> int:
    """Makes every BatchNormalization layer compute batch statistics over all replicas
    (Keras' ``synchronized=True``: an all-reduce of the moments); returns how many."""
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def warn_small_replica_batches(phases, replicas: int, sync_bn: bool,
                               log: Callable[[str], None]) -> None:
    """One warning line per phase whose BatchNorm statistics come from < 16 examples."""
    for i, p in enumerate(phases, 1):
        per_replica = p.batch_size // replicas
        normalised = p.batch_size if sync_bn else per_replica
        if normalised < MIN_BN_BATCH:
            hint = (" (add --sync_bn to normalise over all replicas' examples)"
                    if replicas > 1 and not sync_bn else "")
            log(f"warning: phase {i}: BatchNorm statistics from {normalised} examples "
                f"per step ({p.batch_size} over {replicas} replica(s)){hint}")
