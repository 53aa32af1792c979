"""Building blocks shared by both networks: SpaceToDepth, the conv-BN-ReLU unit, width scaling.

``SpaceToDepth`` is a real, registered Keras layer (not a ``Lambda``), so a saved ``.keras``
model loads back with plain ``keras.saving.load_model(path)`` - no ``custom_objects``, no
``safe_mode=False`` - as soon as ``models`` has been imported (importing the package imports
this module, which registers the class).
"""

from __future__ import annotations

import keras
from keras import ops

# The package name under which our layers are registered ("tinyimagenet_densenet>SpaceToDepth"
# in the saved config). Changing it breaks loading of models saved before the change.
SERIALIZATION_PACKAGE = "tinyimagenet_densenet"


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class SpaceToDepth(keras.layers.Layer):
    """Moves ``block_size x block_size`` spatial blocks into channels (``tf.nn.space_to_depth``).

    ``[B, H, W, C] -> [B, H/b, W/b, b*b*C]`` with the same channel order as
    ``tf.nn.space_to_depth`` (channel index ``(dy*b + dx)*C + c``), which is what the original
    Network 1 used, so weights stay interchangeable. It is written as ``keras.ops`` reshape +
    transpose rather than calling TensorFlow's kernel so that it runs on every Keras backend
    (TensorFlow, JAX, PyTorch), for every dtype (float16/bfloat16 under mixed precision), with
    or without XLA, and with unknown ``H``/``W`` (Network 1 is trained at several input sizes
    with one model). No parameters.

    Args:
        block_size: the spatial block edge ``b``; ``H`` and ``W`` must be divisible by it.
    """

    def __init__(self, block_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = int(block_size)

    def call(self, inputs):
        b = self.block_size
        # Static sizes where known, dynamic scalars otherwise (TensorFlow graphs with
        # unknown H/W); under JAX and PyTorch every size is static.
        _, height, width, channels = ops.shape(inputs)
        x = ops.reshape(inputs, (-1, height // b, b, width // b, b, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, height // b, width // b, b * b * channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        b = self.block_size
        for dim in (height, width):
            if dim is not None and dim % b:
                raise ValueError(
                    f"SpaceToDepth({b}) needs H and W divisible by {b}, got {input_shape}")
        return (batch,
                None if height is None else height // b,
                None if width is None else width // b,
                None if channels is None else channels * b * b)

    def get_config(self):
        config = super().get_config()
        config["block_size"] = self.block_size
        return config


def scaled_filters(filters: int, width: float) -> int:
    """``filters * width`` rounded, at least 1: the width multiplier for tiny variants."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(1, int(round(filters * width)))


def conv_bn_relu(x, filters: int, *, name: str, kernel_size: int = 3, use_bias: bool = False,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None,
                 batch_norm: bool = True, relu: bool = True):
    """Conv2D (stride 1, ``same``) -> BatchNormalization -> ReLU, in the papers' order.

    Layers are named ``{name}_conv``, ``{name}_bn``, ``{name}_relu`` so summaries and
    checkpoints stay readable. BatchNorm keeps Keras' defaults (momentum 0.99, epsilon 1e-3),
    the same as the Keras 2 the authors used.
    """
    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=use_bias,
                            kernel_initializer=kernel_initializer,
                            kernel_regularizer=kernel_regularizer, name=f"{name}_conv")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def pixel_input(image_size: int | None, *, name: str = "pixels"):
    """The model input and its 1/255 scaling: ``(input, scaled)``.

    The input is declared float32 so uint8 batches (cast exactly) and float batches (e.g. after
    augmentation, possibly non-integer) both work; the Rescaling layer runs in the policy's
    compute dtype and adds no parameters.
    """
    shape = (image_size, image_size, 3)
    inputs = keras.Input(shape=shape, dtype="float32", name=name)
    scaled = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    return inputs, scaled


def softmax_head(x, *, name: str = "softmax"):
    """Global average pooling then softmax, the softmax forced to float32.

    Under a ``mixed_float16``/``mixed_bfloat16`` policy everything before this runs in half
    precision; computing the softmax (and hence the loss) in float32 is what keeps mixed
    precision numerically safe.
    """
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.layers.Activation("softmax", dtype="float32", name=name)(x)


def check_image_size(image_size: int | None, multiple: int) -> None:
    """Raise early (at build time) for a fixed input size the network cannot downsample."""
    if image_size is not None and (image_size < multiple or image_size % multiple):
        raise ValueError(f"image_size must be a positive multiple of {multiple}, got {image_size}")
