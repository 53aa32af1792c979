"""A PNG grid of real Tiny ImageNet images before and after a recipe, to eyeball it.

    python -m augment.grid --src /work/shared/data/tiny-imagenet-sample \
        --recipe student_net2 --out grid.png [--n 8 --repeats 4 --seed 0 --scale 2]

Row i is one training image: the original, then ``repeats`` augmentations of it (each column
one batch seed, ``step_seed(seed, column, 0)``). Reads the train JPEGs directly with PIL so
this module needs only the dataset folder, not a TFRecord build.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from augment.layer import step_seed
from augment.recipes import get_recipe


def list_train_images(src: str) -> list[str]:
    """Sorted paths of ``<src>/train/<wnid>/images/*.JPEG``."""
    root = os.path.join(src, "train")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no train/ folder under {src!r}")
    paths = []
    for wnid in sorted(os.listdir(root)):
        folder = os.path.join(root, wnid, "images")
        if os.path.isdir(folder):
            paths += [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                      if f.lower().endswith((".jpeg", ".jpg"))]
    if not paths:
        raise FileNotFoundError(f"no JPEGs under {root!r}")
    return paths


def load_images(paths, size: int = 64) -> np.ndarray:
    """uint8 ``[N, size, size, 3]``; grayscale JPEGs become RGB, others resized if needed."""
    out = []
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out.append(np.asarray(im, np.uint8))
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
    """Pick ``n`` train images (seeded), augment them, write the PNG grid to ``out``."""
    paths = list_train_images(src)
    pick = np.random.default_rng(seed).choice(len(paths), size=min(n, len(paths)),
                                              replace=False)
    images = load_images([paths[i] for i in sorted(pick)])
    grid = augment_grid(images, get_recipe(recipe_name), repeats, seed)
    header = ["original"] + [f"{recipe_name} #{r + 1}" for r in range(repeats)]
    tile(grid, scale=scale, header=header).save(out)
    return out


def main(argv):
    del argv
    from absl import flags
    f = flags.FLAGS
    path = make_grid(f.src, f.recipe, f.out, n=f.n, repeats=f.repeats, seed=f.seed,
                     scale=f.scale)
    print(path)


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("src", None, "Tiny ImageNet folder (with train/<wnid>/images/).")
    flags.DEFINE_string("recipe", "student_net2", "Recipe name (augment.recipe_names()).")
    flags.DEFINE_string("out", "augment_grid.png", "Output PNG path.")
    flags.DEFINE_integer("n", 8, "Number of images (rows).")
    flags.DEFINE_integer("repeats", 4, "Augmented versions per image (columns).")
    flags.DEFINE_integer("seed", 0, "Seed for the image choice and the augmentation.")
    flags.DEFINE_integer("scale", 2, "Upscaling factor of each tile.")
    flags.mark_flag_as_required("src")
    app.run(main)
