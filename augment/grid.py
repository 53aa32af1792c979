"""A PNG grid of real Tiny ImageNet images before and after a recipe, to eyeball it.

    python -m augment.grid --src tiny-imagenet-200 --recipe student_net2 --out grid.png \
        [--n 8 --repeats 4 --seed 0 --scale 2]

Row i is one training image: the original, then ``repeats`` augmentations of it (each column
one batch seed, ``step_seed(seed, column, 0)``). Reads the train JPEGs directly with PIL so
this module needs only the dataset folder, not a TFRecord build. Exit status 2 for bad input
or usage (the message names the flag or path), 1 if writing the grid fails.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, UnidentifiedImageError

from augment.core import step_seed
from augment.recipes import get_recipe
from plumbing import cli as cli_lib


class GridInputError(ValueError):
    """Bad input: a missing or empty dataset folder, an unreadable JPEG, a bad setting."""


def list_train_images(src: str) -> list[str]:
    """Sorted paths of ``<src>/train/<wnid>/images/*.JPEG``."""
    root = os.path.join(src, "train")
    if not os.path.isdir(root):
        raise GridInputError(f"--src={src}: no train/ folder there (expected the Tiny "
                             f"ImageNet layout train/<wnid>/images/*.JPEG)")
    paths = []
    for wnid in sorted(os.listdir(root)):
        folder = os.path.join(root, wnid, "images")
        if os.path.isdir(folder):
            paths += [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                      if f.lower().endswith((".jpeg", ".jpg"))]
    if not paths:
        raise GridInputError(f"--src={src}: no JPEGs under {root}/<wnid>/images/")
    return paths


def load_images(paths, size: int = 64) -> np.ndarray:
    """uint8 ``[N, size, size, 3]``; grayscale JPEGs become RGB, others resized if needed."""
    out = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                out.append(np.asarray(im, np.uint8))
        except UnidentifiedImageError:
            raise GridInputError(f"{path}: not a readable image") from None
    return np.stack(out)


def augment_grid(images: np.ndarray, recipe, repeats: int, seed: int) -> np.ndarray:
    """``[N, 1 + repeats, H, W, 3]``: each image, then one augmentation per batch seed."""
    columns = [images] + [np.asarray(recipe(images, step_seed(seed, r, 0)))
                          for r in range(repeats)]
    return np.stack(columns, axis=1)


def tile(grid: np.ndarray, scale: int = 2, gap: int = 4, header: list[str] | None = None):
    """A PIL image of ``[rows, cols, H, W, 3]`` tiles, scaled up, with optional column titles."""
    rows, cols, height, width, _ = grid.shape
    h, w = height * scale, width * scale
    top = 14 if header else 0
    canvas = Image.new("RGB", (cols * (w + gap) + gap, top + rows * (h + gap) + gap),
                       (255, 255, 255))
    for r in range(rows):
        for c in range(cols):
            tile_im = Image.fromarray(grid[r, c]).resize((w, h), Image.NEAREST)
            canvas.paste(tile_im, (gap + c * (w + gap), top + gap + r * (h + gap)))
    if header:
        draw = ImageDraw.Draw(canvas)
        for c, text in enumerate(header):
            draw.text((gap + c * (w + gap) + 2, 1), text, fill=(0, 0, 0))
    return canvas


def make_grid(src: str, recipe_name: str, out: str, n: int = 8, repeats: int = 4,
              seed: int = 0, scale: int = 2) -> str:
    """Pick ``n`` train images (seeded), augment them, write the PNG grid to ``out``.

    Everything is checked before any work, and the PNG is written beside ``out`` then renamed,
    so a failure leaves no partial file.

    Raises:
      GridInputError: a bad ``src``, recipe name, ``out`` folder or count.
      OSError: reading a JPEG or writing the PNG failed.
    """
    for name, value in (("n", n), ("repeats", repeats), ("scale", scale)):
        if value < 1:
            raise GridInputError(f"--{name}={value}: must be >= 1")
    try:
        recipe = get_recipe(recipe_name)
    except ValueError as e:
        raise GridInputError(f"--recipe: {e}") from None
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise GridInputError(f"--out={out}: folder {folder} does not exist")
    paths = list_train_images(src)
    pick = np.random.default_rng(seed).choice(len(paths), size=min(n, len(paths)),
                                              replace=False)
    images = load_images([paths[i] for i in sorted(pick)])
    grid = augment_grid(images, recipe, repeats, seed)
    header = ["original"] + [f"{recipe_name} #{r + 1}" for r in range(repeats)]
    partial = out + ".partial"
    try:
        tile(grid, scale=scale, header=header).save(partial, format="PNG")
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return out


def run(src, recipe: str, out: str, n: int, repeats: int, seed: int, scale: int) -> int:
    """:func:`make_grid` with the command line's exit statuses and one-line errors."""
    if not src:
        print("augment.grid: error: --src is required (the Tiny ImageNet folder with "
              "train/<wnid>/images/)", file=sys.stderr)
        return 2
    try:
        path = make_grid(src, recipe, out, n=n, repeats=repeats, seed=seed, scale=scale)
    except GridInputError as e:
        print(f"augment.grid: error: {e}", file=sys.stderr)
        return 2
    except (OSError, tf.errors.OpError) as e:
        print(f"augment.grid: failed: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(path)
    return 0


def main(argv) -> int:
    """Maps the flags to :func:`run` (which calls :func:`make_grid`)."""
    from absl import flags
    if len(argv) > 1:
        print(f"augment.grid: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    f = flags.FLAGS
    return run(f.src, f.recipe, f.out, n=f.n, repeats=f.repeats, seed=f.seed, scale=f.scale)


def _define_flags() -> None:
    from absl import flags
    flags.DEFINE_string("src", None, "Tiny ImageNet folder (with train/<wnid>/images/).")
    flags.DEFINE_string("recipe", "student_net2", "Recipe name (augment.recipe_names()).")
    flags.DEFINE_string("out", "augment_grid.png", "Output PNG path (its folder must exist).")
    flags.DEFINE_integer("n", 8, "Number of images (rows).")
    flags.DEFINE_integer("repeats", 4, "Augmented versions per image (columns).")
    flags.DEFINE_integer("seed", 0, "Seed for the image choice and the augmentation.")
    flags.DEFINE_integer("scale", 2, "Upscaling factor of each tile.")


def cli() -> None:
    """Entry point: ``python -m augment.grid`` (the project's runner: ``--help`` exits 0,
    a bad flag is one line and exit 2, a closed pipe ends quietly)."""
    _define_flags()
    cli_lib.run(main, __name__)


if __name__ == "__main__":
    cli()
