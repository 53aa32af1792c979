"""The seed report's input path with the real imgaug 0.4, timed in its own interpreter.

imgaug 0.4 (the last release) needs numpy < 2 and so cannot share a process with TensorFlow
2.21; ``benchmarks/pipeline.py`` runs this file with the interpreter given by
``--imgaug_python`` (a small venv: ``pip install imgaug==0.4.0 'numpy<2' pillow``) and reads
the JSON line it prints. Only numpy, PIL and imgaug are imported here: that venv has no absl,
so this one script parses its arguments with argparse (exit 2 on bad usage, as absl tools).

What it times is what Keras' ``ImageDataGenerator.flow_from_directory`` with the students'
``preprocessing_function`` did per image: load the JPEG with PIL as RGB, resize to the target
size if needed, convert to a float32 array, call ``Image_augmentation`` (the seed report's
Figure 9, which builds its imgaug ``Sequential`` anew for every image), and stack a batch.
Figure 9's ``pad_mode='nearest'`` and ``mode='nearest'`` are not imgaug pad modes; as in
``augment.recipes.student_net2`` (the recipe we train with) both are ``constant`` with a random
fill colour per image.

    python benchmarks/old_way_imgaug.py --src tiny-imagenet-200 --seconds 10
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
from PIL import Image


def image_augmentation(input_img):
    """The seed report's Figure 9, as written there (a new Sequential per image)."""
    import imgaug.augmenters as iaa  # pylint: disable=import-outside-toplevel
    seq = iaa.Sometimes(0.5, iaa.Sequential([
        iaa.Fliplr(0.5),
        iaa.Flipud(0.2),
        iaa.GaussianBlur(sigma=(0, 0.5)),
        iaa.CropAndPad(percent=(-0.25, 0.25), pad_mode="constant", pad_cval=(0, 255)),
        iaa.Affine(scale={"x": (0.8, 1.2), "y": (0.8, 1.2)},
                   translate_percent={"x": (-0.15, 0.15), "y": (-0.15, 0.15)},
                   rotate=(-30, 30), shear=(-15, 15), order=[0, 1], cval=(0, 255),
                   mode="constant"),
        iaa.CoarseDropout((0.03, 0.15), size_percent=(0.02, 0.05), per_channel=0.2),
        iaa.Multiply((0.9, 1.1), per_channel=0.25),
        iaa.ContrastNormalization((0.75, 1.5), per_channel=0.5)], random_order=True))
    return seq.augment_image(input_img)


def load(path: str, image_size: int) -> np.ndarray:
    """``keras.utils.load_img(path, target_size=...)`` + ``img_to_array``, as the generator does."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32)


def measure(files, *, batch_size: int, image_size: int, seconds: float, augment: bool,
            seed: int = 0) -> dict:
    """Images/s of whole batches produced one image at a time, for about ``seconds``."""
    versions = {"numpy_version": np.__version__}
    if augment:
        import imgaug  # pylint: disable=import-outside-toplevel
        imgaug.seed(seed)
        versions["imgaug_version"] = imgaug.__version__
    order = np.random.default_rng(seed).permutation(len(files))
    images, start, i = 0, time.perf_counter(), 0
    while True:
        batch = []
        for _ in range(batch_size):
            x = load(files[order[i % len(files)]], image_size)
            batch.append(image_augmentation(x) if augment else x)
            i += 1
        np.stack(batch)
        images += batch_size
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return {"images": images, "seconds": elapsed, "images_per_s": images / elapsed,
                    **versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="Tiny ImageNet folder (train/<wnid>/images)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--noaugment", action="store_true", help="loading alone")
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.src, "train", "*", "images", "*")))
    if not files:
        print(f"old_way_imgaug: error: no training images under {args.src}/train",
              file=sys.stderr)
        sys.exit(2)
    result = measure(files, batch_size=args.batch_size, image_size=args.image_size,
                     seconds=args.seconds, augment=not args.noaugment)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
