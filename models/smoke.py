"""A smoke-test network: Network 2's layer kinds in three convs, for tests and quick CPU runs.

The training loop's rules (resume, best weights, divergence, data passes, several workers) do
not depend on the network, yet on a CPU tracing Network 2's 14 convs and their gradients costs
more than training it for a few steps. This network has every kind of layer the two networks
train (conv with bias and L2, BatchNorm, ReLU, concatenation, max-pooling, a 1x1 classifier,
global average pooling, float32 softmax), so the loop meets the same variables, losses and
BatchNorm statistics for much less set-up (README, "Quick start"). timm's ``test_*`` models serve the
same purpose. It is not a model to train for accuracy.
"""

from __future__ import annotations

import keras

from models import layers as L

FILTERS = 8
L2 = 2e-4


def build_smoke(num_classes: int = 200, image_size: int | None = None, width: float = 1.0, *,
                name: str = "smoke") -> keras.Model:
    """stem conv -> one conv -> ``concat[stem, conv]``, BatchNorm, ReLU, 2x2 max-pool -> 1x1
    classifier -> global average pooling -> softmax.

    Args:
        num_classes: softmax width.
        image_size: fixed square input size, or None for any size divisible by 8.
        width: multiplies the convs' filters (8), as for the real networks.
        name: model name.
    """
    L.check_image_size(image_size, 8)  # as the networks: every size a run takes fits all

    def kwargs():  # fresh objects per layer, as in Network 2
        return dict(use_bias=True, kernel_regularizer=keras.regularizers.L2(L2))

    inputs, x = L.pixel_input(image_size)
    filters = L.scaled_filters(FILTERS, width)
    s = L.conv_bn_relu(x, filters, name="stem", **kwargs())
    x = L.conv_bn_relu(s, filters, name="block1_1", **kwargs())
    x = keras.layers.Concatenate(name="block1_concat")([s, x])
    x = keras.layers.BatchNormalization(name="block1_concat_bn")(x)
    x = keras.layers.ReLU(name="block1_concat_relu")(x)
    x = keras.layers.MaxPooling2D(2, name="block1_pool")(x)
    x = L.conv_bn_relu(x, num_classes, kernel_size=1, batch_norm=False, relu=False, name="head",
                       **kwargs())
    return keras.Model(inputs, L.softmax_head(x), name=name)
