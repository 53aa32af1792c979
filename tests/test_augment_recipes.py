"""Combinators, recipes, seeds and AugmentLayer: semantics, XLA, tf.data, MirroredStrategy."""

import json
import os
import runpy
import sys
import warnings

from conftest import forget_tool_flags
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


# Under XLA (dtype, shape, same seed same output, near eager): test_augment_skip.py, on the
# same compiles as its bit-identity test.


@pytest.mark.parametrize("name", ["student_net2", "original_net1"])
def test_recipe_keeps_float_dtype_and_range(name):
    x = _images(dtype=np.float32)
    out = augment.get_recipe(name)(x, [3, 4])
    assert out.dtype == tf.float32 and out.shape == x.shape
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 255.0


@pytest.mark.slow
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


def test_augmentation_code_is_not_rewritten_by_autograph_inside_a_converted_map():
    """A tf.data map converts its function with autograph, which would parse and rewrite every
    op's source on the way down (37 CPU-s to trace original_net1 in a map; 1.8 without)."""
    import sys
    from augment.core import Augmenter
    from augment.photometric import PixelAugmenter
    ran_from = []

    def recording(base):
        class Recording(base):
            def apply(self, images, seed):
                # Autograph runs a rewritten copy of the code, from a generated file.
                ran_from.append((base.__name__, sys._getframe().f_code.co_filename))
                return images
        return Recording()

    ops = [recording(Augmenter), recording(PixelAugmenter), Sequential([recording(Augmenter)])]
    for op in ops:
        ds = tf.data.Dataset.from_tensors(tf.zeros([2, 4, 4, 3], tf.uint8)).map(
            lambda x, op=op: op(x, tf.constant([1, 2])))
        next(iter(ds))
    assert len(ran_from) == 3, ran_from
    assert all(path == __file__ for _, path in ran_from), ran_from


def test_step_seed_distinct_per_step_and_replica_and_reproducible():
    seed_of = tf.function(augment.step_seed)  # traced once: the loop calls it 200 times
    seeds = {tuple(seed_of(0, tf.constant(step, tf.int64), tf.constant(rep)).numpy())
             for step in range(50) for rep in range(4)}
    assert len(seeds) == 200
    np.testing.assert_array_equal(augment.step_seed(5, 3, 1), augment.step_seed(5, 3, 1))
    assert tuple(augment.step_seed(5, 3, 1).numpy()) != tuple(augment.step_seed(6, 3, 1).numpy())


# --------------------------------------------------------------------------------------------
# AugmentLayer


def _mul_recipe():
    return Multiply((0.5, 1.5), per_channel=1.0)


@pytest.fixture(autouse=True)
def _layer_recipe():
    """``test_layer_mul`` for the layer tests, registered per test (conftest undoes it)."""
    augment.register_recipe("test_layer_mul", _mul_recipe, overwrite=True)


def test_registrations_do_not_outlive_their_test():
    assert "test_mul_only" not in augment.recipe_names()  # test_register_recipe_adds_... made it
    with augment.temporary_recipes():
        augment.register_recipe("test_scoped", _mul_recipe)
        assert "test_scoped" in augment.recipe_names()
    assert "test_scoped" not in augment.recipe_names()


def test_layer_is_identity_unless_training():
    layer = augment.AugmentLayer("test_layer_mul", seed=1)
    assert layer.supports_jit, "Keras would silently drop XLA for the whole train step"
    x = tf.constant(_images(batch=2, size=8))
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer(x, training=False), x)
    assert np.any(layer(x, training=True).numpy() != x.numpy())


def test_layer_seeds_follow_step_and_base_seed():
    x = tf.constant(_images(batch=2, size=8))
    layer = augment.AugmentLayer("test_layer_mul", seed=1, jit_compile=False)
    a, b = layer(x, training=True), layer(x, training=True)  # internal counter: steps 0, 1
    assert np.any(a.numpy() != b.numpy())
    assert int(layer.step_counter.numpy()) == 2
    np.testing.assert_array_equal(layer(x, training=True, step=0), a)
    again = augment.AugmentLayer.from_config(layer.get_config())
    np.testing.assert_array_equal(again(x, training=True, step=1), b)
    other = augment.AugmentLayer("test_layer_mul", seed=2, jit_compile=False)
    assert np.any(other(x, training=True, step=0).numpy() != a.numpy())
    want = _mul_recipe()(x, augment.step_seed(1, 0, 0))
    np.testing.assert_array_equal(a, want)


def test_layer_inside_a_model_and_serialisation():
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    model = keras.Model(inputs, augment.AugmentLayer("test_layer_mul", seed=3,
                                                     jit_compile=False)(inputs))
    x = _images(batch=2, size=8)
    np.testing.assert_array_equal(model(x, training=False), x)
    assert np.any(model(x, training=True).numpy() != x)
    config = json.loads(json.dumps(model.get_config()))
    restored = keras.Model.from_config(config)
    assert isinstance(restored.layers[-1], augment.AugmentLayer)
    assert restored.layers[-1].get_config()["recipe"] == "test_layer_mul"


@pytest.mark.slow  # in the fast tier it would start the two-CPU child for itself alone
@pytest.mark.two_cpus
def test_layer_gives_each_replica_its_own_parameters_under_mirrored_strategy():
    from training import strategy as strategy_lib
    strategy = strategy_lib.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        layer = augment.AugmentLayer("test_layer_mul", seed=0)
    x = tf.constant(np.full((2, 4, 4, 3), 100, np.uint8))

    @tf.function
    def step():
        return strategy.run(lambda: layer(x, training=True))

    (step0_r0, step0_r1), (step1_r0, step1_r1) = [
        [v.numpy() for v in strategy.experimental_local_results(step())] for _ in range(2)]
    assert np.any(step0_r0 != step0_r1), "replicas drew the same parameters"
    assert np.any(step0_r0 != step1_r0), "steps drew the same parameters"
    assert int(layer.step_counter.numpy()) == 2, "one count per step, not per replica"


# --------------------------------------------------------------------------------------------
# original_net1 follows the authors' notebook


def test_original_net1_is_the_notebook_recipe_with_a_constant_20_degree_rotation():
    """TinyImageNet_Network_1.ipynb: ``iaa.SomeOf((0, None), [iaa.Affine(scale=(0.5, 1.5)),
    iaa.Affine(rotate=20), iaa.CoarseDropout((0.0, 0.2), size_percent=(0.05, 0.07)),
    iaa.AdditiveGaussianNoise(scale=0.05*255), iaa.CropAndPad(percent=(-0.25, 0.25))])``."""
    recipe = augment.get_recipe("original_net1")
    assert isinstance(recipe, SomeOf) and recipe.n == (0, None) and not recipe.random_order
    scale, rotate, dropout, noise, crop = recipe.children
    assert isinstance(scale, augment.Affine) and scale.scale == (0.5, 1.5)
    assert isinstance(rotate, augment.Affine) and rotate.rotate == 20
    assert rotate.scale == 1.0 and rotate.shear == 0.0 and rotate.translate_percent is None
    assert isinstance(dropout, augment.CoarseDropout)
    assert (dropout.p, dropout.size_percent, dropout.per_channel) == ((0.0, 0.2), (0.05, 0.07),
                                                                      0.0)
    assert isinstance(noise, augment.AdditiveGaussianNoise) and noise.scale == 0.05 * 255
    assert isinstance(crop, augment.CropAndPad) and crop.percent == (-0.25, 0.25)
    # imgaug reads a bare number as a constant: every image turns by exactly 20 degrees.
    drawn = rotate.sample_params(tf.constant([3, 4]), 256)["rotate"].numpy()
    np.testing.assert_array_equal(drawn, 20.0)
    x = tf.constant(_images(batch=4, size=16))
    by_hand = augment.geometry.affine(tf.cast(x, tf.float32), augment.geometry.affine_matrix(
        1.0, 1.0, 0.0, 0.0, [20.0] * 4, 0.0, 16, 16))
    np.testing.assert_array_equal(rotate(x, [9, 9]),
                                  tf.cast(tf.clip_by_value(tf.round(by_hand), 0, 255), tf.uint8))


# --------------------------------------------------------------------------------------------
# a registered recipe trains through training.run


@pytest.mark.slow
def test_registered_recipe_trains_through_training_run(synthetic_build, tmp_path):
    import training
    from training import config as config_lib

    traced = []

    def mine():
        def recipe(images, seed):
            traced.append(tuple(images.shape))  # runs when the train step is traced
            return Multiply((0.9, 1.1))(images, seed)
        return recipe

    augment.register_recipe("test_run_mine", mine, overwrite=True)
    assert "test_run_mine" in augment.recipe_names()
    assert "test_run_mine" not in augment.RECIPE_NAMES  # the built-ins stay the contract's
    phase = config_lib.Phase(epochs=1, image_size=16, batch_size=16, augment="test_run_mine",
                             plateau=False)
    cfg = config_lib.RunConfig(data=synthetic_build, out=str(tmp_path / "run"), model="smoke",
                               phases=(phase,), batch_size=16, steps_per_epoch=2,
                               val_image_size=16, xla=False, progress=False)
    summary = training.run(cfg)
    assert summary["epochs"] == 1
    assert traced and traced[0][1:] == (16, 16, 3), traced
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["loss"])


# --------------------------------------------------------------------------------------------
# the grid command and the benchmark

def _fake_tiny_imagenet(folder, classes=2, per_class=3, size=64):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        images = folder / "train" / f"n{c:08d}" / "images"
        images.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"n{c:08d}_{i}.JPEG")
    return str(folder)


def _run_tool(flag_registry, monkeypatch, capsys, module, *args):
    """``python -m <module> <args>`` in-process, as a fresh process runs it (``runpy`` as
    ``__main__`` on ``fresh_flags``' registry): ``(exit status, stdout, stderr's lines)``."""
    forget_tool_flags(flag_registry)
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(SystemExit) as done, warnings.catch_warnings():
        warnings.filterwarnings("ignore", f"'{module}' found in sys.modules",
                                RuntimeWarning)  # this process imported it first
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    out = capsys.readouterr()
    return done.value.code, out.out, [line for line in out.err.splitlines() if line.strip()]


def test_grid_writes_png_with_one_row_per_image(tmp_path):
    from PIL import Image

    from augment import grid
    src = _fake_tiny_imagenet(tmp_path / "tin")
    out = grid.make_grid(src, "student_net2", str(tmp_path / "g.png"), n=3, repeats=2,
                         seed=0, scale=1)
    with Image.open(out) as im:
        width, height = im.size
    assert width == 3 * (64 + 4) + 4 and height == 14 + 3 * (64 + 4) + 4
    assert sorted(os.listdir(tmp_path)) == ["g.png", "tin"]


def test_grid_on_the_real_sample(sample_dir, tmp_path):
    from augment import grid
    out = grid.make_grid(sample_dir, "original_net1", str(tmp_path / "g.png"), n=2, repeats=1,
                         seed=0, scale=1)
    assert os.path.getsize(out) > 0


def test_grid_run_maps_bad_input_to_exit_2_with_one_line(tmp_path, capsys):
    from augment import grid
    src = _fake_tiny_imagenet(tmp_path / "tin")
    missing = str(tmp_path / "nowhere")
    cases = [((None, "none", "g.png"), "--src is required"),
             ((missing, "none", "g.png"), missing),
             ((src, "nope", "g.png"), "--recipe"),
             ((src, "none", str(tmp_path / "no" / "g.png")), "--out")]
    for (where, recipe, out), needle in cases:
        assert grid.run(where, recipe, out, n=2, repeats=1, seed=0, scale=1) == 2, needle
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (needle, err)
    assert grid.run(src, "none", str(tmp_path / "g.png"), n=0, repeats=1, seed=0, scale=1) == 2
    assert "--n=0" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["tin"]


def test_grid_command_exit_statuses_name_the_flag_or_path(tmp_path, fresh_flags, monkeypatch,
                                                          capsys):
    src = _fake_tiny_imagenet(tmp_path / "tin")
    out = tmp_path / "grid.png"
    missing = str(tmp_path / "nowhere")
    cases = {  # name: (args, exit status, text the one stderr line must name)
        "no --src": ((), 2, "--src is required"),
        "missing --src path": (("--src", missing), 2, missing),
        "bad flag value": (("--src", src, "--n=x"), 2, "--n"),
        "works": (("--src", src, "--out", str(out), "--n", "2", "--repeats", "1", "--recipe",
                   "none"), 0, None),
    }
    for name, (args, want_status, needle) in cases.items():
        status, stdout, lines = _run_tool(fresh_flags, monkeypatch, capsys, "augment.grid",
                                          *args)
        assert status == want_status, (name, lines)
        if needle:
            assert len(lines) == 1 and needle in lines[0], (name, lines)
    assert not lines and stdout.strip().splitlines()[-1:] == [str(out)], (stdout, lines)
    assert out.stat().st_size > 0


def test_grid_failure_while_writing_is_exit_1_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    from augment import grid
    src = _fake_tiny_imagenet(tmp_path / "tin")

    def disk_full(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half a png")
        raise OSError(28, "No space left on device", fp)

    from PIL import Image
    monkeypatch.setattr(Image.Image, "save", disk_full)
    out = tmp_path / "g.png"
    assert grid.run(src, "none", str(out), n=2, repeats=1, seed=0, scale=1) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["tin"]  # neither g.png nor g.png.partial


def test_bench_measure_counts_images_per_second():
    from benchmarks import augment as bench
    images = tf.constant(_images(batch=4, size=8))
    result = bench.measure(Multiply((0.9, 1.1)), images, seconds=0.0, jit_compile=False)
    assert result["calls"] >= 3 and result["images_per_s"] > 0


def test_bench_command_prints_machine_table_and_one_json_line(fresh_flags, monkeypatch, capsys):
    status, stdout, lines = _run_tool(
        fresh_flags, monkeypatch, capsys, "benchmarks.augment", "--batch", "4", "--size", "16",
        "--seconds", "0", "--recipes", "none", "--ops=false", "--modes", "graph")
    assert status == 0, lines
    out = stdout.strip().splitlines()
    assert out[0].startswith("machine: ") and "TensorFlow" in out[0]
    result = json.loads(out[-1])
    assert result["machine"]["cpus"] >= 1 and result["machine"]["tensorflow"] == tf.__version__
    assert [(r["name"], r["mode"]) for r in result["results"]] == [("none", "graph")]
    assert result["results"][0]["images_per_s"] > 0
    status, _, lines = _run_tool(fresh_flags, monkeypatch, capsys, "benchmarks.augment",
                                 "--recipes", "nope", "--seconds", "0")
    assert status == 2 and len(lines) == 1 and "nope" in lines[0], lines


def test_old_way_imgaug_baseline_uses_the_border_modes_of_student_net2():
    import inspect
    from benchmarks import old_way_imgaug
    source = inspect.getsource(old_way_imgaug.image_augmentation)
    affine = [op for op in augment.get_recipe("student_net2").then_list.children
              if isinstance(op, augment.Affine)][0]
    assert affine.mode == "constant"
    assert 'mode="constant"' in source and 'mode="edge"' not in source
