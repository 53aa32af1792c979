"""Geometric ops (augment.geometry / augment.warp) against definitions on known inputs.

The references here are written from the definitions, not from our code: imgaug 0.4's matrix
chain built with skimage's AffineTransform formula, numpy inverse mapping with ``np.pad`` for
the border modes (numpy's mode names mean what cv2's borders do in imgaug), explicit
crop + ``np.pad`` + a cv2-style resize written as interpolation matrices, and ``np.flip`` /
``np.rot90``.
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from augment import geometry as g  # noqa: E402

MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def _images(batch, height, width, channels=3, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (batch, height, width, channels)).astype(
        np.float32)


# ---------------------------------------------------------------------------------------------
# Independent references.

def _skimage_affine(scale=(1.0, 1.0), rotation=0.0, shear=0.0, translation=(0.0, 0.0)):
    """skimage (<0.19) AffineTransform(scale, rotation, shear, translation).params."""
    sx, sy = scale
    return np.array([
        [sx * math.cos(rotation), -sy * math.sin(rotation + shear), translation[0]],
        [sx * math.sin(rotation), sy * math.cos(rotation + shear), translation[1]],
        [0.0, 0.0, 1.0]])


def _imgaug_matrix(sx, sy, tx, ty, rotate_deg, shear_x_deg, shear_y_deg, height, width):
    """imgaug 0.4 _AffineSamplingResult.to_matrix: skimage transforms chained with '+'."""
    cx, cy = width / 2.0 - 0.5, height / 2.0 - 0.5
    chain = [
        _skimage_affine(translation=(-cx, -cy)),
        _skimage_affine(rotation=-3.141592 / 2),
        _skimage_affine(shear=np.deg2rad(shear_y_deg)),
        _skimage_affine(rotation=3.141592 / 2),
        _skimage_affine(scale=(sx, sy), rotation=np.deg2rad(rotate_deg),
                        shear=np.deg2rad(shear_x_deg), translation=(tx, ty)),
        _skimage_affine(translation=(cx, cy)),
    ]
    matrix = np.eye(3)
    for step in chain:  # skimage: (a + b) applies a then b, i.e. b.params @ a.params
        matrix = step @ matrix
    return matrix


def _pad_plane(image, amount, mode, cval):
    """``np.pad`` of an HxWxC image by ``amount`` on all sides, per-channel constant."""
    if mode == "constant":
        return np.stack([np.pad(image[..., k], amount, mode="constant", constant_values=cval[k])
                         for k in range(image.shape[-1])], axis=-1)
    return np.pad(image, ((amount, amount), (amount, amount), (0, 0)), mode=mode)


def _np_warp(image, matrix, order, mode, cval):
    """cv2.warpAffine by inverse mapping: nearest = floor(x + .5), bilinear per tap."""
    height, width, _ = image.shape
    inv = np.linalg.inv(matrix)
    ys, xs = np.mgrid[0:height, 0:width]
    src = inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(height * width)])
    sx, sy = src[0].reshape(height, width), src[1].reshape(height, width)
    margin = 4 * max(height, width)
    padded = _pad_plane(image.astype(np.float64), margin, mode, cval)

    def at(y, x):
        return padded[y.astype(int) + margin, x.astype(int) + margin]

    if order == 0:
        return at(np.floor(sy + 0.5), np.floor(sx + 0.5))
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    return ((1 - fy) * (1 - fx) * at(y0, x0) + (1 - fy) * fx * at(y0, x0 + 1)
            + fy * (1 - fx) * at(y0 + 1, x0) + fy * fx * at(y0 + 1, x0 + 1))


def _cv2_resize_matrix(out_size, in_size, area):
    """cv2.resize along one axis as an [out, in] matrix (INTER_LINEAR or INTER_AREA path).

    From OpenCV's resize: linear samples at (d + .5) * in / out - .5; INTER_AREA when not
    shrinking both axes uses sx = floor(d * scale), fx = (d + 1) - (sx + 1) / scale (0 if
    negative, else its fractional part). Taps outside [0, in) are clamped (replicated).
    """
    scale = in_size / out_size
    mat = np.zeros((out_size, in_size))
    for d in range(out_size):
        if area:
            sx = math.floor(d * scale)
            fx = (d + 1) - (sx + 1) / scale
            fx = 0.0 if fx <= 0 else fx - math.floor(fx)
        else:
            u = (d + 0.5) * scale - 0.5
            sx = math.floor(u)
            fx = u - sx
        mat[d, min(max(sx, 0), in_size - 1)] += 1 - fx
        mat[d, min(max(sx + 1, 0), in_size - 1)] += fx
    return mat


def _np_crop_and_pad(image, top, right, bottom, left, mode, cval, resize=None):
    """Explicit crop, np.pad of the cropped image, resize back (imgaug keep_size=True)."""
    height, width, _ = image.shape
    ct, cr, cb, cl = (max(-v, 0) for v in (top, right, bottom, left))
    cropped = image[ct:height - cb, cl:width - cr].astype(np.float64)
    pads = ((max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0)), (0, 0))
    kwargs = {"constant_values": cval} if mode == "constant" else {}
    padded = np.pad(cropped, pads, mode=mode, **kwargs)
    ih, iw = padded.shape[:2]
    if resize is not None:  # "bilinear" or "area" through tf.image.resize
        return tf.image.resize(padded[None], (height, width), method=resize)[0].numpy()
    area = ih < height or iw < width  # imgaug: cv2 INTER_AREA when enlarging
    ry = _cv2_resize_matrix(height, ih, area)
    rx = _cv2_resize_matrix(width, iw, area)
    return np.einsum("yi,ijc,xj->yxc", ry, padded, rx)


def _imgaug_prevent_zero_size(height, width, top, right, bottom, left):
    """imgaug 0.4 size._crop_prevent_zero_size, transcribed."""
    rem_h = height - (top + bottom)
    rem_w = width - (left + right)
    if rem_h < 1:
        regain = abs(rem_h) + 1
        rt, rb = regain // 2, regain // 2
        if rt + rb < regain:
            rt += 1
        if rt > top:
            rb += rt - top
            rt = top
        elif rb > bottom:
            rt += rb - bottom
            rb = bottom
        top, bottom = top - rt, bottom - rb
    if rem_w < 1:
        regain = abs(rem_w) + 1
        rr, rl = regain // 2, regain // 2
        if rr + rl < regain:
            rr += 1
        if rr > right:
            rl += rr - right
            rr = right
        elif rl > left:
            rr += rl - left
            rl = left
        right, left = right - rr, left - rl
    return max(top, 0), max(right, 0), max(bottom, 0), max(left, 0)


# ---------------------------------------------------------------------------------------------
# Deterministic ops.

def test_identity_parameters_change_nothing():
    images = np.random.RandomState(1).randint(0, 256, (3, 7, 5, 3)).astype(np.uint8)
    zeros = tf.zeros([3], tf.int32)
    eye = tf.eye(3, batch_shape=[3])
    as_f = images.astype(np.float32)
    np.testing.assert_array_equal(g.Fliplr(p=0.0)(images, [1, 2]).numpy(), images)
    np.testing.assert_array_equal(g.Flipud(p=0.0)(images, [1, 2]).numpy(), images)
    np.testing.assert_array_equal(g.CropAndPad(px=0)(images, [1, 2]).numpy(), images)
    for mode in range(5):
        out = g.crop_and_pad(as_f, zeros, zeros, zeros, zeros, mode, 7.0)
        np.testing.assert_array_equal(out.numpy(), as_f)
    identity = g.affine_matrix([1.0] * 3, [1.0] * 3, [0.0] * 3, [0.0] * 3, [0.0] * 3, [0.0] * 3,
                               7, 5)
    np.testing.assert_array_equal(identity.numpy(), eye.numpy())
    for order in (0, 1, tf.constant([0, 1, 1])):
        np.testing.assert_array_equal(g.affine(as_f, identity, order=order).numpy(), as_f)
    np.testing.assert_array_equal(
        g.Affine(scale=1.0, rotate=0.0, order=[0, 1], mode="ALL")(images, [3, 4]).numpy(), images)


def test_flips_match_np_flip_per_image():
    images = _images(4, 5, 6, seed=2)
    mask = np.array([True, False, True, False])
    lr = g.fliplr(images, mask).numpy()
    ud = g.flipud(images, mask).numpy()
    for i in range(4):
        np.testing.assert_array_equal(lr[i], np.flip(images[i], 1) if mask[i] else images[i])
        np.testing.assert_array_equal(ud[i], np.flip(images[i], 0) if mask[i] else images[i])
    u8 = images.astype(np.uint8)
    out = g.Fliplr(p=1.0)(u8, [5, 6])
    assert out.dtype == tf.uint8
    np.testing.assert_array_equal(out.numpy(), np.flip(u8, 2))
    np.testing.assert_array_equal(g.Flipud(p=1.0)(u8, [5, 6]).numpy(), np.flip(u8, 1))


def test_flip_matrices_warp_exactly_like_flips():
    images = _images(2, 5, 6, seed=3)
    mask = tf.constant([True, False])
    for axis, fn, size in (("x", g.fliplr, 6), ("y", g.flipud, 5)):
        warped = g.affine(images, g.flip_matrix(mask, size, axis), order=1)
        np.testing.assert_allclose(warped.numpy(), fn(images, mask).numpy(), atol=1e-3)


def test_rotate_90_nearest_is_clockwise_and_exact():
    """imgaug's +90 degrees turns clockwise on screen: np.rot90(k=-1) on a square image."""
    images = _images(2, 6, 6, seed=4)
    m = g.affine_matrix([1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [90.0, -90.0],
                        [0.0, 0.0], 6, 6)
    out = g.affine(images, m, order=0).numpy()
    np.testing.assert_array_equal(out[0], np.rot90(images[0], k=-1))
    np.testing.assert_array_equal(out[1], np.rot90(images[1], k=1))
    by_class = g.Affine(rotate=90, order=0)(images.astype(np.uint8), [0, 1]).numpy()
    np.testing.assert_array_equal(by_class, np.rot90(images.astype(np.uint8), k=-1, axes=(1, 2)))
    # cv2's nearest rounds half up: a +0.5 px shift keeps the image, -0.5 px moves it by one.
    half = g.affine_matrix([1.0, 1.0], [1.0, 1.0], [0.5, -0.5], [0.0, 0.0], [0.0, 0.0],
                           [0.0, 0.0], 6, 6)
    shifted = g.affine(images, half, order=0, cval=9.0).numpy()
    np.testing.assert_array_equal(shifted[0], images[0])
    np.testing.assert_array_equal(shifted[1][:, :-1], images[1][:, 1:])
    np.testing.assert_array_equal(shifted[1][:, -1], 9.0)
    bilinear = g.affine(images, m, order=1).numpy()
    np.testing.assert_allclose(bilinear[0], np.rot90(images[0], k=-1), atol=1e-3)


def test_affine_matrix_equals_imgaug_skimage_chain():
    params = [(1.2, 0.9, 1.0, -0.35, 17.0, 8.0, 8.0), (0.7, 1.3, -2.5, 3.0, -140.0, -20.0, 5.0)]
    cols = list(zip(*params))
    ours = g.affine_matrix(*cols[:6], 7, 10, shear_y_deg=cols[6]).numpy()
    for i, p in enumerate(params):
        np.testing.assert_allclose(ours[i], _imgaug_matrix(*p, 7, 10), atol=1e-5)


def test_affine_matches_numpy_inverse_mapping_for_every_mode_and_order():
    """One batch, each image with its own matrix, order, mode and per-channel cval."""
    height, width = 7, 10
    cases = [(order, mode) for mode in MODES for order in (0, 1)]
    batch = len(cases)
    images = _images(batch, height, width, seed=5)
    rng = np.random.RandomState(6)
    params = [(1.2, 0.9, 0.1 * width, -0.05 * height, 17.0, 8.0, 8.0)]
    params += [(rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(-3, 3),
                rng.uniform(-3, 3), rng.uniform(-180, 180), rng.uniform(-30, 30),
                rng.uniform(-30, 30)) for _ in range(batch - 1)]
    matrices = np.stack([_imgaug_matrix(*p, height, width) for p in params]).astype(np.float32)
    cval = rng.uniform(0, 255, (batch, 3)).astype(np.float32)
    order = np.array([c[0] for c in cases], np.int32)
    mode = np.array([MODES.index(c[1]) for c in cases], np.int32)
    out = g.affine(images, matrices, order=order, mode=mode, cval=cval).numpy()
    for i, (o, m) in enumerate(cases):
        want = _np_warp(images[i], matrices[i].astype(np.float64), o, m, cval[i])
        np.testing.assert_allclose(out[i], want, atol=0.05, err_msg=f"order={o} mode={m}")
    # A static mode (Python int) computes only that remapping: same answers.
    for k, name in enumerate(MODES):
        static = g.affine(images, matrices, order=order, mode=k, cval=cval).numpy()
        for i in [i for i, c in enumerate(cases) if c[1] == name]:
            np.testing.assert_allclose(static[i], out[i], atol=1e-3)
    # A static order takes the single-gather (nearest) or four-gather path: same answers.
    near = g.affine(images, matrices, order=0, mode=mode, cval=cval).numpy()
    for i in range(batch):
        want = _np_warp(images[i], matrices[i].astype(np.float64), 0, cases[i][1], cval[i])
        np.testing.assert_allclose(near[i], want, atol=0.05)


def test_materialize_returns_the_same_values():
    for value in (tf.constant([1.5, -2.0]), tf.constant([[3, -7]]), tf.constant([True, False])):
        out = g.materialize(value)
        assert out.dtype == value.dtype
        np.testing.assert_array_equal(out.numpy(), value.numpy())


def test_prevent_zero_size_matches_imgaug():
    vals = np.array([[t, r, b, l] for t in range(0, 9, 2) for b in range(0, 9, 3)
                     for r in range(0, 7, 2) for l in range(0, 7, 3)])
    sizes = g.crop_and_pad_sizes(6, 5, *[-vals[:, k] for k in range(4)])
    got = np.stack([sizes[k].numpy() for k in ("crop_t", "crop_r", "crop_b", "crop_l")], 1)
    want = np.array([_imgaug_prevent_zero_size(6, 5, *v) for v in vals])
    np.testing.assert_array_equal(got, want)
    assert (sizes["crop_h"].numpy() >= 1).all() and (sizes["crop_w"].numpy() >= 1).all()


@pytest.mark.parametrize("sides, resize", [
    ((3, 9, 2, 1), "bilinear"),     # pads only (one wider than the image): INTER_LINEAR
    ((-2, 0, -1, -3), "area"),      # crops only: imgaug enlarges with INTER_AREA
    ((-2, 2, 3, -1), None),         # crop + pad on each axis, still growing: linear
    ((-3, 4, 1, -1), None),         # height shrinks, width grows: area weights on both axes
])
def test_crop_and_pad_matches_explicit_numpy_crop_pad_resize(sides, resize):
    height, width = 8, 6
    images = _images(len(MODES), height, width, seed=7)
    cval = np.array([30.0, 60.0, 90.0, 120.0, 150.0], np.float32)
    top, right, bottom, left = ([v] * len(MODES) for v in sides)
    out = g.crop_and_pad(images, top, right, bottom, left, np.arange(5), cval).numpy()
    for i, mode in enumerate(MODES):
        want = _np_crop_and_pad(images[i], *sides, mode, cval[i])
        np.testing.assert_allclose(out[i], want, atol=0.02, err_msg=mode)
        static = g.crop_and_pad(images[i:i + 1], *([v] for v in sides), i, cval[i]).numpy()
        np.testing.assert_allclose(static[0], want, atol=0.02, err_msg=mode)
        if resize is not None:  # the cv2-style reference agrees with TF's own resize here
            tf_want = _np_crop_and_pad(images[i], *sides, mode, cval[i], resize=resize)
            np.testing.assert_allclose(want, tf_want, atol=0.02, err_msg=mode)


# ---------------------------------------------------------------------------------------------
# Random augmenters: sampling.

def test_flip_frequency_is_p():
    n = 4000
    for cls in (g.Fliplr, g.Flipud):
        frac = cls(p=0.3).sample_params([7, 8], n)["flip"].numpy().mean()
        assert abs(frac - 0.3) < 0.03, (cls.__name__, frac)  # sd 0.007
    images = _images(16, 3, 4, seed=8)
    flips = g.Fliplr(p=0.5).sample_params([9, 9], 16)["flip"].numpy()
    out = g.Fliplr(p=0.5)(images, [9, 9]).numpy()
    assert 0 < flips.sum() < 16
    for i in range(16):
        np.testing.assert_array_equal(out[i], np.flip(images[i], 1) if flips[i] else images[i])


def _assert_roughly_uniform(values, low, high, bins=8):
    assert values.min() >= low and values.max() <= high, (values.min(), values.max())
    counts, _ = np.histogram(values, bins=bins, range=(low, high))
    expected = len(values) / bins
    assert np.all(np.abs(counts - expected) < 0.25 * expected), counts


def test_affine_sampled_parameters_follow_imgaug_shorthands():
    n = 4000
    p = g.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), rotate=(-20, 20),
                 shear=(-10, 10), order=[0, 1], cval=(0, 255), mode="ALL").sample_params(
                     [1, 1], n, channels=3)
    p = {k: v.numpy() for k, v in p.items()}
    _assert_roughly_uniform(p["scale_x"], 0.8, 1.2)
    _assert_roughly_uniform(p["translate_x"], -0.1, 0.1)
    _assert_roughly_uniform(p["rotate"], -20, 20)
    _assert_roughly_uniform(p["shear_x"], -10, 10)
    # A non-dict value is one draw per image for both axes (imgaug 0.4 _draw_samples).
    for k in ("scale", "translate", "shear"):
        np.testing.assert_array_equal(p[k + "_x"], p[k + "_y"])
    assert abs(np.mean(p["order"]) - 0.5) < 0.05
    assert np.bincount(p["mode"], minlength=5).min() > n / 5 * 0.8
    assert p["cval"].shape == (n, 3)
    np.testing.assert_array_equal(p["cval"], np.floor(p["cval"]))  # cv2 gets int(cval)
    _assert_roughly_uniform(p["cval"].ravel(), 0, 255)
    assert np.mean(p["cval"][:, 0] != p["cval"][:, 1]) > 0.9  # per channel
    q = g.Affine(scale={"x": (0.5, 1.0), "y": (1.0, 2.0)}, translate_percent={"y": (0, 0.2)},
                 shear=5.0).sample_params([2, 2], n)
    q = {k: v.numpy() for k, v in q.items()}
    _assert_roughly_uniform(q["scale_x"], 0.5, 1.0)
    _assert_roughly_uniform(q["scale_y"], 1.0, 2.0)
    assert abs(np.corrcoef(q["scale_x"], q["scale_y"])[0, 1]) < 0.06  # independent
    np.testing.assert_array_equal(q["translate_x"], 0.0)
    np.testing.assert_array_equal(q["shear_x"], 5.0)
    np.testing.assert_array_equal(q["shear_y"], 0.0)  # a single number shears x only
    d = g.Affine().sample_params([3, 3], n)  # imgaug defaults: independent x/y
    assert np.mean(d["scale_x"].numpy() != d["scale_y"].numpy()) > 0.99
    with pytest.raises(ValueError):
        g.Affine(order=3)
    with pytest.raises(ValueError):
        g.Affine(mode="linear_ramp")


def test_crop_and_pad_sampled_parameters():
    n = 4000
    aug = g.CropAndPad(percent=(-0.2, 0.2), pad_mode=["edge", "wrap"], pad_cval=(0, 255))
    p = {k: v.numpy() for k, v in aug.sample_params([4, 4], n, 64, 32).items()}
    # pixels = round(size * U(-0.2, 0.2)): top/bottom from H=64, left/right from W=32.
    for side, size in (("top", 64), ("bottom", 64), ("left", 32), ("right", 32)):
        lim = round(0.2 * size)
        assert p[side].min() == -lim and p[side].max() == lim, side
        assert abs(p[side].mean()) < 0.05 * lim
    assert np.mean(p["top"] == p["bottom"]) < 0.1  # four independent draws
    assert set(np.unique(p["pad_mode"])) == {1, 4}
    assert set(np.unique(p["pad_cval"])) <= set(range(256)) and len(np.unique(p["pad_cval"])) > 250
    same = g.CropAndPad(px=(-3, 3), sample_independently=False).sample_params([5, 5], 50, 8, 8)
    np.testing.assert_array_equal(same["top"].numpy(), same["left"].numpy())
    assert set(np.unique(same["top"].numpy())) == set(range(-3, 4))
    images = _images(6, 8, 6, seed=9)
    aug = g.CropAndPad(percent=(-0.3, 0.3), pad_mode="ALL", pad_cval=(0, 255))
    s = {k: v.numpy() for k, v in aug.sample_params([6, 6], 6, 8, 6).items()}
    out = aug(images, [6, 6]).numpy()
    for i in range(6):
        sides = [int(s[k][i]) for k in ("top", "right", "bottom", "left")]
        want = _np_crop_and_pad(images[i], *sides, MODES[s["pad_mode"][i]], s["pad_cval"][i])
        np.testing.assert_allclose(out[i], want, atol=0.02)


# ---------------------------------------------------------------------------------------------
# Compilation, tf.data, dynamic batch, fusion.

_AUGS = {
    "fliplr": g.Fliplr(0.5),
    "flipud": g.Flipud(0.5),
    "crop_and_pad": g.CropAndPad(percent=(-0.3, 0.3), pad_mode="ALL", pad_cval=(0, 255)),
    "affine": g.Affine(scale=(0.7, 1.3), translate_percent={"x": (-0.2, 0.2)},
                       rotate=(-45, 45), shear=(-15, 15), order=[0, 1], cval=(0, 255),
                       mode="ALL"),
    "fused": g.FusedGeometry([g.Fliplr(0.5), g.Affine(rotate=(-30, 30), mode="reflect")]),
}


@pytest.mark.parametrize("name", sorted(_AUGS))
@pytest.mark.slow
def test_xla_compiles_and_matches_eager_on_dynamic_batch(name):
    """jit_compile=True raises if any op lacks an XLA kernel; results must match eager."""
    aug = _AUGS[name]
    images = _images(5, 9, 7, seed=10)

    @tf.function(jit_compile=True, input_signature=[
        tf.TensorSpec([None, 9, 7, 3], tf.float32), tf.TensorSpec([2], tf.int32)])
    def compiled(x, seed):
        return aug(x, seed)

    for seed in ([1, 2], [-5, 3]):  # negative seed parts: XLA and eager must still agree
        np.testing.assert_allclose(compiled(images, tf.constant(seed, tf.int32)).numpy(),
                                   aug(images, seed).numpy(), atol=1e-3)
    assert compiled(images[:1], tf.constant([1, 2])).shape == (1, 9, 7, 3)
    as_u8 = aug(images.astype(np.uint8), [1, 2])
    assert as_u8.dtype == tf.uint8 and as_u8.shape == images.shape


@pytest.mark.slow
def test_runs_inside_tf_data_like_eager():
    images = np.random.RandomState(11).randint(0, 256, (6, 9, 7, 3)).astype(np.uint8)
    seed = tf.constant([3, 4])
    for aug in (_AUGS["affine"], _AUGS["crop_and_pad"]):
        ds = tf.data.Dataset.from_tensor_slices(images).batch(4).map(lambda x: aug(x, seed))
        batches = list(ds.as_numpy_iterator())
        assert [b.shape[0] for b in batches] == [4, 2]
        for start, got in zip((0, 4), batches):
            want = aug(images[start:start + got.shape[0]], seed).numpy()
            assert np.abs(want.astype(int) - got.astype(int)).max() <= 1


def test_fused_flip_then_affine_equals_sequential():
    images = _images(6, 8, 8, seed=12)
    flip, aff = g.Fliplr(0.5), g.Affine(rotate=(-30, 30), scale=(0.8, 1.2), mode="symmetric")
    fused = g.FusedGeometry([flip, aff])
    seed = tf.constant([8, 9])
    s = fused.child_seeds(seed)
    sequential = aff(flip(images, s[0]), s[1]).numpy()
    np.testing.assert_allclose(fused(images, seed).numpy(), sequential, atol=1e-2)
    m = g.compose(flip.sample_matrix(s[0], 6, 8, 8), aff.sample_matrix(s[1], 6, 8, 8))
    np.testing.assert_allclose(g.affine(images, m, 1, 3).numpy(), sequential, atol=1e-2)
