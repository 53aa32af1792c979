"""The two networks of Abai & Rajmalwar (2019), built by name.

>>> import models
>>> model = models.build("net2", num_classes=200)          # 11,822,920 parameters
>>> tiny = models.build("net1", num_classes=10, width=1/16)  # same topology, CPU-sized
>>> smoke = models.build("smoke", num_classes=10)  # three convs: tests and quick CPU runs

Inputs are pixels in 0..255 (uint8 or float), scaled by 1/255 inside the model; the output is
a float32 softmax ``[B, num_classes]`` under any Keras dtype policy. Importing this package
registers ``SpaceToDepth``, so ``keras.saving.load_model("x.keras")`` needs no
``custom_objects``.

This package imports Keras only, never TensorFlow: the networks build and train on any Keras 3
backend (TensorFlow, JAX, PyTorch).
"""

from __future__ import annotations

import functools

import keras

from models.layers import SpaceToDepth
from models.net1 import build_net1
from models.net2 import build_net2
from models.smoke import build_smoke

__all__ = ["NAMES", "NETWORKS", "SpaceToDepth", "build", "build_net1", "build_net2",
           "build_smoke"]

_BUILDERS = {
    "net1": build_net1,
    "net2": build_net2,
    "net1_student": functools.partial(build_net1, student=True),
    "smoke": build_smoke,
}

# The papers' networks; ``smoke`` (models/smoke.py) is for tests and quick CPU runs only.
NETWORKS = ("net1", "net2", "net1_student")
NAMES = tuple(_BUILDERS)


def build(name: str, num_classes: int = 200, image_size: int | None = None,
          width: float = 1.0) -> keras.Model:
    """Builds network ``name`` (one of ``NAMES``).

    Args:
        name: ``net1``, ``net2``, ``net1_student``, or ``smoke`` (tests, quick CPU runs).
        num_classes: number of softmax outputs.
        image_size: fixed square input size; None gives a ``(None, None, 3)`` input (any size
            divisible by 8, e.g. Network 1's 16/32/64 px curriculum with one model).
        width: multiplies every conv's filter count (not the classifier's); 1/16 gives a
            network of a few tens of thousands of parameters that trains on a CPU in seconds.

    Returns:
        An uncompiled ``keras.Model`` named after the network (``model.name``), built under the
        current global dtype policy.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {NAMES}") from None
    return builder(num_classes=num_classes, image_size=image_size, width=width)
