"""Network 2 of Abai & Rajmalwar (2019): a stem and three dense-style 4-conv blocks.

Layer by layer, as in the authors' ``TinyImageNet_Network_2.ipynb`` (GitHub
``ZohebAbai/Tiny-ImageNet-Challenge``): every conv is 3x3 / stride 1 / ``same`` with bias,
``VarianceScaling`` initialiser and an L2(2e-4) kernel regulariser, then BatchNorm, then ReLU.

- stem: conv 32 -> ``s``
- for f in 128, 256, 512: four convs of f filters starting from ``s``;
  ``concat[s, 4th conv]``, BatchNorm, ReLU, 2x2 max-pool -> new ``s``
  (concatenated widths 160, 416, 928 at 64, 32, 16 px for a 64 px input; final map 8x8x928)
- head: 1x1 conv to ``num_classes`` (bias, L2, no BN), global average pooling, softmax.

The L2 penalties are in ``model.losses``: a custom training loop must add ``sum(model.losses)``
to the loss (``model.fit`` does it by itself).
"""

from __future__ import annotations

import keras

from models import layers as L

STEM_FILTERS = 32
BLOCK_FILTERS = (128, 256, 512)
CONVS_PER_BLOCK = 4
L2 = 2e-4


def _conv_kwargs() -> dict:
    # Fresh objects per layer: Keras serialises each layer's initializer/regulariser separately.
    return dict(use_bias=True, kernel_initializer=keras.initializers.VarianceScaling(),
                kernel_regularizer=keras.regularizers.L2(L2))


def build_net2(num_classes: int = 200, image_size: int | None = None, width: float = 1.0, *,
               name: str | None = None) -> keras.Model:
    """Network 2 (11,822,920 parameters at 200 classes).

    Args:
        num_classes: softmax width; not scaled by ``width``.
        image_size: fixed square input size (64 in the papers), or None for any size
            divisible by 8.
        width: multiplies every conv's filters except the head's.
        name: model name; defaults to ``net2`` (plus ``_w<width>`` when ``width != 1``).
    """
    L.check_image_size(image_size, 8)
    inputs, x = L.pixel_input(image_size)
    s = L.conv_bn_relu(x, L.scaled_filters(STEM_FILTERS, width), name="stem", **_conv_kwargs())
    for block, f in enumerate(BLOCK_FILTERS, start=1):
        x = s
        for i in range(1, CONVS_PER_BLOCK + 1):
            x = L.conv_bn_relu(x, L.scaled_filters(f, width), name=f"block{block}_{i}",
                               **_conv_kwargs())
        x = keras.layers.Concatenate(name=f"block{block}_concat")([s, x])
        x = keras.layers.BatchNormalization(name=f"block{block}_concat_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_concat_relu")(x)
        s = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = L.conv_bn_relu(s, num_classes, kernel_size=1, batch_norm=False, relu=False, name="head",
                       **_conv_kwargs())
    outputs = L.softmax_head(x)
    if name is None:
        name = "net2" if width == 1.0 else f"net2_w{width:g}"
    return keras.Model(inputs, outputs, name=name)
