"""Combinators, recipes, seeds and AugmentLayer: semantics, XLA, tf.data, MirroredStrategy."""

import json
import os
from pathlib import Path
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import augment
from augment import LinearContrast, Multiply, Sequential, SomeOf, Sometimes

RNG = np.random.default_rng(1)


def _images(batch=8, size=32, dtype=np.uint8):
    return RNG.integers(0, 256, (batch, size, size, 3)).astype(dtype)


# --------------------------------------------------------------------------------------------
# combinators


def test_sometimes_applies_child_to_fraction_p_of_images():
    x = np.full((4000, 2, 2, 3), 100.0, np.float32)
    out = Sometimes(0.3, Multiply(0.5))(x, [1, 2]).numpy()[:, 0, 0, 0]
    assert set(np.unique(out)) == {50.0, 100.0}
    assert abs((out == 50.0).mean() - 0.3) < 0.03


def test_sequential_applies_children_in_order_with_per_op_uint8_rounding():
    x = np.full((1, 2, 2, 3), 3, np.uint8)
    # imgaug keeps uint8 between ops: floor(3 * 0.5) = 1, then 1 * 3 = 3 (float chain: 4.5)
    out = Sequential([Multiply(0.5), Multiply(3.0)])(x, [0, 1]).numpy()
    assert np.all(out == 3)
    xf = np.full((1, 2, 2, 3), 100.0, np.float32)
    out = Sequential([Multiply(0.5), LinearContrast(1.5)])(xf, [0, 1]).numpy()
    np.testing.assert_allclose(out, 127 + 1.5 * (50.0 - 127))


def test_sequential_random_order_is_one_permutation_per_batch():
    xf = np.full((16, 2, 2, 3), 100.0, np.float32)
    seq = Sequential([Multiply(0.5), LinearContrast(1.5)], random_order=True)
    mul_first, contrast_first = 127 + 1.5 * (50.0 - 127), (127 + 1.5 * (100.0 - 127)) * 0.5
    seen = []
    for s in range(40):
        out = seq(xf, [s, 3]).numpy()
        assert np.all(out == out.flat[0]), "one order for the whole batch"
        assert out.flat[0] in (mul_first, contrast_first)
        seen.append(out.flat[0] == mul_first)
    assert 0.25 < np.mean(seen) < 0.75


def test_someof_picks_uniform_count_of_children_in_list_order():
    x = np.full((3000, 1, 1, 1), 1.0, np.float32)
    children = [Multiply(2.0), Multiply(3.0), Multiply(5.0)]
    out = SomeOf((0, None), children)(x, [5, 5]).numpy()[:, 0, 0, 0]
    chosen = np.stack([np.round(out) % p == 0 for p in (2, 3, 5)], axis=1)
    counts = np.bincount(chosen.sum(axis=1), minlength=4) / len(out)
    np.testing.assert_allclose(counts, 0.25, atol=0.03)
    np.testing.assert_allclose(chosen.mean(axis=0), 0.5, atol=0.03)
    exactly_one = SomeOf(1, children)(x, [5, 6]).numpy()[:, 0, 0, 0]
    assert set(np.unique(exactly_one)) == {2.0, 3.0, 5.0}


# --------------------------------------------------------------------------------------------
# recipes: registry, XLA, tf.data, dtype/shape, seeds


def test_registry_builds_known_names_and_rejects_unknown():
    assert set(augment.RECIPE_NAMES) == {"student_net2", "original_net2", "original_net1", "none"}
    for name in augment.RECIPE_NAMES:
        assert isinstance(augment.get_recipe(name), augment.Augmenter)
    with pytest.raises(ValueError, match="known"):
        augment.get_recipe("nope")


def test_register_recipe_adds_a_user_recipe():
    augment.register_recipe("test_mul_only", lambda: Multiply(0.5), overwrite=True)
    assert "test_mul_only" in augment.recipe_names()
    x = np.full((1, 2, 2, 3), 100, np.uint8)
    assert np.all(augment.get_recipe("test_mul_only")(x, [0, 0]).numpy() == 50)
    with pytest.raises(ValueError, match="already"):
        augment.register_recipe("test_mul_only", lambda: Multiply(0.5))


@pytest.fixture(scope="module")
def compiled_recipes():
    """Each recipe compiled once under XLA (compiling is the slow part of this file)."""
    out = {}
    for name in augment.RECIPE_NAMES:
        recipe = augment.get_recipe(name)
        out[name] = (recipe, tf.function(lambda x, s, r=recipe: r(x, s), jit_compile=True))
    return out


@pytest.mark.parametrize("name", ["student_net2", "original_net2", "original_net1", "none"])
def test_recipe_compiles_under_xla_keeps_dtype_shape_and_matches_eager(name, compiled_recipes):
    recipe, xla = compiled_recipes[name]
    x = tf.constant(_images())
    seed = tf.constant([11, -7])
    a, b, c = xla(x, seed), xla(x, seed), xla(x, tf.constant([12, -7]))
    assert a.dtype == tf.uint8 and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    eager = recipe(x, seed).numpy().astype(int)
    # identical draws; bilinear/blur float round-off may move a pixel across .5
    assert np.mean(np.abs(a.numpy().astype(int) - eager) > 1) < 1e-3
    if name == "none":
        np.testing.assert_array_equal(a, x)
    else:
        assert np.any(a.numpy() != c.numpy())
        assert np.any(a.numpy() != x.numpy())


@pytest.mark.parametrize("name", ["student_net2", "original_net1"])
def test_recipe_keeps_float_dtype_and_range(name):
    x = _images(dtype=np.float32)
    out = augment.get_recipe(name)(x, [3, 4])
    assert out.dtype == tf.float32 and out.shape == x.shape
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0


def test_recipes_run_in_tf_data_like_eagerly():
    x = _images(batch=16, size=24)
    recipe = augment.get_recipe("student_net2")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(8).enumerate()
    ds = ds.map(lambda i, b: recipe(b, augment.step_seed(0, i, 0)))
    got = np.concatenate([b.numpy() for b in ds])
    want = np.concatenate([recipe(x[i * 8:(i + 1) * 8], augment.step_seed(0, i, 0)).numpy()
                           for i in range(2)])
    assert got.dtype == np.uint8 and got.shape == x.shape
    assert np.mean(np.abs(got.astype(int) - want) > 1) < 1e-3


def test_step_seed_distinct_per_step_and_replica_and_reproducible():
    seeds = {tuple(augment.step_seed(0, step, rep).numpy()) for step in range(50)
             for rep in range(4)}
    assert len(seeds) == 200
    np.testing.assert_array_equal(augment.step_seed(5, 3, 1), augment.step_seed(5, 3, 1))
    assert tuple(augment.step_seed(5, 3, 1).numpy()) != tuple(augment.step_seed(6, 3, 1).numpy())


# --------------------------------------------------------------------------------------------
# AugmentLayer


def _mul_recipe():
    return Multiply((0.5, 1.5), per_channel=1.0)


augment.register_recipe("test_layer_mul", _mul_recipe, overwrite=True)


def test_layer_is_identity_unless_training():
    layer = augment.AugmentLayer("test_layer_mul", seed=1)
    assert layer.supports_jit, "Keras would silently drop XLA for the whole train step"
    x = tf.constant(_images(batch=2, size=8))
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer(x, training=False), x)
    assert np.any(layer(x, training=True).numpy() != x.numpy())


def test_layer_seeds_follow_step_and_base_seed():
    x = tf.constant(_images(batch=2, size=8))
    layer = augment.AugmentLayer("test_layer_mul", seed=1)
    a, b = layer(x, training=True), layer(x, training=True)  # internal counter: steps 0, 1
    assert np.any(a.numpy() != b.numpy())
    assert int(layer.step_counter.numpy()) == 2
    np.testing.assert_array_equal(layer(x, training=True, step=0), a)
    again = augment.AugmentLayer.from_config(layer.get_config())
    np.testing.assert_array_equal(again(x, training=True, step=1), b)
    other = augment.AugmentLayer("test_layer_mul", seed=2)
    assert np.any(other(x, training=True, step=0).numpy() != a.numpy())
    want = _mul_recipe()(x, augment.step_seed(1, 0, 0))
    np.testing.assert_array_equal(a, want)


def test_layer_inside_a_model_and_serialisation():
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    model = keras.Model(inputs, augment.AugmentLayer("test_layer_mul", seed=3)(inputs))
    x = _images(batch=2, size=8)
    np.testing.assert_array_equal(model(x, training=False), x)
    assert np.any(model(x, training=True).numpy() != x)
    config = json.loads(json.dumps(model.get_config()))
    restored = keras.Model.from_config(config)
    assert isinstance(restored.layers[-1], augment.AugmentLayer)
    assert restored.layers[-1].get_config()["recipe"] == "test_layer_mul"


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import augment
    augment.register_recipe("mul", lambda: augment.Multiply((0.5, 1.5), per_channel=1.0))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        layer = augment.AugmentLayer("mul", seed=0)
    x = tf.constant(np.full((2, 4, 4, 3), 100, np.uint8))

    @tf.function
    def step():
        return strategy.run(lambda: layer(x, training=True))

    outs = [[v.numpy().tolist() for v in strategy.experimental_local_results(step())]
            for _ in range(2)]
    print(json.dumps({"outs": outs, "counter": int(layer.step_counter.numpy())}))
""")


def test_layer_gives_each_replica_its_own_parameters_under_mirrored_strategy():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True,
                          text=True, timeout=300, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    (step0_r0, step0_r1), (step1_r0, step1_r1) = [[np.array(o) for o in s]
                                                  for s in result["outs"]]
    assert np.any(step0_r0 != step0_r1), "replicas drew the same parameters"
    assert np.any(step0_r0 != step1_r0), "steps drew the same parameters"
    assert result["counter"] == 2, "one count per step, not per replica"


# --------------------------------------------------------------------------------------------
# grid and bench entry points

# The shared sample lies beside the checkout (../shared), in development and in CI.
SAMPLE = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-sample")


@pytest.mark.skipif(not os.path.isdir(SAMPLE), reason="real data sample not available")
def test_grid_writes_png_with_one_row_per_image(tmp_path):
    from PIL import Image

    from augment import grid
    out = grid.make_grid(SAMPLE, "student_net2", str(tmp_path / "g.png"), n=3, repeats=2,
                         seed=0, scale=1)
    with Image.open(out) as im:
        width, height = im.size
    assert width == 3 * (64 + 4) + 4 and height == 14 + 3 * (64 + 4) + 4


def test_bench_measure_counts_images_per_second():
    from augment import bench
    images = tf.constant(_images(batch=4, size=8))
    result = bench.measure(Multiply((0.9, 1.1)), images, seconds=0.0, jit_compile=False)
    assert result["calls"] >= 3 and result["images_per_s"] > 0
