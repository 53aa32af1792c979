"""imgaug-style augmentation as batched, stateless, XLA-compilable TensorFlow ops.

Public API (see docs/CONTRACTS.md):

* ops: ``Fliplr``, ``Flipud``, ``CropAndPad``, ``Affine``, ``FusedGeometry``
  (``augment.geometry``), ``GaussianBlur``, ``CoarseDropout``, ``Multiply``,
  ``LinearContrast`` / ``ContrastNormalization``, ``AdditiveGaussianNoise``
  (``augment.photometric``); their parameters follow one grammar (``augment.params``):
  a number, ``(a, b)``, a list, ``{"x", "y"}`` where imgaug allows it, and ``ALL``;
* combinators: ``Sometimes``, ``Sequential``, ``SomeOf``, ``Identity``;
* recipes: ``get_recipe(name)``, ``RECIPE_NAMES`` (built-ins), ``register_recipe``,
  ``recipe_names()`` (built-ins and registered), ``temporary_recipes()`` (registrations
  undone when its block ends);
* seeds and Keras: ``step_seed``, ``split_seed``, ``fold_seed`` (``augment.core``),
  ``AugmentLayer``.

Every op and recipe is a callable ``aug(images, seed)`` on uint8 or float ``[B, H, W, C]``
pixels in 0..255 with an int32 ``[2]`` seed, returning the same dtype and shape. Ops also
split into ``draw(seed, batch, shape)`` (every random parameter, whole batch) and
``render(images, params)`` (pixels, any rows), so combinators compute only the images they
change with the draws each image would have had (``benchmarks.augment_baseline`` is the old
code, kept outside the library as the reference for bit-identity).
"""

from augment.combinators import Identity, Sequential, SomeOf, Sometimes
from augment.core import Augmenter, fold_seed, split_seed, step_seed
from augment.geometry import Affine, CropAndPad, Fliplr, Flipud, FusedGeometry
from augment.layer import AugmentLayer
from augment.params import ALL
from augment.photometric import (AdditiveGaussianNoise, CoarseDropout, ContrastNormalization,
                                 GaussianBlur, LinearContrast, Multiply)
from augment.recipes import (RECIPE_NAMES, get_recipe, recipe_names, register_recipe,
                             temporary_recipes)

__all__ = [
    "ALL", "AdditiveGaussianNoise", "Affine", "AugmentLayer", "Augmenter", "CoarseDropout",
    "ContrastNormalization", "CropAndPad", "Fliplr", "Flipud", "FusedGeometry", "GaussianBlur",
    "Identity", "LinearContrast", "Multiply", "RECIPE_NAMES", "Sequential", "SomeOf",
    "Sometimes", "fold_seed", "get_recipe", "recipe_names", "register_recipe", "split_seed",
    "temporary_recipes",
    "step_seed",
]
