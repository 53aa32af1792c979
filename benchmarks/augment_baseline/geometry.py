"""Geometric augmentations with imgaug 0.4 semantics: flips, CropAndPad, Affine.

Each op exists twice:

* a deterministic function taking the batch and explicit per-image parameters in imgaug's units
  (``fliplr``, ``flipud``, ``crop_and_pad``, ``affine``), which the tests check against
  independent numpy references; and
* a random :class:`~augment.core.Augmenter` (``Fliplr``, ``Flipud``, ``CropAndPad``,
  ``Affine``) that samples those parameters per image from a stateless int32 ``[2]`` seed
  (``sample_params``) and calls the function.

All of it is batched TensorFlow (no Python per image), compiles with
``tf.function(jit_compile=True)``, runs inside ``tf.data``, accepts a dynamic batch size and
needs static H and W.

Fusing: flips, CropAndPad (approximately, see :meth:`CropAndPad.sample_matrix`) and Affine are
all affine maps, so each class offers ``sample_matrix(seed, batch, height, width) -> [B, 3, 3]``
(forward, source pixel -> output pixel) drawn from the same seed split as ``apply``; compose them
with :func:`compose` (later op on the left) and resample once with
:func:`augment.warp.warp_affine`, or use :class:`FusedGeometry`.

Randomness is XLA-safe: TF 2.21 gives different stateless draws under ``jit_compile=True``
than eagerly for float dtypes and for seeds with negative parts, so every draw here goes
through :func:`xla_safe_seed` and :func:`uniform` / :func:`uniform_int`; sampled parameters
pass through :func:`materialize` so XLA does not regenerate them once per pixel.

Deviations from imgaug 0.4, all forced by XLA or deliberate:

* Affine ``order`` supports 0 and 1 only (no cubic: XLA has no bicubic). imgaug's default is 1.
* Sub-pixel positions and weights are float32; cv2 quantises to 1/32 px with fixed-point
  weights, so uint8 results can differ by a few grey levels at sharp edges.
* CropAndPad ``pad_mode`` supports constant, edge, reflect, symmetric, wrap; imgaug's ``ALL``
  also includes linear_ramp, maximum, mean, median, minimum, which we leave out (``"ALL"`` here
  means our five). Only ``keep_size=True`` (imgaug's default) is supported: a batch keeps one
  shape.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from benchmarks.augment_baseline import core, params
from benchmarks.augment_baseline.core import uniform, uniform_int, xla_safe_seed
from benchmarks.augment_baseline.params import ALL
from benchmarks.augment_baseline.warp import (MODE_CONSTANT, PAD_MODES, gather_blend, invert_affine,
                                   materialize, remap_index, resize_taps, warp_affine)

__all__ = [
    "PAD_MODES", "fliplr", "flipud", "crop_and_pad", "affine", "affine_matrix", "flip_matrix",
    "crop_and_pad_matrix", "compose", "warp_affine", "invert_affine", "Fliplr", "Flipud",
    "CropAndPad", "Affine", "FusedGeometry", "uniform",
    "uniform_int", "xla_safe_seed", "materialize",
]


# ----------------------------------------------------------------------------------------------
# Deterministic ops.

def _spatial(images):
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(f"geometric ops need static height and width, got {images.shape}")
    return height, width


def fliplr(images, flip_mask):
    """Mirrors left-right the images whose ``flip_mask`` ``[B]`` entry is True."""
    images = tf.convert_to_tensor(images)
    mask = tf.reshape(tf.cast(flip_mask, tf.bool), [-1, 1, 1, 1])
    return tf.where(mask, tf.reverse(images, axis=[2]), images)


def flipud(images, flip_mask):
    """Mirrors top-bottom the images whose ``flip_mask`` ``[B]`` entry is True."""
    images = tf.convert_to_tensor(images)
    mask = tf.reshape(tf.cast(flip_mask, tf.bool), [-1, 1, 1, 1])
    return tf.where(mask, tf.reverse(images, axis=[1]), images)


def _prevent_zero_size(size, crop_a, crop_b):
    """imgaug's ``_crop_prevent_zero_size`` for one axis, vectorised: keep >= 1 pixel.

    When the two crops leave less than one pixel, imgaug gives back ``regain = 1 - remaining``
    pixels, half to each side (the odd one to the first side), moving any excess to the other
    side, and finally clips crops at 0.
    """
    remaining = size - (crop_a + crop_b)
    regain = tf.abs(remaining) + 1
    regain_a = regain // 2 + regain % 2
    regain_b = regain // 2
    over_a = regain_a > crop_a
    over_b = (~over_a) & (regain_b > crop_b)
    new_a = tf.where(over_a, crop_a, tf.where(over_b, regain_a + regain_b - crop_b, regain_a))
    new_b = tf.where(over_a, regain_b + regain_a - crop_a, tf.where(over_b, crop_b, regain_b))
    fix = remaining < 1
    crop_a = tf.where(fix, crop_a - new_a, crop_a)
    crop_b = tf.where(fix, crop_b - new_b, crop_b)
    return tf.maximum(crop_a, 0), tf.maximum(crop_b, 0)


def crop_and_pad_sizes(height, width, top, right, bottom, left):
    """Crops, pads and intermediate sizes for signed per-side pixel amounts.

    Returns a dict of int32 ``[B]`` tensors: ``crop_*``/``pad_*`` per side (after imgaug's
    at-least-one-pixel rule), ``crop_h/crop_w`` (cropped size) and ``inter_h/inter_w`` (size
    after padding, before the resize back to ``height x width``).
    """
    top, right, bottom, left = (tf.cast(v, tf.int32) for v in (top, right, bottom, left))
    crop_t, crop_b = _prevent_zero_size(height, tf.maximum(-top, 0), tf.maximum(-bottom, 0))
    # imgaug regains width pixels right side first: (crop_right, crop_left) order.
    crop_r, crop_l = _prevent_zero_size(width, tf.maximum(-right, 0), tf.maximum(-left, 0))
    pad_t, pad_r = tf.maximum(top, 0), tf.maximum(right, 0)
    pad_b, pad_l = tf.maximum(bottom, 0), tf.maximum(left, 0)
    crop_h = height - crop_t - crop_b
    crop_w = width - crop_l - crop_r
    return dict(crop_t=crop_t, crop_r=crop_r, crop_b=crop_b, crop_l=crop_l, pad_t=pad_t,
                pad_r=pad_r, pad_b=pad_b, pad_l=pad_l, crop_h=crop_h, crop_w=crop_w,
                inter_h=crop_h + pad_t + pad_b, inter_w=crop_w + pad_l + pad_r)


def crop_and_pad(images, top, right, bottom, left, pad_mode=MODE_CONSTANT, pad_cval=0.0,
                 interpolation="auto"):
    """imgaug's CropAndPad with ``keep_size=True`` on a batch, in one gather-based resample.

    Per image: crop ``-v`` pixels from each side with a negative amount ``v``, pad ``v`` pixels
    on each side with a positive one (``np.pad`` semantics of ``PAD_MODES[pad_mode]``, relative
    to the cropped image, constant value ``pad_cval``), then resize back to ``H x W`` like
    ``cv2.resize`` in imgaug: INTER_AREA when the intermediate image is smaller than ``H x W``
    along any axis (imgaug enlarges with "area"), else INTER_LINEAR. The intermediate image is
    never materialised: every output pixel's taps are mapped through the resize, the padding
    and the crop straight into the input.

    Args:
      images: float32 ``[B, H, W, C]`` (static H, W).
      top, right, bottom, left: int ``[B]`` signed pixel amounts (negative crops).
      pad_mode: int ``[B]`` or int, indices into ``PAD_MODES``.
      pad_cval: float ``[B]`` or number, one fill value per image for all channels.
      interpolation: ``"auto"`` (imgaug's rule), ``"linear"`` or ``"area"``.

    Returns:
      float32 ``[B, H, W, C]``.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = _spatial(images)
    batch = tf.shape(images)[0]
    s = crop_and_pad_sizes(height, width, top, right, bottom, left)
    mode = pad_mode
    if not isinstance(pad_mode, int):  # a Python int computes only that mode's remapping
        mode = tf.broadcast_to(tf.cast(pad_mode, tf.int32), [batch])[:, None]
    if interpolation == "auto":
        area = (s["inter_h"] < height) | (s["inter_w"] < width)
    elif interpolation in ("linear", "area"):
        area = tf.fill([batch], interpolation == "area")
    else:
        raise ValueError(f"interpolation must be 'auto', 'linear' or 'area', got {interpolation!r}")

    def axis_taps(out_size, inter, pad_before, crop_before, cropped):
        i0, i1, w1 = resize_taps(out_size, inter, area)
        out = []
        for idx in (i0, i1):
            inside, valid = remap_index(idx - pad_before[:, None], cropped[:, None], mode)
            # Pinned: else XLA recomputes these per-row/column maps once per output pixel.
            out.append((materialize(inside + crop_before[:, None]), materialize(valid)))
        return out, materialize(w1)

    (y0, y1), wy = axis_taps(height, s["inter_h"], s["pad_t"], s["crop_t"], s["crop_h"])
    (x0, x1), wx = axis_taps(width, s["inter_w"], s["pad_l"], s["crop_l"], s["crop_w"])
    wy, wx = wy[:, :, None], wx[:, None, :]
    taps = []
    for (yi, vy), wyi in ((y0, 1 - wy), (y1, wy)):
        for (xi, vx), wxi in ((x0, 1 - wx), (x1, wx)):
            taps.append((tf.broadcast_to(yi[:, :, None], [batch, height, width]),
                         tf.broadcast_to(xi[:, None, :], [batch, height, width]),
                         wyi * wxi, vy[:, :, None] & vx[:, None, :]))
    fill = tf.broadcast_to(tf.cast(pad_cval, tf.float32), [batch])[:, None]
    return gather_blend(images, taps, fill)


def affine_matrix(sx, sy, tx_px, ty_px, rotate_deg, shear_deg, height, width,
                  shear_y_deg=None):
    """imgaug 0.4's forward affine matrix (source pixel -> output pixel), ``[B, 3, 3]``.

    With ``c = (W/2 - 0.5, H/2 - 0.5)``, ``r`` the rotation and ``s`` the x-shear in radians:
    ``A = [[sx cos r, -sy sin(r + s)], [sx sin r, sy cos(r + s)]]`` (skimage's AffineTransform),
    ``Ry = [[cos s_y, 0], [sin s_y, 1]]`` (imgaug's y-shear: rotate -90, x-shear, rotate +90),
    ``L = A @ Ry`` and ``dst = L (src - c) + c + t``. ``shear_y_deg`` defaults to
    ``shear_deg``: imgaug uses one sample for both axes when ``shear`` is a tuple or list.
    Positive ``rotate_deg`` turns the image clockwise on screen (y points down).
    """
    f = lambda v: tf.reshape(tf.cast(v, tf.float32), [-1])  # noqa: E731
    sx, sy, tx, ty = f(sx), f(sy), f(tx_px), f(ty_px)
    r = f(rotate_deg) * (math.pi / 180.0)
    s = f(shear_deg) * (math.pi / 180.0)
    s_y = s if shear_y_deg is None else f(shear_y_deg) * (math.pi / 180.0)
    a00, a01 = sx * tf.cos(r), -sy * tf.sin(r + s)
    a10, a11 = sx * tf.sin(r), sy * tf.cos(r + s)
    cs, ss = tf.cos(s_y), tf.sin(s_y)
    l00, l01 = a00 * cs + a01 * ss, a01
    l10, l11 = a10 * cs + a11 * ss, a11
    cx, cy = width / 2.0 - 0.5, height / 2.0 - 0.5
    t0 = cx + tx - (l00 * cx + l01 * cy)
    t1 = cy + ty - (l10 * cx + l11 * cy)
    zeros, ones = tf.zeros_like(l00), tf.ones_like(l00)
    return tf.stack([tf.stack([l00, l01, t0], -1), tf.stack([l10, l11, t1], -1),
                     tf.stack([zeros, zeros, ones], -1)], axis=1)


def affine(images, matrix, order=1, mode=MODE_CONSTANT, cval=0.0):
    """imgaug's Affine (cv2 backend) for explicit forward matrices, one resample per image.

    Args:
      images: float32 ``[B, H, W, C]``.
      matrix: ``[B, 3, 3]`` forward matrices, e.g. from :func:`affine_matrix`.
      order: 0 nearest / 1 bilinear; int or ``[B]``.
      mode: ``PAD_MODES`` index, int or ``[B]``.
      cval: fill for ``constant``: number, ``[B]`` or ``[B, C]``.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    _spatial(images)
    return warp_affine(images, matrix, order=order, mode=mode, cval=cval)


def flip_matrix(flip_mask, size: int, axis: str):
    """Forward matrices ``[B, 3, 3]`` of a per-image mirror: ``x -> size - 1 - x`` (axis "x")."""
    flip = tf.cast(tf.reshape(flip_mask, [-1]), tf.float32)
    sign = 1.0 - 2.0 * flip
    shift = flip * (size - 1)
    zeros, ones = tf.zeros_like(flip), tf.ones_like(flip)
    if axis == "x":
        rows = [[sign, zeros, shift], [zeros, ones, zeros]]
    else:
        rows = [[ones, zeros, zeros], [zeros, sign, shift]]
    rows.append([zeros, zeros, ones])
    return tf.stack([tf.stack(r, -1) for r in rows], axis=1)


def crop_and_pad_matrix(height, width, top, right, bottom, left):
    """The affine part of CropAndPad: crop/pad shift then the resize back, ``[B, 3, 3]``.

    ``x_out = (x - crop_l + pad_l + 0.5) * W / W' - 0.5`` with ``W'`` the intermediate width.
    It ignores that imgaug pads relative to the *cropped* image and enlarges with area
    weights, so a fused chain matches :func:`crop_and_pad` only in the interior.
    """
    s = crop_and_pad_sizes(height, width, top, right, bottom, left)
    f = lambda v: tf.cast(v, tf.float32)  # noqa: E731
    kx = width / f(s["inter_w"])
    ky = height / f(s["inter_h"])
    tx = (f(s["pad_l"] - s["crop_l"]) + 0.5) * kx - 0.5
    ty = (f(s["pad_t"] - s["crop_t"]) + 0.5) * ky - 0.5
    zeros, ones = tf.zeros_like(kx), tf.ones_like(kx)
    return tf.stack([tf.stack([kx, zeros, tx], -1), tf.stack([zeros, ky, ty], -1),
                     tf.stack([zeros, zeros, ones], -1)], axis=1)


def compose(*matrices):
    """One forward matrix for ops applied left to right: ``compose(m1, m2) = m2 @ m1``."""
    out = matrices[0]
    for m in matrices[1:]:
        out = tf.linalg.matmul(m, out)
    return out


# ----------------------------------------------------------------------------------------------
# Random augmenters.

class _Flip(core.Augmenter):
    _axis = "x"

    def __init__(self, p: float = 0.5):
        self.p = core.check_probability(p, f"{type(self).__name__} p")

    def sample_params(self, seed, batch):
        """``{"flip": bool [B]}``, one Bernoulli(p) per image."""
        return {"flip": materialize(params.Draws(seed, batch, 1).unit() < self.p)}

    def sample_matrix(self, seed, batch, height, width):
        flip = self.sample_params(seed, batch)["flip"]
        return flip_matrix(flip, width if self._axis == "x" else height, self._axis)


class Fliplr(_Flip):
    """imgaug ``Fliplr(p)``: mirror left-right with probability ``p`` per image."""

    _axis = "x"

    def apply(self, images, seed):
        return fliplr(images, self.sample_params(seed, tf.shape(images)[0])["flip"])


class Flipud(_Flip):
    """imgaug ``Flipud(p)``: mirror top-bottom with probability ``p`` per image."""

    _axis = "y"

    def apply(self, images, seed):
        return flipud(images, self.sample_params(seed, tf.shape(images)[0])["flip"])


class CropAndPad(core.Augmenter):
    """imgaug ``CropAndPad`` (``keep_size=True``): crop/pad each side, resize back to H x W.

    Args:
      percent: fraction of H (top/bottom) or W (left/right) per side: a number, ``(a, b)``
        (uniform), a list (choice), or a 4-tuple of those for top, right, bottom, left.
        Negative crops, positive pads; pixels = ``round(size * fraction)``.
      px: the same in pixels (``(a, b)`` ints are uniform over the integers a..b). Give
        ``percent`` or ``px``, not both; neither means imgaug's default ``percent=(-0.1, 0.1)``.
      pad_mode: a ``PAD_MODES`` name, a list of names (one drawn per image) or ``"ALL"``.
      pad_cval: fill for ``constant``: number, ``(a, b)`` (ints -> integers a..b, floats ->
        uniform) or list; one value per image for all channels.
      sample_independently: with a single (non 4-tuple) spec, draw the four sides
        independently (True, imgaug's default) or once for all sides.
    """

    def __init__(self, px=None, percent=None, pad_mode="constant", pad_cval=0,
                 sample_independently: bool = True):
        if px is not None and percent is not None:
            raise ValueError("CropAndPad: give px or percent, not both")
        if px is None and percent is None:
            percent = (-0.1, 0.1)
        self.px, self.percent = px, percent
        spec = px if px is not None else percent
        if isinstance(spec, tuple) and len(spec) == 4:
            sides = list(spec)
        else:
            sides = [spec] * 4
        shared = not (isinstance(spec, tuple) and len(spec) == 4)
        kind = "px" if px is not None else "percent"
        for name, side in zip(("top", "right", "bottom", "left"), sides):
            where = f"CropAndPad {kind}" + ("" if shared else f" ({name})")
            params.check(side, where)
            if percent is not None and min(params.values(side)) <= -1.0:
                raise ValueError(f"{where}: must be > -1 (a crop of 100% or more), got {side}")
        self._sides = sides
        self._shared = shared
        self.pad_mode = pad_mode
        self._modes = params.check_modes(pad_mode, "CropAndPad pad_mode")
        self.pad_cval = params.check(pad_cval, "CropAndPad pad_cval")
        self.sample_independently = bool(sample_independently)

    def sample_params(self, seed, batch, height, width):
        """Per-image ``top/right/bottom/left`` (int32 signed pixels), ``pad_mode``, ``pad_cval``."""
        draws = params.Draws(seed, batch, 6)
        discrete = self.px is not None
        if self._shared and not self.sample_independently:
            v = draws.sample(self._sides[0], discrete=discrete)
            sides = [v, v, v, v]
            draws.unit(3)  # keep the column layout of the independent case
        else:
            sides = [draws.sample(side, discrete=discrete) for side in self._sides]
        if discrete:
            amounts = [tf.cast(tf.round(v), tf.int32) for v in sides]
        else:
            sizes = (height, width, height, width)
            amounts = [tf.cast(tf.round(v * size), tf.int32) for v, size in zip(sides, sizes)]
        top, right, bottom, left = amounts
        drawn = {
            "top": top, "right": right, "bottom": bottom, "left": left,
            "pad_mode": draws.choice(self._modes),
            "pad_cval": draws.sample(self.pad_cval, discrete=True),
        }
        return {k: materialize(v) for k, v in drawn.items()}

    def apply(self, images, seed):
        height, width = _spatial(images)
        p = self.sample_params(seed, tf.shape(images)[0], height, width)
        mode = self._modes[0] if len(self._modes) == 1 else p["pad_mode"]
        return crop_and_pad(images, p["top"], p["right"], p["bottom"], p["left"], mode,
                            p["pad_cval"])

    def sample_matrix(self, seed, batch, height, width):
        """Approximate affine equivalent (see :func:`crop_and_pad_matrix`) for fused chains."""
        p = self.sample_params(seed, batch, height, width)
        return crop_and_pad_matrix(height, width, p["top"], p["right"], p["bottom"], p["left"])


class Affine(core.Augmenter):
    """imgaug ``Affine`` (cv2 backend, ``fit_output=False``), one gather-based resample.

    Args follow imgaug 0.4:
      scale: number, ``(a, b)``, list, or ``{"x": .., "y": ..}``. A non-dict value draws ONE
        factor per image for both axes; a dict draws x and y independently.
      translate_percent / translate_px: like ``scale`` (a non-dict value is shared by both
        axes); percent of W for x and of H for y; ``translate_px`` ``(a, b)`` ints are integers.
      rotate: degrees, number / ``(a, b)`` / list; positive is clockwise on screen.
      shear: degrees. A single number shears x only; ``(a, b)`` or a list draws one angle per
        image used for x and y; ``{"x": .., "y": ..}`` draws independently.
      order: 0, 1, or a list of them (drawn per image). ``"ALL"`` is not supported (cubic).
      cval: fill for ``constant``: number, ``(a, b)`` (uniform per image AND channel), list,
        or ``"ALL"`` (= ``(0, 255)``). Truncated to an int like imgaug's cv2 call does.
      mode: a ``PAD_MODES`` name, a list of names or ``"ALL"``.
    With no geometric argument at all, imgaug's defaults are used (scale x/y 0.9..1.1,
    translate x/y -10..10 %, rotate -15..15, shear x/y -10..10).
    """

    def __init__(self, scale=None, translate_percent=None, translate_px=None, rotate=None,
                 shear=None, order=1, cval=0, mode="constant"):
        if all(v is None for v in (scale, translate_percent, translate_px, rotate, shear)):
            scale = {"x": (0.9, 1.1), "y": (0.9, 1.1)}
            translate_percent = {"x": (-0.1, 0.1), "y": (-0.1, 0.1)}
            rotate = (-15.0, 15.0)
            shear = {"x": (-10.0, 10.0), "y": (-10.0, 10.0)}
        if translate_percent is not None and translate_px is not None:
            raise ValueError("Affine: give translate_percent or translate_px, not both")
        self.scale = 1.0 if scale is None else scale
        self.translate_percent = translate_percent
        self.translate_px = translate_px
        self.rotate = 0.0 if rotate is None else rotate
        self.shear = 0.0 if shear is None else shear
        self.order, self.cval, self.mode = order, cval, mode
        self._scale = params.check_xy(self.scale, "Affine scale", 1.0)
        translate = translate_px if translate_px is not None else translate_percent
        name = "Affine translate_px" if translate_px is not None else "Affine translate_percent"
        self._translate = params.check_xy(0.0 if translate is None else translate, name, 0.0)
        params.check(self.rotate, "Affine rotate")
        if params.is_number(self.shear):
            self._shear = (self.shear, 0.0, True)  # a single number shears x only
        else:
            self._shear = params.check_xy(self.shear, "Affine shear", 0.0)
        orders = [order] if isinstance(order, int) and not isinstance(order, bool) else order
        if not isinstance(orders, list) or not orders or \
                any(isinstance(o, bool) or o not in (0, 1) for o in orders):
            raise ValueError(f"Affine order: expected 0, 1 or a list of them (XLA has no cubic), "
                             f"got {order!r}")
        self._orders = tuple(orders)
        self._cval = (0, 255) if cval == ALL else cval
        params.check(self._cval, "Affine cval")
        self._modes = params.check_modes(mode, "Affine mode")

    def sample_params(self, seed, batch, channels: int = 3):
        """Per-image parameters in imgaug's units (float32 ``[B]`` unless noted).

        ``scale_x, scale_y, translate_x, translate_y`` (fractions, or pixels with
        ``translate_px``), ``rotate, shear_x, shear_y`` (degrees), ``order`` (int32),
        ``mode`` (int32), ``cval`` (``[B, channels]``).
        """
        draws = params.Draws(seed, batch, 9 + channels)
        out = {}
        for name, (xs, ys, independent), discrete in (
                ("scale", self._scale, False),
                ("translate", self._translate, self.translate_px is not None),
                ("shear", self._shear, False)):
            x = draws.sample(xs, discrete=discrete)
            y = draws.sample(ys, discrete=discrete)
            out[name + "_x"], out[name + "_y"] = x, (y if independent else x)
        out["rotate"] = draws.sample(self.rotate)
        out["order"] = draws.choice(self._orders)
        out["mode"] = draws.choice(self._modes)
        cval = draws.sample(self._cval, width=channels)
        out["cval"] = tf.floor(cval)  # cv2.warpAffine(borderValue=tuple(int(v) ...))
        return {k: materialize(v) for k, v in out.items()}

    def _matrix(self, drawn, height, width):
        tx, ty = drawn["translate_x"], drawn["translate_y"]
        if self.translate_px is None:
            tx, ty = tx * width, ty * height
        return affine_matrix(drawn["scale_x"], drawn["scale_y"], tx, ty, drawn["rotate"],
                             drawn["shear_x"], height, width, shear_y_deg=drawn["shear_y"])

    def sample_matrix(self, seed, batch, height, width):
        return self._matrix(self.sample_params(seed, batch), height, width)

    def apply(self, images, seed):
        height, width = _spatial(images)
        channels = images.shape[3] or 3
        drawn = self.sample_params(seed, tf.shape(images)[0], channels)
        order = self._orders[0] if len(self._orders) == 1 else drawn["order"]
        mode = self._modes[0] if len(self._modes) == 1 else drawn["mode"]
        return affine(images, self._matrix(drawn, height, width), order=order, mode=mode,
                      cval=drawn["cval"])


class FusedGeometry(core.Augmenter):
    """A chain of geometric augmenters applied with ONE resample (composed matrices).

    Each child draws from its own split of the seed, exactly as it would alone; their forward
    matrices are composed in order and the batch is warped once with the last ``Affine``
    child's per-image order, mode and cval (bilinear, constant 0 if there is none). Faster and
    sharper than resampling per op; differs from the sequential chain only at borders (one
    border rule for the whole chain) and for CropAndPad's padding modes/area resize.
    """

    def __init__(self, children: Sequence[core.Augmenter]):
        for child in children:
            if not hasattr(child, "sample_matrix"):
                raise TypeError(f"{child!r} has no sample_matrix; it cannot be fused")
        self.children = list(children)

    def child_seeds(self, seed):
        """The seed each child gets (``[n, 2]``): the same draws as running it alone."""
        return core.split_seed(seed, max(len(self.children), 1))

    def apply(self, images, seed):
        height, width = _spatial(images)
        batch = tf.shape(images)[0]
        seeds = self.child_seeds(seed)
        matrices = [c.sample_matrix(seeds[i], batch, height, width)
                    for i, c in enumerate(self.children)]
        if not matrices:
            return images
        order, mode, cval = 1, MODE_CONSTANT, 0.0
        for i, child in enumerate(self.children):
            if isinstance(child, Affine):
                p = child.sample_params(seeds[i], batch, images.shape[3] or 3)
                order = child._orders[0] if len(child._orders) == 1 else p["order"]
                mode = child._modes[0] if len(child._modes) == 1 else p["mode"]
                cval = p["cval"]
        return warp_affine(images, compose(*matrices), order=order, mode=mode, cval=cval)
