"""Tests for ``models``: the papers' parameter counts, topology, serialization, XLA, precision.

Full-size networks are only built (parameter counts) or run once at 16 px; anything that
trains uses the width-1/16 variants with 10 classes.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from models import bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 1 / 16


def _pixels(batch, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _run_python(code, timeout=240):
    """Runs ``code`` in a fresh interpreter (fresh registries / device config) from the repo."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture
def restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("name, expected", [("net1", 17_927_040), ("net2", 11_822_920),
                                            ("net1_student", 17_931_368)])
def test_full_networks_have_the_papers_parameter_counts(name, expected):
    model = models.build(name, num_classes=200)
    assert model.count_params() == expected
    assert model.name == name


def test_names_lists_every_buildable_network():
    assert set(models.NAMES) == {"net1", "net2", "net1_student"}
    with pytest.raises(ValueError, match="unknown model"):
        models.build("net3")


def test_full_net1_runs_at_16px_and_reports_shapes_for_any_multiple_of_8():
    model = models.build("net1", num_classes=200)
    assert model.input_shape == (None, None, None, 3)
    out = model(_pixels(1, 16), training=False)
    assert out.shape == (1, 200)
    for size in (16, 32, 64):  # symbolic: no 64 px forward pass of the full net
        spec = model.compute_output_spec(keras.KerasTensor((2, size, size, 3)))
        assert spec.shape == (2, 200)


@pytest.mark.parametrize("name", models.NAMES)
def test_one_model_accepts_16_32_and_64px_without_rebuilding(name):
    model = models.build(name, num_classes=10, width=TINY)
    for size in (16, 32, 64):
        probs = model(_pixels(2, size), training=False).numpy()
        assert probs.shape == (2, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_fixed_image_size_must_be_a_multiple_of_8():
    assert models.build("net2", num_classes=10, image_size=64, width=TINY).input_shape == (
        None, 64, 64, 3)
    with pytest.raises(ValueError, match="multiple of 8"):
        models.build("net1", num_classes=10, image_size=20, width=TINY)


def test_uint8_and_float_pixels_give_the_same_probabilities():
    model = models.build("net1", num_classes=10, width=TINY)
    x = _pixels(2, 32)
    from_uint8 = model(x, training=False).numpy()
    from_float = model(x.astype(np.float32), training=False).numpy()
    np.testing.assert_array_equal(from_uint8, from_float)
    # 1/255 scaling happens inside: a brighter image is a different input, not saturated.
    assert not np.allclose(from_uint8, model(x // 2, training=False).numpy())


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_space_to_depth_matches_tf_nn_space_to_depth(dtype):
    x = tf.cast(tf.random.stateless_normal([2, 8, 12, 5], seed=[1, 2]), dtype)
    layer = models.SpaceToDepth(2)
    np.testing.assert_array_equal(layer(x).numpy(), tf.nn.space_to_depth(x, 2).numpy())
    assert layer.compute_output_shape((None, None, 12, 5)) == (None, None, 6, 20)


def test_space_to_depth_config_round_trip():
    layer = models.SpaceToDepth(4, name="s2d")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, models.SpaceToDepth)
    assert (clone.block_size, clone.name) == (4, "s2d")


def _layer_after(model, layer):
    """The single layer that consumes ``layer``'s output."""
    consumers = [l for l in model.layers if any(
        t is layer.output for t in tf.nest.flatten(l.input))]
    assert len(consumers) == 1, (layer.name, [c.name for c in consumers])
    return consumers[0]


@pytest.mark.parametrize("name", models.NAMES)
def test_every_conv_is_followed_by_batchnorm_then_relu(name):
    model = models.build(name, num_classes=10, width=TINY)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == (16 if name.startswith("net1") else 14)
    *body, head = convs
    for conv in body:
        bn = _layer_after(model, conv)
        assert isinstance(bn, keras.layers.BatchNormalization), conv.name
        assert isinstance(_layer_after(model, bn), keras.layers.ReLU), conv.name
    after_head = _layer_after(model, head)
    if name == "net1":  # head: BN, no ReLU; the others go straight to pooling
        assert isinstance(after_head, keras.layers.BatchNormalization)
        after_head = _layer_after(model, after_head)
    assert isinstance(after_head, keras.layers.GlobalAveragePooling2D)


def test_net2_convs_have_bias_l2_and_variance_scaling_and_net1_convs_have_none():
    net2 = models.build("net2", num_classes=10, width=TINY)
    for conv in [l for l in net2.layers if isinstance(l, keras.layers.Conv2D)]:
        assert conv.use_bias
        assert isinstance(conv.kernel_initializer, keras.initializers.VarianceScaling)
        assert type(conv.kernel_initializer) is keras.initializers.VarianceScaling
        assert conv.kernel_regularizer.get_config() == {"l2": pytest.approx(2e-4)}
    assert len(net2.losses) == 14
    net1 = models.build("net1", num_classes=10, width=TINY)
    student = models.build("net1_student", num_classes=10, width=TINY)
    for model, bias in ((net1, False), (student, True)):
        for conv in [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]:
            assert conv.use_bias is bias
            assert conv.kernel_regularizer is None
    assert net1.losses == [] and student.losses == []


@pytest.mark.parametrize("name", models.NAMES)
def test_width_multiplier_keeps_the_topology_and_makes_it_tiny(name):
    full = models.build(name, num_classes=10)
    tiny = models.build(name, num_classes=10, width=TINY)
    assert [(type(l), l.name) for l in tiny.layers] == [(type(l), l.name) for l in full.layers]
    assert 10_000 < tiny.count_params() < 100_000 < full.count_params()
    assert tiny.name == f"{name}_w0.0625"


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_output_is_float32_under_mixed_precision(policy, restore_policy):
    keras.config.set_dtype_policy(policy)
    model = models.build("net1", num_classes=10, width=TINY)
    half = policy.split("_")[1]
    assert model.get_layer("block1_1_conv").compute_dtype == half
    assert model.get_layer("block2_s2d").compute_dtype == half
    probs = model(_pixels(2, 16), training=False)
    assert probs.dtype == tf.float32
    np.testing.assert_allclose(probs.numpy().sum(axis=1), 1.0, rtol=1e-3)


def test_restore_policy_fixture_left_float32():
    assert keras.config.dtype_policy().name == "float32"


def test_one_xla_compiled_training_step_lowers_the_loss():
    """bench.make_train_step: loss + grads + ``optimizer.apply`` in one jit_compile function."""
    keras.utils.set_random_seed(0)
    model = models.build("net1", num_classes=10, width=TINY)
    # Keras silently drops compile(jit_compile=True) if any layer opts out of XLA.
    assert all(layer.supports_jit for layer in model.layers)
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    step = bench.make_train_step(model, optimizer, jit_compile=True)
    images = tf.constant(_pixels(4, 8))
    labels = tf.constant([0, 1, 2, 3])
    # Lowering to HLO fails for anything XLA cannot compile: proof that the step is XLA.
    assert "HloModule" in step.experimental_get_compiler_ir(images, labels)(stage="hlo")
    before = float(step(images, labels))  # each call returns the loss before its update
    after = float(step(images, labels))
    assert after < before


def test_saved_model_loads_back_with_identical_predictions_and_no_custom_objects(tmp_path):
    """A fresh interpreter must fail to load without ``import models`` and succeed with it."""
    model = models.build("net1", num_classes=10, width=TINY)
    x = _pixels(2, 32)
    model(x, training=True)  # moving statistics != their initial values
    path = str(tmp_path / "net1.keras")
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict(x, verbose=0))
    out = _run_python(f"""
        import os, numpy as np, keras
        try:
            keras.saving.load_model({path!r})
        except Exception as e:
            print("without models:", type(e).__name__)
        import models  # registering SpaceToDepth is all that loading needs
        loaded = keras.saving.load_model({path!r})  # safe_mode, no custom_objects
        assert loaded.name == "net1_w0.0625", loaded.name
        assert isinstance(loaded.get_layer("block2_s2d"), models.SpaceToDepth)
        got = loaded.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)
        np.testing.assert_array_equal(got, np.load({str(tmp_path / 'expected.npy')!r}))
        print("loaded ok", flush=True)
        os._exit(0)  # skip the slow interpreter teardown
    """)
    assert "without models:" in out and "loaded ok" in out


def test_training_step_runs_under_mirrored_strategy_with_xla():
    """Two logical CPUs; per-replica forward + loss + grads in one XLA function (see
    docs/xla-and-distribution.md), ``optimizer.apply`` on the all-reduced gradients."""
    out = _run_python("""
        import os, numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import models
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = models.build("net2", num_classes=10, width=1/16)
            optimizer = keras.optimizers.SGD(0.05)
            optimizer.build(model.trainable_variables)
        variables = model.trainable_variables

        @tf.function(jit_compile=True)
        def grads_fn(images, labels):
            with tf.GradientTape() as tape:
                probs = model(images, training=True)
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probs))
            return loss, tape.gradient(loss, variables)

        def replica_step(images, labels):
            loss, grads = grads_fn(images, labels)
            optimizer.apply(grads, variables)
            return loss

        @tf.function
        def train_step(images, labels):
            losses = strategy.run(replica_step, (images, labels))
            return strategy.reduce("MEAN", losses, axis=None)

        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
        y = np.arange(8, dtype=np.int32)
        ds = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors((x, y)).repeat())
        it = iter(ds)
        initial = variables[0].numpy()
        losses = [float(train_step(*next(it))) for _ in range(2)]
        assert strategy.num_replicas_in_sync == 2
        assert all(np.isfinite(losses)) and losses[1] < losses[0], losses
        kernel = strategy.experimental_local_results(variables[0].value)  # one per replica
        np.testing.assert_allclose(kernel[0].numpy(), kernel[1].numpy(), rtol=1e-6)
        assert not np.allclose(kernel[0].numpy(), initial)
        print("mirrored ok", losses, flush=True)
        os._exit(0)  # skip the slow interpreter teardown of the strategy's threads
    """)
    assert "mirrored ok" in out


def test_conv_flops_match_the_formula_and_scale_with_area():
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    single = keras.Model(inputs, outputs)
    assert bench.conv_flops(single) == 2 * 16 * 16 * 3 * 3 * 3 * 8
    at32 = bench.gflops_per_image("net2", 32, 10, TINY)
    at64 = bench.gflops_per_image("net2", 64, 10, TINY)
    assert at64 == pytest.approx(4 * at32, rel=1e-6)
    with pytest.raises(ValueError, match="image_size"):
        bench.conv_flops(models.build("net2", num_classes=10, width=TINY))


def test_bench_reports_throughput_and_flops_for_a_tiny_net():
    lines = []
    summary = bench.run_benchmark(["net2"], batch=2, size=16, steps=1, warmup=1, xla=False,
                                  precision="float32", width=TINY, num_classes=10,
                                  printer=lines.append)
    (result,) = summary["results"]
    assert result["images_per_sec"] > 0 and np.isfinite(result["final_loss"])
    assert result["fwd_gflops_per_image"] == pytest.approx(
        bench.gflops_per_image("net2", 16, 10, TINY), abs=1e-3)
    assert len(lines) == 1 and "img/s" in lines[0]
    assert keras.config.dtype_policy().name == "float32"
