"""Pixel-value ops of imgaug 0.4, batched: blur, coarse dropout, multiply, contrast, noise.

Each op exists twice:

* a deterministic function (``gaussian_blur``, ``coarse_dropout``, ``multiply``,
  ``linear_contrast``, ``additive_noise``) that takes the batch and explicit per-image
  parameters in imgaug's units, so its arithmetic can be tested against a definition;
* a random :class:`~augment.core.Augmenter` (``GaussianBlur``, ``CoarseDropout``,
  ``Multiply``, ``LinearContrast``/``ContrastNormalization``, ``AdditiveGaussianNoise``)
  that samples those parameters per image from a stateless seed and calls the function.

Integer (uint8) results follow imgaug's rounding: ``Multiply`` and ``LinearContrast`` build
their uint8 lookup tables with ``astype(uint8)``, i.e. they *floor*; blur (cv2) and additive
noise (noise rounded before adding) *round*. Float inputs are clipped to 0..255 but never
rounded. The class attribute ``ROUNDING`` says which, so combinators can quantise after every
op of a chain exactly as an all-uint8 imgaug pipeline does.

The two value maps (``Multiply``, ``LinearContrast``) are bit-identical to imgaug's float32
lookup tables eagerly and under XLA (:func:`contrast_values` says what XLA would change).

Parameters follow imgaug's grammar (:mod:`augment.params`): a number, ``(a, b)``, or a list.

Everything here compiles under ``tf.function(jit_compile=True)``: no binomial sampler, no
dynamic shapes (per-image sizes become index arithmetic on a static maximum grid).
"""

from __future__ import annotations

import statistics

import numpy as np
import tensorflow as tf

from augment import params
from augment.core import (Augmenter, as_seed, bernoulli, check_probability, fold_seed,
                          from_float, quantize, split_seed, to_float, uniform,
                          xla_safe_seed)

# --------------------------------------------------------------------------------------------
# dtype helpers


def _finish(out: tf.Tensor, dtype: tf.DType, rounding: str) -> tf.Tensor:
    return from_float(quantize(out, dtype, rounding), dtype)


class PixelAugmenter(Augmenter):
    """An Augmenter whose integer results use imgaug's rounding (``ROUNDING``)."""

    ROUNDING = "round"

    @tf.autograph.experimental.do_not_convert
    def __call__(self, images, seed):
        images = tf.convert_to_tensor(images)
        return _finish(self.apply(to_float(images), as_seed(seed)), images.dtype, self.ROUNDING)


# --------------------------------------------------------------------------------------------
# parameter sampling


_NORMAL_TABLE = None


def _normal_table() -> np.ndarray:
    """Inverse normal CDF at the 65536 bin centres ``(i + 0.5) / 65536`` (tails cut at 4.3)."""
    global _NORMAL_TABLE
    if _NORMAL_TABLE is None:
        dist = statistics.NormalDist()
        _NORMAL_TABLE = np.array([dist.inv_cdf((i + 0.5) / 65536) for i in range(65536)],
                                 np.float32)
    return _NORMAL_TABLE


def normal(seed, shape) -> tf.Tensor:
    """float32 N(0, 1) samples: 16 random bits each, mapped through an inverse-CDF table.

    Why a table: under XLA on CPU ``tf.random.stateless_normal`` and a Box-Muller transform
    fuse their transcendentals into the generator and run orders of magnitude slower than a
    gather (README, "Augmentation"); a table lookup is also bit-identical eagerly and under
    XLA, which ``stateless_normal`` is not. Two samples per 32-bit draw; the 2^16 levels are
    far finer than a pixel's quantisation.
    """
    shape = tf.cast(shape, tf.int32)
    count = tf.reduce_prod(shape)
    bits = tf.random.stateless_uniform([(count + 1) // 2], xla_safe_seed(seed), minval=None,
                                       maxval=None, dtype=tf.uint32, alg="philox")
    index = tf.concat([tf.bitwise.right_shift(bits, 16), tf.bitwise.bitwise_and(bits, 0xFFFF)],
                      axis=0)
    values = tf.gather(tf.constant(_normal_table()), tf.cast(index[:count], tf.int32))
    return tf.reshape(values, shape)


def sample_per_channel(seed, batch: int | tf.Tensor, channels: int, spec, per_channel) -> tf.Tensor:
    """``[B, C]`` values of ``spec``: per channel for a ``per_channel`` fraction of images.

    imgaug decides per image (probability ``per_channel``) whether to draw one value per
    channel or one for the whole image; here both are drawn and the choice selects.
    """
    s_val, s_pc = tf.unstack(split_seed(seed, 2))
    values = params.sample(s_val, [batch, channels], spec)
    per_ch = bernoulli(s_pc, [batch, 1], per_channel)
    return tf.where(per_ch, values, values[:, :1])


def _static_channels(shape) -> int:
    if shape[-1] is None:
        raise ValueError("augment ops need a static channel count")
    return int(shape[-1])


def _dim(images: tf.Tensor, axis: int):
    """A static size when known (XLA needs one), else a scalar tensor."""
    d = images.shape[axis]
    return int(d) if d is not None else tf.shape(images)[axis]


# --------------------------------------------------------------------------------------------
# Multiply, LinearContrast, AdditiveGaussianNoise


def _per_image(values: tf.Tensor) -> tf.Tensor:
    """``[B]`` or ``[B, C]`` parameters broadcast against ``[B, H, W, C]``."""
    values = tf.convert_to_tensor(values, tf.float32)
    if values.shape.rank == 1:
        values = values[:, None]
    return values[:, None, None, :]


def multiply_values(values: tf.Tensor, mul: tf.Tensor) -> tf.Tensor:
    """``clip(v * mul, 0, 255)`` in float32: imgaug's uint8 table before ``astype(uint8)``.

    One rounding (the product), so eager and XLA agree without further care.
    """
    return tf.clip_by_value(values * mul, 0.0, 255.0)


def _split_factor(factor: tf.Tensor):
    """``factor = high + low`` exactly, ``high`` keeping the top 16 significant bits.

    Both parts times an integer of at most 8 significant bits (``v - 127`` for a uint8 ``v``)
    are exact float32 products; see :func:`contrast_values`.
    """
    bits = tf.bitcast(tf.convert_to_tensor(factor, tf.float32), tf.int32)
    high = tf.bitcast(tf.bitwise.bitwise_and(bits, tf.constant(-256, tf.int32)), tf.float32)
    return high, factor - high


def contrast_values(values: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """``clip(127 + alpha * (v - 127), 0, 255)`` rounded exactly as imgaug's float32 table.

    imgaug rounds the product to float32, then adds 127. XLA (CPU and GPU) contracts
    ``127 + alpha * d`` into one fused multiply-add with a single rounding, which moves a few
    uint8 results by one grey level. Writing ``alpha * d`` as ``high * d + low * d`` with both
    products exact (``high`` has 16 significant bits, ``low`` the other 8, ``d`` is an integer
    of at most 8) makes the sum the correctly rounded product whether or not it is fused, and
    the outer ``127 + ...`` has no product left to fuse with. Non-integer float inputs are
    computed to float32 accuracy (imgaug uses float64 there; they are never rounded).
    """
    d = values - 127.0
    high, low = _split_factor(alpha)
    return tf.clip_by_value(127.0 + (high * d + low * d), 0.0, 255.0)


def multiply(images, mul) -> tf.Tensor:
    """``clip(v * mul)``; uint8 results floored like imgaug's lookup table.

    Args:
      images: ``[B, H, W, C]`` uint8 or float pixels in 0..255.
      mul: ``[B]`` (one per image) or ``[B, C]`` (per channel) multipliers.
    Returns:
      The images in their own dtype.
    """
    images = tf.convert_to_tensor(images)
    return _finish(multiply_values(to_float(images), _per_image(mul)), images.dtype, "floor")


def linear_contrast(images, alpha) -> tf.Tensor:
    """``clip(127 + alpha * (v - 127))``; uint8 floored (imgaug's uint8 LUT, pivot int(127.5)).

    Args:
      images: ``[B, H, W, C]`` uint8 or float pixels in 0..255.
      alpha: ``[B]`` or ``[B, C]`` contrast factors.
    """
    images = tf.convert_to_tensor(images)
    return _finish(contrast_values(to_float(images), _per_image(alpha)), images.dtype, "floor")


def additive_noise(images, noise) -> tf.Tensor:
    """``clip(v + noise)``; uint8 rounded (imgaug rounds the noise, adds, clips).

    Args:
      images: ``[B, H, W, C]`` pixels.
      noise: ``[B, H, W, 1]`` (same noise on every channel) or ``[B, H, W, C]``.
    """
    images = tf.convert_to_tensor(images)
    out = tf.clip_by_value(to_float(images) + tf.cast(noise, tf.float32), 0.0, 255.0)
    return _finish(out, images.dtype, "round")


class Multiply(PixelAugmenter):
    """imgaug ``Multiply(mul, per_channel)``: a multiplier of ``mul`` per image (or channel).

    Args:
      mul: a number, ``(a, b)`` (uniform) or a list (one of them), per image.
      per_channel: bool, or the fraction of images that draw one multiplier per channel.
    """

    ROUNDING = "floor"

    def __init__(self, mul=(0.8, 1.2), per_channel=False):
        self.mul = params.check(mul, "Multiply mul")
        self.per_channel = check_probability(per_channel, "Multiply per_channel")

    def draw(self, seed, batch, shape):
        return {"mul": sample_per_channel(seed, batch, _static_channels(shape), self.mul,
                                          self.per_channel)}

    def render(self, images, params):
        return multiply_values(images, _per_image(params["mul"]))


class LinearContrast(PixelAugmenter):
    """imgaug ``LinearContrast(alpha, per_channel)`` (= ``ContrastNormalization``), pivot 127.

    Args:
      alpha: a number, ``(a, b)`` (uniform) or a list (one of them), per image.
      per_channel: bool, or the fraction of images that draw one alpha per channel.
    """

    ROUNDING = "floor"

    def __init__(self, alpha=(0.6, 1.4), per_channel=False):
        self.alpha = params.check(alpha, "LinearContrast alpha")
        self.per_channel = check_probability(per_channel, "LinearContrast per_channel")

    def draw(self, seed, batch, shape):
        return {"alpha": sample_per_channel(seed, batch, _static_channels(shape), self.alpha,
                                            self.per_channel)}

    def render(self, images, params):
        return contrast_values(images, _per_image(params["alpha"]))


ContrastNormalization = LinearContrast


class AdditiveGaussianNoise(PixelAugmenter):
    """imgaug ``AdditiveGaussianNoise(loc=0, scale, per_channel)``: ``v + N(loc, scale)``.

    ``loc`` and ``scale`` are a number, ``(a, b)`` or a list, drawn per image. With
    ``per_channel`` false (imgaug's default) one noise value per pixel is shared by all
    channels; a float is the fraction of images that get independent noise per channel.
    """

    def __init__(self, loc=0, scale=0.05 * 255, per_channel=False):
        self.loc = params.check(loc, "AdditiveGaussianNoise loc")
        self.scale = params.check(scale, "AdditiveGaussianNoise scale", low=0)
        self.per_channel = check_probability(per_channel, "AdditiveGaussianNoise per_channel")

    def draw(self, seed, batch, shape):
        """The noise itself, whole batch: its layout in the generator depends on the batch."""
        s_scale, s_noise, s_pc = tf.unstack(split_seed(seed, 3))
        scale = params.sample(s_scale, [batch], self.scale)
        channels = _static_channels(shape) if self.per_channel else 1
        noise = normal(s_noise, tf.stack([batch, shape[0], shape[1], channels]))
        if self.per_channel:
            shared = bernoulli(s_pc, [batch], self.per_channel)
            noise = tf.where(shared[:, None, None, None], noise, noise[..., :1])
        noise = noise * scale[:, None, None, None]
        if self.loc != 0:  # a draw only where imgaug's default loc=0 is changed
            loc = params.sample(fold_seed(s_scale, 1), [batch], self.loc)
            noise = noise + loc[:, None, None, None]
        return {"noise": noise}

    def render(self, images, params):
        return tf.clip_by_value(images + params["noise"], 0.0, 255.0)


# --------------------------------------------------------------------------------------------
# GaussianBlur


def blur_kernel_size(sigma):
    """imgaug's kernel size for ``sigma`` (a Python float): 3.3/2.9/2.6 sigma, >= 5, odd."""
    factor = 3.3 if sigma < 3.0 else (2.9 if sigma < 5.0 else 2.6)
    ksize = int(max(factor * sigma, 5))
    return ksize + 1 if ksize % 2 == 0 else ksize


def max_blur_kernel_size(sigma_max: float) -> int:
    """The largest kernel any sigma in ``[0, sigma_max]`` gets (the rule is not monotonic)."""
    candidates = [sigma_max] + [s for s in (np.nextafter(3.0, 0), np.nextafter(5.0, 0))
                                if s < sigma_max]
    return max(blur_kernel_size(float(s)) for s in candidates)


def _kernel_size_tf(sigma: tf.Tensor) -> tf.Tensor:
    """Per-image int32 kernel sizes, the same rule as :func:`blur_kernel_size`."""
    factor = tf.where(sigma < 3.0, 3.3, tf.where(sigma < 5.0, 2.9, 2.6))
    ksize = tf.cast(tf.maximum(factor * sigma, 5.0), tf.int32)
    return ksize + 1 - ksize % 2


def gaussian_taps(sigma, max_ksize: int, eps: float = 1e-3) -> tf.Tensor:
    """``[B, max_ksize]`` 1-D kernels: each image's own imgaug kernel, zero-padded.

    Taps outside an image's own radius are zero and the rest renormalised, so a batch shares
    one static kernel width yet each image is blurred exactly as cv2 would with its own
    ``ksize``. ``sigma <= eps`` gives the identity kernel (imgaug skips the blur).
    """
    sigma = tf.convert_to_tensor(sigma, tf.float32)
    radius = max_ksize // 2
    t = tf.range(-radius, radius + 1, dtype=tf.float32)[None, :]
    own_radius = tf.cast(_kernel_size_tf(sigma) // 2, tf.float32)[:, None]
    safe = tf.maximum(sigma, eps)[:, None]
    w = tf.exp(-(t * t) / (2.0 * safe * safe)) * tf.cast(tf.abs(t) <= own_radius, tf.float32)
    w = w / tf.reduce_sum(w, axis=1, keepdims=True)
    identity = tf.cast(tf.equal(t, 0.0), tf.float32)
    return tf.where((sigma <= eps)[:, None], identity, w)


def reflect101_index(idx: np.ndarray, size: int) -> np.ndarray:
    """Indices mirrored at the border without repeating the edge (cv2 BORDER_REFLECT_101)."""
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * (size - 1)
    m = np.mod(idx, period)
    return np.where(m > size - 1, period - m, m)


def _reflect_onehot(size: int, ksize: int) -> np.ndarray:
    """``[size, ksize, size]``: one-hot of the source pixel of tap ``t`` for output ``y``."""
    radius = ksize // 2
    src = reflect101_index(np.arange(size)[:, None] + np.arange(-radius, radius + 1)[None, :],
                           size)
    return np.eye(size, dtype=np.float32)[src]


def blur_matrices(taps: tf.Tensor, size: int) -> tf.Tensor:
    """``[B, size, size]`` banded matrices: ``out = M @ column`` is the reflect-101 blur."""
    onehot = tf.constant(_reflect_onehot(size, int(taps.shape[-1])))
    return tf.einsum("bt,ytx->byx", taps, onehot)


def gaussian_blur(images, sigma, max_ksize: int | None = None) -> tf.Tensor:
    """Separable Gaussian blur with per-image ``sigma``, as imgaug/cv2 do it.

    Implemented as two banded matrix products per image (``M_h @ img @ M_w^T``), the
    reflect-101 border folded into the matrices: on CPU under XLA this is faster than shifted
    slices or ``depthwise_conv2d`` (``python -m benchmarks.augment --blur``; README).

    Args:
      images: ``[B, H, W, C]`` uint8 or float pixels (H, W static).
      sigma: ``[B]`` standard deviations in pixels.
      max_ksize: the static kernel width; default: the largest kernel of ``max(sigma)``
        (only possible eagerly), pass :func:`max_blur_kernel_size` of the range otherwise.
    """
    images = tf.convert_to_tensor(images)
    if max_ksize is None:
        max_ksize = max_blur_kernel_size(float(np.max(np.asarray(sigma))))
    out = _blur_float(to_float(images), tf.convert_to_tensor(sigma, tf.float32), max_ksize)
    return _finish(out, images.dtype, "round")


def _blur_float(images: tf.Tensor, sigma: tf.Tensor, max_ksize: int) -> tf.Tensor:
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError("GaussianBlur needs static image height and width")
    taps = gaussian_taps(sigma, max_ksize)
    m_h = blur_matrices(taps, int(height))
    m_w = m_h if width == height else blur_matrices(taps, int(width))
    out = tf.einsum("byh,bhwc->bywc", m_h, images)
    return tf.einsum("bxw,bywc->byxc", m_w, out)


class GaussianBlur(PixelAugmenter):
    """imgaug ``GaussianBlur(sigma)``: a sigma per image, identity at sigma <= 1e-3.

    Args:
      sigma: a number, ``(a, b)`` (uniform) or a list (one of them), in pixels, >= 0.
    """

    def __init__(self, sigma=(0.0, 3.0)):
        self.sigma = params.check(sigma, "GaussianBlur sigma", low=0)
        self._max_ksize = max_blur_kernel_size(float(max(params.values(sigma))))

    def draw(self, seed, batch, shape):
        return {"sigma": params.sample(seed, [batch], self.sigma)}

    def render(self, images, params):
        return _blur_float(images, params["sigma"], self._max_ksize)


# --------------------------------------------------------------------------------------------
# CoarseDropout


def low_res_size(fraction: tf.Tensor, size: int, min_size: int = 3) -> tf.Tensor:
    """imgaug ``FromLowerResolution``: ``max(int(fraction * size), min_size)`` (int32)."""
    return tf.maximum(tf.cast(fraction * float(size), tf.int32), min_size)


def nearest_cells(low: tf.Tensor, size: int) -> tf.Tensor:
    """``[B, size]`` low-res cell of each full-res pixel: ``floor(y * low / size)``.

    Nearest-neighbour upsampling of a ``low``-cell mask, in exact integer arithmetic.
    """
    return (tf.range(size, dtype=tf.int32)[None, :] * low[:, None]) // size


def coarse_dropout(images, keep_low, h_low, w_low) -> tf.Tensor:
    """Multiply by a low-resolution keep mask, nearest-upsampled per image.

    Args:
      images: ``[B, H, W, C]`` pixels (H, W static).
      keep_low: ``[B, Hmax, Wmax, C or 1]`` 0/1 (or bool) keep mask on a grid at least as
        large as every image's own; image ``b`` uses its top-left ``h_low[b] x w_low[b]``.
      h_low, w_low: ``[B]`` int32 low-resolution mask sizes.
    """
    images = tf.convert_to_tensor(images)
    out = to_float(images) * _upsample_mask(tf.cast(keep_low, tf.float32),
                                            tf.convert_to_tensor(h_low, tf.int32),
                                            tf.convert_to_tensor(w_low, tf.int32),
                                            int(images.shape[1]), int(images.shape[2]))
    return _finish(out, images.dtype, "round")


def _upsample_mask(keep_low, h_low, w_low, height: int, width: int) -> tf.Tensor:
    rows = nearest_cells(h_low, height)
    cols = nearest_cells(w_low, width)
    h_max, w_max = keep_low.shape[1], keep_low.shape[2]
    if h_max is None or w_max is None or h_max * w_max > _MAX_SELECT_CELLS:
        mask = tf.gather(keep_low, rows, axis=1, batch_dims=1)
        return tf.gather(mask, cols, axis=2, batch_dims=1)
    # Small grids (imgaug's 2-7 % of 64 px is 3x3 or 4x4): a sum of one-hot products fuses
    # into one elementwise loop; two batched gathers are slower under XLA on CPU (README).
    mask = 0.0
    for i in range(h_max):
        row_i = tf.cast(tf.equal(rows, i), tf.float32)[:, :, None, None]
        inner = 0.0
        for j in range(w_max):
            col_j = tf.cast(tf.equal(cols, j), tf.float32)[:, None, :, None]
            inner += col_j * keep_low[:, i, j][:, None, None, :]
        mask += row_i * inner
    return mask


_MAX_SELECT_CELLS = 36


class CoarseDropout(PixelAugmenter):
    """imgaug ``CoarseDropout(p, size_percent, per_channel, min_size=3)``.

    Per image: a drop probability of ``p``; mask height and width from their own draws of
    ``size_percent``; per-channel masks for a ``per_channel`` fraction of images. The cells
    are drawn on the largest grid the spec allows and each image reads its own corner.

    Args:
      p: drop probability in ``[0, 1]``: a number, ``(a, b)`` or a list.
      size_percent: mask size as a fraction of H and W in ``(0, 1]``: a number, ``(a, b)`` or
        a list, drawn separately for height and width.
      per_channel: bool, or the fraction of images with one mask per channel.
      min_size: the smallest mask side in cells (imgaug: 3).
    """

    def __init__(self, p=(0.02, 0.1), size_percent=(0.02, 0.05), per_channel=False,
                 min_size=3):
        self.p = params.check(p, "CoarseDropout p", low=0, high=1)
        self.size_percent = params.check(size_percent, "CoarseDropout size_percent", low=0,
                                         high=1)
        self.per_channel = check_probability(per_channel, "CoarseDropout per_channel")
        if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
            raise ValueError(f"CoarseDropout min_size: expected an int >= 1, got {min_size!r}")
        self.min_size = min_size

    def draw(self, seed, batch, shape):
        height, width, channels = shape
        if height is None or width is None:
            raise ValueError("CoarseDropout needs static image height and width")
        height, width, channels = int(height), int(width), _static_channels(shape)
        s_p, s_size, s_pc, s_cells = tf.unstack(split_seed(seed, 4))
        p = params.sample(s_p, [batch], self.p)
        frac = params.sample(s_size, [batch, 2], self.size_percent)
        h_low = low_res_size(frac[:, 0], height, self.min_size)
        w_low = low_res_size(frac[:, 1], width, self.min_size)
        hi = max(params.values(self.size_percent))
        h_max = max(int(float(hi) * height), self.min_size)
        w_max = max(int(float(hi) * width), self.min_size)
        cells = uniform([batch, h_max, w_max, channels], s_cells)
        keep = tf.cast(cells >= p[:, None, None, None], tf.float32)
        per_ch = bernoulli(s_pc, [batch, 1, 1, 1], self.per_channel)
        return {"keep": tf.where(per_ch, keep, keep[..., :1]), "h_low": h_low, "w_low": w_low}

    def render(self, images, params):
        height, width = int(images.shape[1]), int(images.shape[2])
        return images * _upsample_mask(params["keep"], params["h_low"], params["w_low"],
                                       height, width)
