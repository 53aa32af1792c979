"""Photometric ops against their definitions: formulas, reference blur, dropout blocks, noise."""

import numpy as np
import pytest
import tensorflow as tf

from augment import params
from augment import photometric as ph

RNG = np.random.default_rng(0)


def _images(batch=4, size=16, channels=3, dtype=np.uint8):
    return RNG.integers(0, 256, (batch, size, size, channels)).astype(dtype)


# --------------------------------------------------------------------------------------------
# identity parameters


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_identity_parameters_change_nothing(dtype):
    x = _images(dtype=dtype)
    b = x.shape[0]
    np.testing.assert_array_equal(ph.multiply(x, np.ones(b)), x)
    np.testing.assert_array_equal(ph.linear_contrast(x, np.ones(b)), x)
    np.testing.assert_array_equal(ph.additive_noise(x, np.zeros(x.shape[:3] + (1,))), x)
    np.testing.assert_array_equal(ph.gaussian_blur(x, np.zeros(b), max_ksize=7), x)
    keep = np.ones((b, 3, 3, 1))
    np.testing.assert_array_equal(ph.coarse_dropout(x, keep, [3] * b, [3] * b), x)
    for op in (ph.Multiply(1.0), ph.LinearContrast(1.0), ph.GaussianBlur(0.0),
               ph.CoarseDropout(p=0.0), ph.AdditiveGaussianNoise(scale=0.0)):
        out = op(x, [3, 4])
        assert out.dtype == x.dtype
        np.testing.assert_array_equal(out, x, err_msg=repr(op))


# --------------------------------------------------------------------------------------------
# Multiply and LinearContrast: exact formulas, imgaug's uint8 flooring


def test_multiply_matches_formula_uint8_floors_and_float_does_not():
    x = _images()
    mul = np.float32([0.55, 1.37, 2.0, 0.9])
    expect = np.clip(x.astype(np.float32) * mul[:, None, None, None], 0, 255)
    np.testing.assert_array_equal(ph.multiply(x, mul), np.floor(expect).astype(np.uint8))
    np.testing.assert_array_equal(ph.multiply(x.astype(np.float32), mul), expect)
    per_channel = np.float32(RNG.uniform(0.5, 1.5, (4, 3)))
    expect = np.floor(np.clip(x.astype(np.float32) * per_channel[:, None, None, :], 0, 255))
    np.testing.assert_array_equal(ph.multiply(x, per_channel), expect.astype(np.uint8))


def test_linear_contrast_matches_formula_with_pivot_127():
    x = _images()
    alpha = np.float32([0.75, 1.5, 0.0, 1.2])
    expect = np.clip(127 + alpha[:, None, None, None] * (x.astype(np.float32) - 127), 0, 255)
    np.testing.assert_array_equal(ph.linear_contrast(x, alpha), np.floor(expect).astype(np.uint8))
    np.testing.assert_allclose(ph.linear_contrast(x.astype(np.float32), alpha), expect, atol=1e-4)
    # alpha 0 maps everything to the pivot, not to the image mean
    assert np.all(ph.linear_contrast(x, alpha)[2] == 127)


# --------------------------------------------------------------------------------------------
# The value maps (imgaug's lookup-table ops): bit-identical to imgaug, eagerly and under XLA

# Factors that XLA's fused multiply-add used to round differently (1.6: v = 52, 57, 62, 67;
# 0.8: v = 2, 7), the recipes' range ends, and random ones; one image per factor.
_FACTORS = np.concatenate([np.float32([1.6, 0.8, 0.75, 1.5, 0.9, 1.1, 1.2, 0.0, 1.0, 2.0]),
                           np.random.default_rng(7).uniform(0.5, 2.0, 54).astype(np.float32)])


def _all_values(batch):
    """``[batch, 16, 16, 3]`` uint8: each image holds all 256 values, shifted per channel."""
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    planes = np.stack([v, np.roll(v, 85), np.roll(v, 170)], axis=-1)
    return np.broadcast_to(planes, (batch, 16, 16, 3)).copy()


def _imgaug_table(op, factor):
    """imgaug 0.4's uint8 table, in numpy float32 exactly as imgaug computes it.

    ``Multiply``: ``clip(arange(256) * float32(mul), 0, 255).astype(uint8)``;
    ``LinearContrast``: ``clip(127 + float32(alpha) * (arange(256) - 127), 0, 255)`` then
    ``astype(uint8)`` (``adjust_contrast_linear``, center ``int(127.5)``).
    """
    values = np.arange(256, dtype=np.float32)
    factor = np.float32(factor)
    if op == "multiply":
        table = values * factor
    else:
        table = np.float32(127) + factor * (values - np.float32(127))
    return np.clip(table, 0, 255).astype(np.uint8)


_VALUE_MAPS = {"multiply": (ph.multiply, ph.Multiply),
               "linear_contrast": (ph.linear_contrast, ph.LinearContrast),
               "contrast_normalization": (ph.linear_contrast, ph.ContrastNormalization)}


@pytest.mark.parametrize("name", sorted(_VALUE_MAPS))
def test_value_map_is_bit_identical_to_imgaug_eagerly_and_under_xla_on_all_256_values(name):
    fn, _ = _VALUE_MAPS[name]
    x = tf.constant(_all_values(len(_FACTORS)))
    factors = tf.constant(_FACTORS)
    eager = fn(x, factors).numpy()
    xla = tf.function(fn, jit_compile=True)(x, factors).numpy()
    kind = "multiply" if name == "multiply" else "contrast"
    want = np.stack([_imgaug_table(kind, f)[img] for f, img in zip(_FACTORS, x.numpy())])
    np.testing.assert_array_equal(eager, want)
    np.testing.assert_array_equal(xla, want)
    # per channel: one factor per image and channel
    per_channel = tf.constant(_FACTORS.reshape(-1, 1) * np.float32([1.0, 0.9, 1.1]))
    xla = tf.function(fn, jit_compile=True)(x, per_channel).numpy()
    want = np.stack([np.stack([_imgaug_table(kind, per_channel.numpy()[b, c])[x.numpy()[b, ..., c]]
                               for c in range(3)], axis=-1) for b in range(len(_FACTORS))])
    np.testing.assert_array_equal(xla, want)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_VALUE_MAPS))
def test_random_value_map_op_is_bit_identical_eagerly_and_under_xla(name):
    _, cls = _VALUE_MAPS[name]
    op = cls((0.5, 2.0), per_channel=0.5)
    x = tf.constant(_all_values(64))
    seed = tf.constant([4, -9])
    eager = op(x, seed).numpy()
    xla = tf.function(lambda i, s: op(i, s), jit_compile=True)(x, seed).numpy()
    np.testing.assert_array_equal(xla, eager)
    for fixed in (1.6, 0.8):  # a constant factor is a constant XLA may fold into the FMA
        op = cls(fixed)
        xla = tf.function(lambda i, s: op(i, s), jit_compile=True)(x, seed).numpy()
        kind = "multiply" if name == "multiply" else "contrast"
        np.testing.assert_array_equal(xla, _imgaug_table(kind, fixed)[x.numpy()])


# --------------------------------------------------------------------------------------------
# GaussianBlur against a numpy reference (cv2 kernel, imgaug kernel size, reflect-101)


def _imgaug_ksize(sigma):
    factor = 3.3 if sigma < 3.0 else 2.9 if sigma < 5.0 else 2.6
    k = int(max(factor * sigma, 5))
    return k + 1 if k % 2 == 0 else k


def _reference_blur(image, sigma):
    if sigma <= 1e-3:
        return image.astype(np.float64)
    k = _imgaug_ksize(sigma)
    t = np.arange(k) - (k - 1) / 2
    w = np.exp(-t ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    r = k // 2
    padded = np.pad(image.astype(np.float64), [(r, r), (r, r), (0, 0)], mode="reflect")
    rows = sum(w[i] * padded[i:i + image.shape[0]] for i in range(k))
    return sum(w[i] * rows[:, i:i + image.shape[1]] for i in range(k))


def test_gaussian_blur_matches_reference_convolution_per_image_sigma():
    sigmas = np.float32([0.0, 0.3, 0.5, 1.0, 1.7, 2.0, 2.9, 3.5])
    x = _images(batch=len(sigmas), size=20)
    out = ph.gaussian_blur(x.astype(np.float32), sigmas,
                           max_ksize=ph.max_blur_kernel_size(3.5)).numpy()
    for img, o, s in zip(x, out, sigmas):
        np.testing.assert_allclose(o, _reference_blur(img, float(s)), atol=2e-3,
                                   err_msg=f"sigma={s}")
    out_u8 = ph.gaussian_blur(x, sigmas, max_ksize=11).numpy()
    for img, o, s in zip(x, out_u8, sigmas):
        assert np.abs(o.astype(int) - np.round(_reference_blur(img, float(s)))).max() <= 1


def test_max_blur_kernel_covers_every_sigma_in_range():
    for hi in (0.5, 2.0, 3.5, 6.0):
        grid = np.linspace(0, hi, 400)
        assert ph.max_blur_kernel_size(hi) == max(_imgaug_ksize(s) for s in grid)


def test_random_blur_equals_function_at_its_sampled_sigmas():
    x = _images(batch=6).astype(np.float32)
    seed = tf.constant([5, 6])
    sigma = params.sample(seed, [6], (0.0, 2.0))
    assert np.all((sigma >= 0) & (sigma < 2.0)) and np.ptp(sigma) > 0
    np.testing.assert_allclose(ph.GaussianBlur((0.0, 2.0))(x, seed),
                               ph.gaussian_blur(x, sigma, max_ksize=7), atol=1e-4)


# --------------------------------------------------------------------------------------------
# CoarseDropout


@pytest.mark.parametrize("grid", [5, 7])  # one-hot select path (<= 36 cells) and gather path
def test_coarse_dropout_function_is_nearest_upsampled_mask(grid):
    x = np.full((2, 10, 12, 3), 200.0, np.float32)
    keep = RNG.integers(0, 2, (2, grid, grid, 3)).astype(np.float32)
    h_low, w_low = np.int32([3, grid]), np.int32([4, grid])
    out = ph.coarse_dropout(x, keep, h_low, w_low).numpy()
    for b in range(2):
        rows = np.arange(10) * h_low[b] // 10
        cols = np.arange(12) * w_low[b] // 12
        np.testing.assert_array_equal(out[b], 200.0 * keep[b][rows][:, cols])


def test_coarse_dropout_drops_expected_fraction_in_constant_blocks():
    x = np.full((64, 30, 30, 3), 100.0, np.float32)
    # size_percent 0.1 of 30 px -> 3x3 cells of 10x10 px
    out = ph.CoarseDropout(p=(0.2, 0.4), size_percent=0.1)(x, [1, 2]).numpy() / 100.0
    assert set(np.unique(out)) <= {0.0, 1.0}
    blocks = out.reshape(64, 3, 10, 3, 10, 3)
    assert np.all(blocks.min(axis=(2, 4)) == blocks.max(axis=(2, 4))), "blocks not constant"
    assert abs((1 - out).mean() - 0.3) < 0.04


def test_coarse_dropout_grid_follows_size_percent_and_min_size():
    height = 40
    frac = tf.constant([0.0, 0.05, 0.1, 0.249])
    np.testing.assert_array_equal(ph.low_res_size(frac, height),
                                  [max(int(f * height), 3) for f in frac.numpy()])
    x = np.full((32, height, height, 1), 1.0, np.float32)
    out = ph.CoarseDropout(p=0.5, size_percent=(0.2, 0.25))(x, [0, 9]).numpy()[..., 0]
    for img in out:  # 8 or 9 cells per axis: runs of equal rows have length 4..5
        changes = np.flatnonzero(np.any(img[1:] != img[:-1], axis=1)) + 1
        runs = np.diff(np.concatenate([[0], changes, [height]]))
        assert runs.min() >= 4


def test_coarse_dropout_per_channel_frequency():
    x = np.full((400, 12, 12, 3), 50.0, np.float32)
    out = ph.CoarseDropout(p=0.5, size_percent=0.25, per_channel=0.3)(x, [7, 7]).numpy()
    differs = np.any(out != out[..., :1], axis=(1, 2, 3))
    assert abs(differs.mean() - 0.3) < 0.08
    shared = ph.CoarseDropout(p=0.5, size_percent=0.25, per_channel=False)(x, [7, 7]).numpy()
    assert np.all(shared == shared[..., :1])


# --------------------------------------------------------------------------------------------
# AdditiveGaussianNoise


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_additive_noise_mean_std_and_same_on_all_channels(dtype):
    x = np.full((8, 32, 32, 3), 128, dtype)
    out = ph.AdditiveGaussianNoise(scale=10.0)(x, [1, 1]).numpy().astype(np.float64)
    assert abs(out.mean() - 128) < 0.5
    assert abs(out.std() - 10.0) < 0.4
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_additive_noise_clips_to_pixel_range():
    x = np.full((2, 16, 16, 3), 250, np.uint8)
    out = ph.AdditiveGaussianNoise(scale=30.0)(x, [2, 2]).numpy()
    assert out.max() == 255 and out.min() < 250


# --------------------------------------------------------------------------------------------
# sampled parameters follow their distributions


def test_multiply_factors_are_uniform_and_per_channel_at_given_rate():
    x = np.full((2000, 2, 2, 3), 100.0, np.float32)
    out = ph.Multiply((0.5, 1.5), per_channel=0.25)(x, [4, 2]).numpy()[:, 0, 0, :] / 100.0
    assert out.min() >= 0.5 and out.max() < 1.5
    np.testing.assert_allclose(np.quantile(out[:, 0], [0.25, 0.5, 0.75]), [0.75, 1.0, 1.25],
                               atol=0.04)
    per_channel = np.any(out != out[:, :1], axis=1)
    assert abs(per_channel.mean() - 0.25) < 0.04


def test_contrast_alphas_are_uniform_and_per_channel_at_given_rate():
    x = np.full((2000, 2, 2, 3), 137.0, np.float32)  # 10 above the pivot: out = 127 + 10a
    alpha = (ph.LinearContrast((0.75, 1.5), per_channel=0.5)(x, [8, 1]).numpy()[:, 0, 0]
             - 127.0) / 10.0
    assert alpha.min() >= 0.75 - 1e-4 and alpha.max() < 1.5 + 1e-4
    assert abs(alpha.mean() - 1.125) < 0.02
    assert abs(np.any(alpha != alpha[:, :1], axis=1).mean() - 0.5) < 0.05


# --------------------------------------------------------------------------------------------
# seeds, XLA


def _all_ops():
    return [ph.GaussianBlur((0.0, 2.0)), ph.CoarseDropout((0.1, 0.3), size_percent=(0.1, 0.3),
                                                          per_channel=0.5),
            ph.Multiply((0.8, 1.2), per_channel=0.5), ph.LinearContrast((0.5, 1.5)),
            ph.AdditiveGaussianNoise(scale=8.0)]


def test_same_seed_same_output_different_seed_different():
    x = _images(batch=8)
    for op in _all_ops():
        a, b, c = op(x, [1, 2]), op(x, [1, 2]), op(x, [2, 1])
        np.testing.assert_array_equal(a, b, err_msg=repr(op))
        assert np.any(a.numpy() != c.numpy()), repr(op)


@pytest.mark.slow
def test_ops_compile_under_xla_and_match_eager():
    x = tf.constant(_images(batch=4))
    ops = _all_ops()

    @tf.function(jit_compile=True)
    def run_all(images, seed):
        return [op(images, seed) for op in ops]

    seed = tf.constant([-3, 11])  # a negative component: XLA and CPU kernels must still agree
    for op, out in zip(ops, run_all(x, seed)):
        assert out.dtype == tf.uint8 and out.shape == x.shape
        eager = op(x, seed).numpy().astype(int)
        assert np.abs(out.numpy().astype(int) - eager).max() <= 1, repr(op)
