"""imgaug-style augmentation as batched, stateless, XLA-compilable TensorFlow ops.

Public API (see docs/CONTRACTS.md):

* ops: ``Fliplr``, ``Flipud``, ``CropAndPad``, ``Affine`` (``augment.geometry``),
  ``GaussianBlur``, ``CoarseDropout``, ``Multiply``, ``LinearContrast`` /
  ``ContrastNormalization``, ``AdditiveGaussianNoise`` (``augment.photometric``);
* combinators: ``Sometimes``, ``Sequential``, ``SomeOf``, ``Identity``;
* recipes: ``get_recipe(name)``, ``RECIPE_NAMES``, ``register_recipe``, ``recipe_names``;
* seeds and Keras: ``step_seed``, ``AugmentLayer``.

Every op and recipe is a callable ``aug(images, seed)`` on uint8 or float ``[B, H, W, C]``
pixels in 0..255 with an int32 ``[2]`` seed, returning the same dtype and shape.
"""

from augment.combinators import Identity, Sequential, SomeOf, Sometimes
from augment.core import Augmenter, fold_seed, split_seed
from augment.geometry import Affine, CropAndPad, Fliplr, Flipud
from augment.layer import AugmentLayer, step_seed
from augment.photometric import (AdditiveGaussianNoise, CoarseDropout, ContrastNormalization,
                                 GaussianBlur, LinearContrast, Multiply)
from augment.recipes import RECIPE_NAMES, get_recipe, recipe_names, register_recipe

__all__ = [
    "AdditiveGaussianNoise", "Affine", "AugmentLayer", "Augmenter", "CoarseDropout",
    "ContrastNormalization", "CropAndPad", "Fliplr", "Flipud", "GaussianBlur", "Identity",
    "LinearContrast", "Multiply", "RECIPE_NAMES", "Sequential", "SomeOf", "Sometimes",
    "fold_seed", "get_recipe", "recipe_names", "register_recipe", "split_seed", "step_seed",
]

