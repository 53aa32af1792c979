"""The augmentation code as it was before issue 19, frozen: the reference the new code must match.

Why it is kept: the faster ``augment`` (work only on the images a ``Sometimes`` or ``SomeOf``
keeps, cheaper hot ops) promises bit-identical outputs for the same seeds, so the tests compare
it with this copy on every recipe, and ``benchmarks.augment --before`` times both in one run.
Never edit it; nothing in training imports it.
"""

from benchmarks.augment_baseline.recipes import get_recipe

__all__ = ["get_recipe"]
