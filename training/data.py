"""Data a run needs: a synthetic, class-learnable build for demos and tests."""

from __future__ import annotations

import os
import shutil
import tempfile


def make_synthetic_build(data_dir: str, *, num_classes: int = 10, train_per_class: int = 100,
                         val_per_class: int = 20, image_size: int = 64, seed: int = 0) -> dict:
    """Generates a small synthetic Tiny ImageNet layout and builds it into ``data_dir``.

    The images (``tinyimagenet_tfrecords.synthetic``) carry a per-class colour tint, which a
    small network learns within a few epochs: enough to watch accuracy rise in a CPU demo.
    The source JPEGs go to a temporary folder that is removed afterwards.

    Returns:
      The build's manifest.
    """
    from tinyimagenet_tfrecords import build, synthetic
    parent = os.path.dirname(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    src = tempfile.mkdtemp(prefix=".synthetic-src-", dir=parent)
    try:
        synthetic.make_synthetic_dataset(
            src, num_classes=num_classes, train_per_class=train_per_class,
            num_val=val_per_class * num_classes, num_test=num_classes, image_size=image_size,
            seed=seed, workers=1)
        return build.build_dataset(src, data_dir, shards=2, workers=1,
                                   splits=("train", "val"), seed=seed, progress=False)
    finally:
        shutil.rmtree(src, ignore_errors=True)
