"""The base every augmentation op and combinator shares: dtype handling and the seed helpers.

An op's ``apply`` sees float32 pixels in 0..255, whatever the caller passed, so each op is
written once; ``__call__`` converts in and out, which keeps the caller's dtype and value range.
Randomness is stateless: every random draw comes from an explicit int32 ``[2]`` seed, so the
same seed gives the same batch eagerly, under ``tf.function(jit_compile=True)`` and in
``tf.data`` (through :func:`uniform` / :func:`uniform_int` with non-negative seeds: raw float
``tf.random.stateless_uniform`` draws differ under XLA in TF 2.21), and distinct seeds (per
step, per replica) give independent draws.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

# Every draw names Philox, the generator "auto_select" picks on CPU and GPU (same bits), so
# the seed is scrambled by a small Philox op instead of XLA's StatelessRandomGetKeyCounter
# lowering, which keeps XLA's simplification passes from reaching a fixed point: they ran 25
# rounds instead of 1-18, making the XLA compile slower (README, "Augmentation").
ALG = "philox"


def as_seed(seed) -> tf.Tensor:
    """An int32 ``[2]`` seed tensor from an int, a pair, or a tensor."""
    if isinstance(seed, int):
        seed = [seed, 0]
    return tf.cast(tf.convert_to_tensor(seed), tf.int32)


def xla_safe_seed(seed) -> tf.Tensor:
    """``seed`` with the sign bit cleared, so draws agree eagerly, in tf.data and under XLA.

    TF 2.21's CPU kernels and XLA extend a negative int32 seed component differently, so
    e.g. ``stateless_uniform(seed=[-5, 1])`` gives other numbers under ``jit_compile=True``.
    Every seed this module derives goes through here.
    """
    return tf.bitwise.bitwise_and(as_seed(seed), tf.constant(0x7FFFFFFF, tf.int32))


def split_seed(seed, n: int) -> tf.Tensor:
    """``n`` independent int32 ``[2]`` seeds derived from ``seed`` (shape ``[n, 2]``).

    Both input and outputs are made non-negative (:func:`xla_safe_seed`).
    """
    return xla_safe_seed(tf.random.experimental.stateless_split(xla_safe_seed(seed), n,
                                                                alg=ALG))


def fold_seed(seed, data) -> tf.Tensor:
    """A new non-negative seed that depends on ``seed`` and the int ``data`` (a step, a replica)."""
    return xla_safe_seed(tf.random.experimental.stateless_fold_in(
        xla_safe_seed(seed), tf.cast(data, tf.int32), alg=ALG))


def step_seed(base_seed, step, replica_id) -> tf.Tensor:
    """The int32 ``[2]`` seed of one step on one replica: ``base_seed`` folded with both.

    Distinct per step and per replica, and the same for the same triple wherever it runs
    (:func:`fold_seed` clears sign bits: XLA and the CPU kernels disagree on negative seeds).
    """
    return fold_seed(fold_seed(base_seed, step), replica_id)


def uniform_int(shape, seed, low: int, high: int) -> tf.Tensor:
    """Stateless int32 uniform on ``[low, high)``, identical eagerly and under XLA."""
    return tf.random.stateless_uniform(shape, xla_safe_seed(seed), low, high, dtype=tf.int32,
                                       alg=ALG)


def uniform(shape, seed, low=0.0, high=1.0) -> tf.Tensor:
    """Stateless float32 uniform on ``[low, high)`` that is identical eagerly and under XLA.

    ``tf.random.stateless_uniform`` with a float dtype gives different numbers under
    ``jit_compile=True`` than eagerly or in ``tf.data`` (TF 2.21, measured), while its integer
    draws agree (for non-negative seeds); so floats are made from the top 24 bits of an
    integer draw.
    """
    bits = tf.random.stateless_uniform(shape, xla_safe_seed(seed), minval=None, maxval=None,
                                       dtype=tf.uint32, alg=ALG)
    unit = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))
    return low + (high - low) * unit


def check_probability(p, name: str) -> float:
    """A probability (``p``, ``per_channel``): a bool or a number in ``[0, 1]``, as a float.

    Raises a one-line ``ValueError`` naming ``name`` (e.g. ``"Sometimes p"``) otherwise.
    """
    if not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name}: expected a bool or a probability in [0, 1], got {p!r}")
    return float(p)


def bernoulli(seed, shape, p) -> tf.Tensor:
    """bool samples that are True with probability ``p`` (a bool or a number in 0..1).

    A uniform compared with ``p``: ``StatelessRandomBinomial`` has no XLA kernel.
    """
    p = float(p)
    if p <= 0.0:
        return tf.zeros(shape, tf.bool)
    if p >= 1.0:
        return tf.ones(shape, tf.bool)
    return uniform(shape, seed) < p


class Shared:
    """A drawn value that belongs to the whole batch (not one row per image), e.g. an order."""

    def __init__(self, value):
        self.value = value


def take_rows(params, rows: tf.Tensor):
    """``params`` (a :meth:`Augmenter.draw` nest) for the images ``rows`` of the batch."""
    if isinstance(params, Shared) or params is None:
        return params
    if isinstance(params, dict):
        return {k: take_rows(v, rows) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return type(params)(take_rows(v, rows) for v in params)
    if isinstance(params, (int, float)):
        return params
    return tf.gather(params, rows)


def to_float(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32)


def from_float(images: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Back to ``dtype``; integer types are rounded and clipped to their 0..255 range.

    Each op clips/rounds itself where imgaug does (e.g. Multiply floors), so this only
    guarantees a valid uint8 result for ops that never leave the range.
    """
    if dtype.is_integer:
        return tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), dtype)
    return tf.cast(images, dtype)


def quantize(images: tf.Tensor, dtype: tf.DType, rounding: str = "round") -> tf.Tensor:
    """Float pixels as an integer ``dtype`` would hold them (still float32).

    Args:
      images: float32 pixels.
      dtype: the caller's dtype; float dtypes leave ``images`` unchanged.
      rounding: ``"floor"`` (imgaug's lookup-table ops: Multiply, LinearContrast) or
        ``"round"``.
    """
    if not tf.as_dtype(dtype).is_integer:
        return images
    images = tf.clip_by_value(images, 0.0, 255.0)
    return tf.floor(images) if rounding == "floor" else tf.round(images)


class Augmenter:
    """A batched augmentation: ``aug(images, seed) -> images``.

    Subclasses implement :meth:`apply` on float32 ``[B, H, W, C]`` pixels in 0..255 with an
    int32 ``[2]`` seed, sampling their parameters per image from that seed; or, better, the
    two halves of it: :meth:`draw` (every random parameter, for the whole batch) and
    :meth:`render` (the pixel work, for any rows of it). Split ops let ``Sometimes`` and
    ``SomeOf`` render only the images they change while each image keeps its own draws.
    """

    # Whether a Sometimes/SomeOf should render only its chosen images (in chunks) rather than
    # every image and select. Measured under XLA on CPU at 64 px: for one op, even Affine,
    # gathering the subset and its parameters costs more than it saves (113 CPU-us per image
    # for all vs 147-166 for half); a whole chain (a combinator) gains 2-3x.
    SUBSET_PAYS = False

    # No Python control flow on tensors anywhere in augment/: autograph's rewriting of every
    # op's source, wherever a caller's function is converted (a tf.data map, a tf.function),
    # is pure cost (tracing original_net1 in a map took 37 CPU-s with it, 1.8 without).
    @tf.autograph.experimental.do_not_convert
    def __call__(self, images, seed):
        images = tf.convert_to_tensor(images)
        dtype = images.dtype
        out = self.apply(to_float(images), as_seed(seed))
        return from_float(out, dtype)

    def apply(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        shape = tuple(images.shape[1:])
        return self.render(images, self.draw(seed, tf.shape(images)[0], shape))

    def draw(self, seed: tf.Tensor, batch, shape: tuple):  # pragma: no cover
        """Every random parameter for a batch of ``batch`` images of static ``shape`` (H, W, C).

        Returns a nest (dicts, lists) of tensors whose first axis is the image, except values
        wrapped in :class:`Shared` (one for the whole batch, e.g. an op order).
        """
        raise NotImplementedError

    def render(self, images: tf.Tensor, params) -> tf.Tensor:  # pragma: no cover
        """The op on float32 ``images`` with ``params`` from :meth:`draw` (rows of it)."""
        raise NotImplementedError

    def can_split(self) -> bool:
        """True when :meth:`draw` and :meth:`render` are implemented (not just ``apply``)."""
        cls = type(self)
        return cls.draw is not Augmenter.draw and cls.render is not Augmenter.render

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"
