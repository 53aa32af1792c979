"""Gather-based resampling that XLA compiles: border modes, affine warps, separable resizes.

Why our own warp: ``ImageProjectiveTransformV2/V3`` (and so ``keras.ops.image.affine_transform``
and Keras' random geometric layers) have no XLA kernel, and bicubic/area resizes do not compile
either. Every resample here is "compute integer source taps + weights, remap the taps through a
border mode, gather from the flattened batch, blend", which is a handful of elementwise ops and
``tf.gather`` calls: it compiles, runs in ``tf.data``, and lets each image have its own
interpolation order, border mode and fill colour.

Semantics follow OpenCV, which imgaug 0.4 uses for ``Affine`` (``cv2.warpAffine``) and for the
resize inside ``CropAndPad`` (``cv2.resize``):

* border modes (``PAD_MODES``) are applied per tap, exactly like ``cv2.borderInterpolate``:
  ``edge`` = BORDER_REPLICATE, ``reflect`` = BORDER_REFLECT_101 (numpy ``reflect``),
  ``symmetric`` = BORDER_REFLECT (numpy ``symmetric``), ``wrap`` = BORDER_WRAP; ``constant``
  taps outside the image take the fill value, so edges blend image and fill like cv2 does;
* nearest neighbour picks ``floor(x + 0.5)`` (cv2 rounds half up);
* bilinear weights are computed in float32. cv2 quantises sub-pixel positions to 1/32 px and
  uses fixed-point weights for uint8, so on uint8 images we differ from cv2 by at most a few
  grey levels where the image has sharp edges (never in geometry).
"""

from __future__ import annotations

import tensorflow as tf

PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")
MODE_CONSTANT, MODE_EDGE, MODE_REFLECT, MODE_SYMMETRIC, MODE_WRAP = range(5)


def mode_index(mode: str) -> int:
    """The integer code of a border mode name (an index into ``PAD_MODES``)."""
    if mode not in PAD_MODES:
        raise ValueError(f"unsupported border mode {mode!r}; expected one of {PAD_MODES}")
    return PAD_MODES.index(mode)


def remap_index(index, size, mode):
    """Maps integer coordinates that may lie outside ``[0, size)`` back into the image.

    Args:
      index: int32 tensor of coordinates, any shape.
      size: int32 axis length(s), broadcastable to ``index`` (may differ per image).
      mode: int32 border-mode codes (``PAD_MODES`` indices), broadcastable to ``index``; a
        Python int computes only that mode's remapping.

    Returns:
      ``(inside, valid)``: int32 coordinates in ``[0, size)`` and a bool mask that is False
      only for ``constant`` taps that fell outside (those take the fill value).
    """
    index = tf.cast(index, tf.int32)
    size = tf.maximum(tf.cast(size, tf.int32), 1)
    static = mode if isinstance(mode, int) else None
    in_range = (index >= 0) & (index < size)

    def clamped():
        return tf.clip_by_value(index, 0, size - 1)

    def symmetric():  # BORDER_REFLECT / numpy "symmetric": period 2n, ... c b a | a b c | c b a
        period = 2 * size
        m = tf.math.floormod(index, period)
        return tf.where(m >= size, period - 1 - m, m)

    def reflect():  # BORDER_REFLECT_101 / numpy "reflect": period 2n - 2, ... c b | a b c | b a
        period = tf.maximum(2 * size - 2, 1)
        m = tf.math.floormod(index, period)
        return tf.where(m >= size, period - m, m)

    def wrap():
        return tf.math.floormod(index, size)

    if static is not None:  # one branch only: cheaper when the caller knows the mode
        if static == MODE_CONSTANT:
            return clamped(), in_range
        branch = {MODE_EDGE: clamped, MODE_REFLECT: reflect, MODE_SYMMETRIC: symmetric,
                  MODE_WRAP: wrap}[static]
        return branch(), tf.ones_like(in_range)
    mode = tf.cast(mode, tf.int32)
    inside = tf.where(
        mode == MODE_WRAP, wrap(),
        tf.where(mode == MODE_SYMMETRIC, symmetric(),
                 tf.where(mode == MODE_REFLECT, reflect(), clamped())))
    valid = in_range | (mode != MODE_CONSTANT)
    return inside, valid


def materialize(value):
    """Returns ``value`` unchanged, computed once under XLA instead of once per pixel.

    XLA builds stateless random draws (Philox) from elementwise ops, and its loop fusion then
    recomputes the whole generator inside every consumer element: a per-image ``cval``
    broadcast into a whole-batch blend made Affine an order of magnitude slower (README,
    "Augmentation"). A reduction is never duplicated into its consumers, so a max over
    ``[value, lowest]`` pins the small parameter tensor in memory at no real cost.
    """
    value = tf.convert_to_tensor(value)
    dtype = value.dtype
    work = tf.cast(value, tf.int32) if dtype == tf.bool else value
    lowest = tf.fill(tf.shape(work), tf.constant(work.dtype.min, work.dtype))
    if work.dtype.is_floating:
        lowest = tf.fill(tf.shape(work), tf.constant(-float("inf"), work.dtype))
    out = tf.reduce_max(tf.stack([work, lowest], axis=-1), axis=-1)
    return tf.cast(out, tf.bool) if dtype == tf.bool else out


def gather_blend(images, taps, fill):
    """Sum of ``weight * pixel`` over taps, the missing weight filled with ``fill``.

    Args:
      images: float32 ``[B, H, W, C]`` (static H, W).
      taps: list of ``(y, x, weight, valid)``, each ``[B, h, w]`` (int32, int32, f32, bool).
      fill: float32 ``[B, C]`` or ``[B, 1]`` fill colour for invalid taps.
    """
    height, width = images.shape[1], images.shape[2]
    batch = tf.shape(images)[0]
    flat = tf.reshape(images, [-1, tf.shape(images)[3]])
    base = tf.reshape(tf.range(batch, dtype=tf.int32) * (height * width), [-1, 1, 1])
    out = None
    total = None
    for y, x, weight, valid in taps:
        w = weight * tf.cast(valid, tf.float32)
        pixels = tf.gather(flat, base + y * width + x)
        term = pixels * w[..., None]
        out = term if out is None else out + term
        total = w if total is None else total + w
    return out + (1.0 - total)[..., None] * fill[:, None, None, :]


def invert_affine(matrix):
    """Closed-form inverse of ``[B, 3, 3]`` affine matrices (last row 0 0 1).

    Written out rather than ``tf.linalg.inv`` so it is exact for axis-aligned matrices and
    cheap and XLA-friendly for any batch.
    """
    matrix = tf.cast(matrix, tf.float32)
    a, b, tx = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2]
    c, d, ty = matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    zeros, ones = tf.zeros_like(a), tf.ones_like(a)
    return tf.stack([tf.stack([ia, ib, itx], -1),
                     tf.stack([ic, id_, ity], -1),
                     tf.stack([zeros, zeros, ones], -1)], axis=1)


def warp_affine(images, matrix, order=1, mode=MODE_CONSTANT, cval=0.0):
    """Resamples each image once through its forward affine ``matrix`` (cv2.warpAffine).

    Args:
      images: float32 ``[B, H, W, C]`` with static H and W; B may be dynamic.
      matrix: float32 ``[B, 3, 3]`` mapping source pixel ``(x, y, 1)`` to output pixel,
        pixel centres at integer coordinates (imgaug's convention). Inverted here; every
        output pixel samples the source at ``matrix^-1 @ (x, y, 1)``.
      order: 0 (nearest) or 1 (bilinear); a Python int selects one path statically (nearest
        then needs a single gather), a ``[B]`` tensor chooses per image.
      mode: border mode code(s), a Python int (static, cheapest) or ``[B]`` int tensor
        (``PAD_MODES`` indices).
      cval: fill value(s) for ``constant``: a number, ``[B]`` or ``[B, C]``.

    Returns:
      float32 ``[B, H, W, C]``.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError("warp_affine needs static height and width")
    batch = tf.shape(images)[0]
    inv = materialize(invert_affine(matrix))  # else XLA redoes sin/cos/inverse per pixel
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32),
                         tf.range(width, dtype=tf.float32), indexing="ij")
    xs, ys = xs[None], ys[None]
    row = lambda i, j: inv[:, i, j][:, None, None]  # noqa: E731
    src_x = row(0, 0) * xs + row(0, 1) * ys + row(0, 2)
    src_y = row(1, 0) * xs + row(1, 1) * ys + row(1, 2)
    if not isinstance(mode, int):
        mode = tf.reshape(tf.broadcast_to(tf.cast(mode, tf.int32), [batch]), [-1, 1, 1])
    fill = _fill(cval, batch)

    if isinstance(order, int) and order == 0:
        yi, vy = remap_index(tf.cast(tf.floor(src_y + 0.5), tf.int32), height, mode)
        xi, vx = remap_index(tf.cast(tf.floor(src_x + 0.5), tf.int32), width, mode)
        return gather_blend(images, [(yi, xi, tf.ones_like(src_x), vy & vx)], fill)
    if isinstance(order, int) and order != 1:
        raise ValueError(f"order must be 0 or 1, got {order}")
    # Bilinear; per-image nearest collapses to weights (1, 0, 0, 0) at the rounded tap.
    fx0 = tf.floor(src_x)
    fy0 = tf.floor(src_y)
    fx = src_x - fx0
    fy = src_y - fy0
    if not isinstance(order, int):
        nearest = tf.reshape(tf.cast(order, tf.int32) == 0, [-1, 1, 1])
        fx0 = tf.where(nearest, tf.floor(src_x + 0.5), fx0)
        fy0 = tf.where(nearest, tf.floor(src_y + 0.5), fy0)
        fx = tf.where(nearest, 0.0, fx)
        fy = tf.where(nearest, 0.0, fy)
    x0 = tf.cast(fx0, tf.int32)
    y0 = tf.cast(fy0, tf.int32)
    xa, vxa = remap_index(x0, width, mode)
    xb, vxb = remap_index(x0 + 1, width, mode)
    ya, vya = remap_index(y0, height, mode)
    yb, vyb = remap_index(y0 + 1, height, mode)
    taps = [(ya, xa, (1 - fy) * (1 - fx), vya & vxa), (ya, xb, (1 - fy) * fx, vya & vxb),
            (yb, xa, fy * (1 - fx), vyb & vxa), (yb, xb, fy * fx, vyb & vxb)]
    return gather_blend(images, taps, fill)


def _fill(cval, batch):
    """``cval`` as float32 ``[B, C or 1]``."""
    cval = tf.cast(tf.convert_to_tensor(cval), tf.float32)
    if cval.shape.rank == 0:
        return tf.fill([batch, 1], cval)
    if cval.shape.rank == 1:
        return cval[:, None]
    return cval


def resize_taps(out_size: int, in_size, area):
    """Per-output source taps of cv2.resize along one axis, for a per-image input length.

    cv2.resize (and so imgaug's ``imresize_single_image``) uses INTER_LINEAR, sampling at
    ``(d + 0.5) * in / out - 0.5`` with replicated borders (= ``tf.image.resize`` bilinear),
    or, for INTER_AREA when it enlarges, the pixel-area weights: output pixel ``d`` covers
    ``[d * in / out, (d + 1) * in / out]`` and takes the share of that span lying in each of
    the (at most two) source pixels. The area weights are computed with integer arithmetic.

    Args:
      out_size: static output length.
      in_size: int32 ``[B]`` input lengths.
      area: bool ``[B]``; True selects cv2's INTER_AREA coefficients.

    Returns:
      ``(i0, i1, w1)``, each ``[B, out_size]``: taps clamped to ``[0, in)``, and the weight of
      ``i1`` (``i0`` gets ``1 - w1``).
    """
    in_size = tf.cast(tf.reshape(in_size, [-1, 1]), tf.int32)
    area = tf.reshape(area, [-1, 1])
    d = tf.range(out_size, dtype=tf.int32)[None]
    in_f = tf.cast(in_size, tf.float32)
    u = (tf.cast(d, tf.float32) + 0.5) * in_f / out_size - 0.5
    lin0 = tf.floor(u)
    lin_w = u - lin0
    area0 = (d * in_size) // out_size
    over = (d + 1) * in_size - (area0 + 1) * out_size  # = in * ((d+1) - (s+1) * out / in)
    frac = tf.cast(tf.maximum(over, 0), tf.float32) / in_f
    area_w = frac - tf.floor(frac)
    i0 = tf.where(area, area0, tf.cast(lin0, tf.int32))
    w1 = tf.where(area, area_w, lin_w)
    return (tf.clip_by_value(i0, 0, in_size - 1), tf.clip_by_value(i0 + 1, 0, in_size - 1), w1)
