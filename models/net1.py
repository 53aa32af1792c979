"""Network 1 of Abai & Rajmalwar (2019): three 5-conv blocks joined by SpaceToDepth shortcuts.

Layer by layer, as in the authors' ``TinyImageNet_Network_1.ipynb`` (GitHub
``ZohebAbai/Tiny-ImageNet-Challenge``): every conv is 3x3 / stride 1 / ``same`` / no bias, then
BatchNorm, then ReLU; no dropout and no L2.

- block 1: 32, 64, 128, 256, 512 filters, 2x2 max-pool -> ``p1`` (H/2, 512 ch)
- block 2 (from ``p1``): 64, 128, 256, 512, 1024, max-pool -> ``pool2``;
  ``c1 = concat[space_to_depth(p1), pool2]`` (H/4, 2048 + 1024 = 3072 ch)
- block 3 (from ``c1``): 32, 128, 256, 512, 1024, max-pool -> ``pool3``;
  ``c2 = concat[space_to_depth(c1), pool3]`` (H/8, 12288 + 1024 = 13312 ch)
- head: 1x1 conv to ``num_classes`` (no bias), BatchNorm (no ReLU), global average pooling,
  softmax.

The input is ``(None, None, 3)`` by default: one model is trained at 16, 32 and 64 px (any
size divisible by 8) and validated at 64 px. The students' variant (``net1_student``) puts a
bias on every conv and drops the final BatchNorm.
"""

from __future__ import annotations

import keras

from models import layers as L

BLOCK_FILTERS = ((32, 64, 128, 256, 512),
                 (64, 128, 256, 512, 1024),
                 (32, 128, 256, 512, 1024))


def build_net1(num_classes: int = 200, image_size: int | None = None, width: float = 1.0, *,
               student: bool = False, name: str | None = None) -> keras.Model:
    """Network 1 (17,927,040 parameters at 200 classes; student variant 17,931,368).

    Args:
        num_classes: softmax width; not scaled by ``width``.
        image_size: fixed square input size, or None for any size divisible by 8.
        width: multiplies every block conv's filters (e.g. 1/16 for a CPU-sized copy of the
            same topology).
        student: the E4040 re-implementation: conv biases, no BatchNorm after the head conv.
        name: model name; defaults to ``net1`` / ``net1_student`` (plus ``_w<width>`` when
            ``width != 1``).
    """
    L.check_image_size(image_size, 8)
    use_bias = student
    inputs, x = L.pixel_input(image_size)
    shortcut = None
    for block, filters in enumerate(BLOCK_FILTERS, start=1):
        for i, f in enumerate(filters, start=1):
            x = L.conv_bn_relu(x, L.scaled_filters(f, width), use_bias=use_bias,
                               name=f"block{block}_{i}")
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        if shortcut is not None:
            moved = L.SpaceToDepth(2, name=f"block{block}_s2d")(shortcut)
            x = keras.layers.Concatenate(name=f"block{block}_concat")([moved, x])
        shortcut = x
    x = L.conv_bn_relu(x, num_classes, kernel_size=1, use_bias=use_bias, batch_norm=not student,
                       relu=False, name="head")
    outputs = L.softmax_head(x)
    if name is None:
        name = "net1_student" if student else "net1"
        if width != 1.0:
            name += f"_w{width:g}"
    return keras.Model(inputs, outputs, name=name)
