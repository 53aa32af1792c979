"""The paper's augmentation recipes, built by name from a registry users can extend.

A recipe is any callable ``(images, seed) -> images`` (see docs/CONTRACTS.md); the built-in
ones are :class:`~augment.core.Augmenter` trees mirroring the imgaug code of the original
authors' notebooks (github ZohebAbai/Tiny-ImageNet-Challenge) and of the student
re-implementation (the seed report's Figure 9).

Adding your own::

    import augment
    from augment import Sometimes, Sequential, Fliplr, Multiply, GaussianBlur

    def my_recipe():
        return Sequential([Fliplr(0.5),
                           Sometimes(0.3, GaussianBlur(sigma=(0.0, 1.0))),
                           Multiply((0.9, 1.1), per_channel=0.5)])

    augment.register_recipe("my_recipe", my_recipe)
    aug = augment.get_recipe("my_recipe")   # or AugmentLayer("my_recipe")
    images = aug(images_uint8, seed=[1, 2])

Factories are called on each ``get_recipe`` so every user gets a fresh tree.
"""

from __future__ import annotations

from typing import Callable

from benchmarks.augment_baseline.combinators import Identity, Sequential, SomeOf, Sometimes
from benchmarks.augment_baseline.core import Augmenter
from benchmarks.augment_baseline.geometry import Affine, CropAndPad, Fliplr, Flipud
from benchmarks.augment_baseline.params import ALL
from benchmarks.augment_baseline.photometric import (AdditiveGaussianNoise, CoarseDropout,
                                          ContrastNormalization, GaussianBlur, Multiply)


def student_net2() -> Augmenter:
    """Seed report, Figure 9: half the images get all eleven ops in a random order.

    The figure's code is garbled where it names border modes (``'nearest'`` is no imgaug
    ``pad_mode``; the tuple brackets are missing), so this follows the networks notes: imgaug's
    default constant borders, with a random fill colour per image (``cval``/``pad_cval``
    (0, 255), as the figure gives them).
    """
    return Sometimes(0.5, Sequential([
        Fliplr(0.5),
        Flipud(0.2),
        GaussianBlur(sigma=(0.0, 0.5)),
        CropAndPad(percent=(-0.25, 0.25), pad_mode="constant", pad_cval=(0, 255)),
        Affine(scale={"x": (0.8, 1.2), "y": (0.8, 1.2)},
               translate_percent={"x": (-0.15, 0.15), "y": (-0.15, 0.15)},
               rotate=(-30, 30), shear=(-15, 15), order=[0, 1], cval=(0, 255),
               mode="constant"),
        CoarseDropout((0.03, 0.15), size_percent=(0.02, 0.05), per_channel=0.2),
        Multiply((0.9, 1.1), per_channel=0.25),
        ContrastNormalization((0.75, 1.5), per_channel=0.5),
    ], random_order=True))


def original_net2() -> Augmenter:
    """The original authors' Network 2 recipe: flips, then six ops each at 50%, random order."""
    return Sequential([
        Fliplr(0.5),
        Flipud(0.2),
        Sometimes(0.5, GaussianBlur(sigma=(0.0, 2.0))),
        Sometimes(0.5, CropAndPad(percent=(-0.1, 0.2), pad_mode=ALL, pad_cval=(0, 255))),
        Sometimes(0.5, Affine(scale={"x": (0.8, 1.5), "y": (0.8, 1.5)},
                              translate_percent={"x": (-0.2, 0.2), "y": (-0.2, 0.2)},
                              rotate=(-45, 45), shear=(-16, 16), order=[0, 1],
                              cval=(0, 255), mode=ALL)),
        Sometimes(0.5, CoarseDropout((0.03, 0.15), size_percent=(0.02, 0.05),
                                     per_channel=0.2)),
        Sometimes(0.5, Multiply((0.8, 1.2), per_channel=0.2)),
        Sometimes(0.5, ContrastNormalization((0.75, 1.5), per_channel=0.5)),
    ], random_order=True)


def original_net1() -> Augmenter:
    """The original authors' Network 1 recipe: any subset of five ops, in list order.

    As ``TinyImageNet_Network_1.ipynb`` ("Image Augmentation") has it, op for op. Its
    ``iaa.Affine(rotate=20)`` is a bare number, which imgaug takes as a constant: every image
    the op reaches turns by exactly 20 degrees (clockwise), never by a random angle. The
    notebook ran it per image through ``ImageDataGenerator(preprocessing_function=...)`` on
    float32 pixels, so nothing was rounded between ops and values were not clipped to
    0..255 (its own preview warns of out-of-range pixels). Fed uint8 batches, this recipe
    rounds and clips after each op as imgaug does on uint8; a float32 batch is not rounded
    but is still clipped to 0..255.
    """
    return SomeOf((0, None), [
        Affine(scale=(0.5, 1.5)),
        Affine(rotate=20),
        CoarseDropout((0.0, 0.2), size_percent=(0.05, 0.07)),
        AdditiveGaussianNoise(scale=0.05 * 255),
        CropAndPad(percent=(-0.25, 0.25)),
    ])


def none() -> Augmenter:
    """No augmentation (the pipeline stays a no-op)."""
    return Identity()


_REGISTRY: dict[str, Callable[[], Augmenter]] = {
    "student_net2": student_net2,
    "original_net2": original_net2,
    "original_net1": original_net1,
    "none": none,
}

# The built-in names (the contract's list); recipe_names() also lists registered ones.
RECIPE_NAMES = tuple(_REGISTRY)


def register_recipe(name: str, factory: Callable[[], Augmenter], *,
                    overwrite: bool = False) -> None:
    """Make ``get_recipe(name)`` (and ``AugmentLayer(name)``) build ``factory()``.

    Args:
      name: the recipe's name.
      factory: a zero-argument callable returning a recipe (an Augmenter, or any callable
        ``(images, seed) -> images``).
      overwrite: replace an existing name instead of raising ``ValueError``.
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"recipe {name!r} is already registered (pass overwrite=True)")
    _REGISTRY[name] = factory


def recipe_names() -> tuple[str, ...]:
    """Every recipe name ``get_recipe`` accepts now, built-ins first."""
    return tuple(_REGISTRY)


def get_recipe(name: str):
    """A fresh recipe for ``name``; ``ValueError`` lists the known names otherwise."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown augmentation recipe {name!r}; known: "
                         f"{', '.join(_REGISTRY)}") from None
    return factory()
