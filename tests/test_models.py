"""Tests for ``models``: the papers' parameter counts, topology, serialization, XLA, precision,
and independence from TensorFlow (the networks run on any Keras 3 backend).

Full-size networks are only built (parameter counts) or run once at 16 px; anything that
trains uses the width-1/16 variants with 10 classes.
"""

import ast
import functools
import glob
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import models

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


@functools.cache
def _built(name, num_classes=10, width=TINY):
    """One instance per network and size for the tests that only inspect it or run it at
    inference (building a full network costs about a CPU-second); never train or mutate it."""
    return models.build(name, num_classes=num_classes, width=width)


@pytest.fixture
def restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("name, expected", [("net1", 17_927_040), ("net2", 11_822_920),
                                            ("net1_student", 17_931_368)])
def test_full_networks_have_the_papers_parameter_counts(name, expected):
    model = _built(name, num_classes=200, width=1.0)
    assert model.count_params() == expected
    assert model.name == name


def test_names_lists_every_buildable_network():
    assert models.NETWORKS == ("net1", "net2", "net1_student")
    assert models.NAMES == models.NETWORKS + ("smoke",)
    with pytest.raises(ValueError, match="unknown model"):
        models.build("net3")


def test_full_net1_runs_at_16px_and_reports_shapes_for_any_multiple_of_8():
    model = _built("net1", num_classes=200, width=1.0)
    assert model.input_shape == (None, None, None, 3)
    out = model(_pixels(1, 16), training=False)
    assert out.shape == (1, 200)
    for size in (16, 32, 64):  # symbolic: no 64 px forward pass of the full net
        spec = model.compute_output_spec(keras.KerasTensor((2, size, size, 3)))
        assert spec.shape == (2, 200)


@pytest.mark.parametrize("name", models.NETWORKS)
def test_one_model_accepts_16_32_and_64px_without_rebuilding(name):
    model = _built(name)
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
    model = _built("net1")
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


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_space_to_depth_matches_tf_nn_space_to_depth_with_unknown_height_and_width(dtype):
    layer = models.SpaceToDepth(2)
    graph = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 5], dtype)])
    x = tf.cast(tf.random.stateless_normal([3, 4, 10, 5], seed=[3, 4]), dtype)
    np.testing.assert_array_equal(graph(x).numpy(), tf.nn.space_to_depth(x, 2).numpy())


# What the code before the keras.ops rewrite saved for ``SpaceToDepth(2, name="s2d")``
# (``serialize_keras_object``) and for a model holding it (``model.to_json()``), verbatim.
_SAVED_LAYER = {
    "module": "models.layers", "class_name": "SpaceToDepth",
    "config": {"name": "s2d", "trainable": True,
               "dtype": {"module": "keras", "class_name": "DTypePolicy",
                         "config": {"name": "float32"}, "registered_name": None},
               "block_size": 2},
    "registered_name": "tinyimagenet_densenet>SpaceToDepth"}
_SAVED_MODEL_JSON = (
    '{"module": "keras.src.models.functional", "class_name": "Functional", "config": {"name": '
    '"old_s2d", "trainable": true, "layers": [{"module": "keras.layers", "class_name": '
    '"InputLayer", "config": {"batch_shape": [null, null, null, 3], "dtype": "float32", '
    '"sparse": false, "ragged": false, "name": "pixels", "optional": false}, "registered_name": '
    'null, "name": "pixels", "inbound_nodes": []}, {"module": "models.layers", "class_name": '
    '"SpaceToDepth", "config": {"name": "s2d", "trainable": true, "dtype": {"module": "keras", '
    '"class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": null}, '
    '"block_size": 2}, "registered_name": "tinyimagenet_densenet>SpaceToDepth", "build_config": '
    '{"input_shape": [null, null, null, 3]}, "name": "s2d", "inbound_nodes": [{"args": '
    '[{"class_name": "__keras_tensor__", "config": {"shape": [null, null, null, 3], "dtype": '
    '"float32", "keras_history": ["pixels", 0, 0]}}], "kwargs": {}}]}], "input_layers": '
    '["pixels", 0, 0], "output_layers": ["s2d", 0, 0]}, "registered_name": "Functional", '
    '"build_config": {"input_shape": null}, "compile_config": {}}')


def test_space_to_depth_serializes_exactly_as_before():
    layer = models.SpaceToDepth(2, name="s2d")
    assert keras.saving.serialize_keras_object(layer) == _SAVED_LAYER


def test_a_model_config_saved_before_the_rewrite_loads_and_computes_space_to_depth():
    loaded = keras.models.model_from_json(_SAVED_MODEL_JSON)
    assert isinstance(loaded.get_layer("s2d"), models.SpaceToDepth)
    x = tf.random.stateless_normal([2, 8, 6, 3], seed=[5, 6])
    np.testing.assert_array_equal(loaded(x).numpy(), tf.nn.space_to_depth(x, 2).numpy())
    assert json.loads(loaded.to_json()) == json.loads(_SAVED_MODEL_JSON)


def _imported_modules(path):
    """Every module name a file imports, at any depth, statically or via importlib/__import__."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__")):
            names.append(node.args[0].value)
    return names


def test_models_package_imports_nothing_from_tensorflow():
    """The networks use Keras only, so they run on the JAX and PyTorch backends too."""
    files = sorted(glob.glob(os.path.join(REPO, "models", "**", "*.py"), recursive=True))
    assert os.path.join(REPO, "models", "layers.py") in files
    offending = {os.path.relpath(f, REPO): name for f in files for name in _imported_modules(f)
                 if {"tensorflow", "tf_keras"} & set(name.split("."))}
    assert not offending, offending


def _jax_python():
    """An interpreter with JAX and Keras (``TIN_JAX_PYTHON``, else this one), or None."""
    python = os.environ.get("TIN_JAX_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", "import jax, keras"], capture_output=True,
                           env=dict(os.environ, KERAS_BACKEND="jax"))
    return python if probe.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.subprocess
def test_networks_train_under_the_jax_backend_without_tensorflow(tmp_path):
    """Optional: runs where JAX is installed (``TIN_JAX_PYTHON`` may name a separate venv)."""
    python = _jax_python()
    if python is None:
        pytest.skip("JAX is not installed (set TIN_JAX_PYTHON to a python with jax and keras)")
    x = tf.random.stateless_normal([2, 8, 12, 5], seed=[1, 2]).numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "s2d.npy", tf.nn.space_to_depth(x, 2).numpy())
    code = textwrap.dedent(f"""
        import sys, numpy as np, jax, keras
        import models
        assert keras.backend.backend() == "jax"
        x = np.load({str(tmp_path / 'x.npy')!r})
        s2d = np.asarray(models.SpaceToDepth(2)(x))
        np.testing.assert_array_equal(s2d, np.load({str(tmp_path / 's2d.npy')!r}))
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
        labels = np.arange(4) % 10
        for name in ("net1", "net2"):
            model = models.build(name, num_classes=10, width=1/16)
            def loss_fn(tv, ntv):
                probs, ntv, losses = model.stateless_call(tv, ntv, images, training=True,
                                                          return_losses=True)
                ce = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, probs))
                return ce + sum(losses), probs
            (loss, probs), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables])
            assert probs.shape == (4, 10) and np.isfinite(float(loss)), (name, loss)
            assert all(np.isfinite(np.asarray(g)).all() for g in grads)
            assert sum(float(jax.numpy.abs(g).sum()) for g in grads) > 0
        assert "tensorflow" not in sys.modules, "models imported TensorFlow"
        print("jax ok")
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO)
    proc = subprocess.run([python, "-c", code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "jax ok" in proc.stdout, proc.stderr[-3000:]


def _layer_after(model, layer):
    """The single layer that consumes ``layer``'s output."""
    consumers = [l for l in model.layers if any(
        t is layer.output for t in tf.nest.flatten(l.input))]
    assert len(consumers) == 1, (layer.name, [c.name for c in consumers])
    return consumers[0]


@pytest.mark.parametrize("name", models.NETWORKS)
def test_every_conv_is_followed_by_batchnorm_then_relu(name):
    model = _built(name)
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
    net2 = _built("net2")
    for conv in [l for l in net2.layers if isinstance(l, keras.layers.Conv2D)]:
        assert conv.use_bias
        assert isinstance(conv.kernel_initializer, keras.initializers.VarianceScaling)
        assert type(conv.kernel_initializer) is keras.initializers.VarianceScaling
        assert conv.kernel_regularizer.get_config() == {"l2": pytest.approx(2e-4)}
    assert len(net2.losses) == 14
    net1, student = _built("net1"), _built("net1_student")
    for model, bias in ((net1, False), (student, True)):
        for conv in [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]:
            assert conv.use_bias is bias
            assert conv.kernel_regularizer is None
    assert net1.losses == [] and student.losses == []


@pytest.mark.parametrize("name", models.NETWORKS)
def test_width_multiplier_keeps_the_topology_and_makes_it_tiny(name):
    full, tiny = _built(name, num_classes=200, width=1.0), _built(name)
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


@pytest.mark.slow
def test_net1_compiles_under_xla_in_the_products_train_step_and_lowers_the_loss():
    """``training.steps.make_train_step`` (default strategy): SpaceToDepth and every other layer
    lower to one XLA computation, and two steps on one batch lower the loss."""
    from training import steps as steps_lib

    keras.utils.set_random_seed(0)
    model = models.build("net1", num_classes=10, width=TINY)
    # Keras silently drops XLA for a whole step if any layer opts out of it.
    assert all(layer.supports_jit for layer in model.layers)
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    step = steps_lib.make_train_step(model, optimizer, tf.distribute.get_strategy(), recipe=None,
                                     global_batch_size=4, base_seed=0, xla=True)
    images, labels = tf.constant(_pixels(4, 8)), tf.constant([0, 1, 2, 3])
    args = (images, labels, tf.constant([0, 0], tf.int32))
    # Lowering to HLO fails for anything XLA cannot compile: proof that the step is XLA.
    assert "HloModule" in step.compute.experimental_get_compiler_ir(*args)(stage="hlo")
    it = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    before, after = (step.run(it, tf.constant(1)).numpy() for _ in range(2))
    # Totals are (ce_sum, correct, count, reg_sum) of the batch before each step's update.
    assert after[0] < before[0], (before, after)


@pytest.mark.slow
@pytest.mark.subprocess
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


@pytest.mark.slow
@pytest.mark.two_cpus
def test_products_train_step_runs_under_mirrored_strategy_with_xla():
    """``training.steps.make_train_step`` on two logical CPUs: per-replica forward + loss +
    grads XLA-compiled, ``optimizer.apply`` on the all-reduced gradients keeps the replicas'
    weights identical, and two steps on one batch lower the loss. An augmentation op runs
    inside the compiled step, as in training (always flipping: both steps see one batch)."""
    import augment
    from training import steps as steps_lib
    from training import strategy as strategy_lib
    strategy = strategy_lib.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    with strategy.scope():  # the smoke-test net: Network 1 under XLA is the next test's subject
        model = models.build("smoke", num_classes=10)
        optimizer = keras.optimizers.SGD(0.05)
        optimizer.build(model.trainable_variables)
    step = steps_lib.make_train_step(model, optimizer, strategy, recipe=augment.Fliplr(1.0),
                                     global_batch_size=8, base_seed=0, xla=True)
    x = _pixels(8, 16)
    y = np.arange(8, dtype=np.int32)
    it = iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((x, y)).repeat()))
    kernel = model.trainable_variables[0]
    initial = kernel.numpy()
    totals = [step.run(it, tf.constant(1)).numpy() for _ in range(2)]
    ce = [t[0] / t[2] for t in totals]
    assert [t[2] for t in totals] == [8, 8], totals  # both replicas' examples counted
    assert all(np.isfinite(ce)) and ce[1] < ce[0], ce
    assert steps_lib.train_step_xla_compiled(step)
    local = strategy.experimental_local_results(kernel.value)  # one copy per replica
    assert len(local) == 2
    np.testing.assert_allclose(local[0].numpy(), local[1].numpy(), rtol=1e-6)
    assert not np.allclose(local[0].numpy(), initial)


def test_smoke_network_has_every_layer_kind_the_networks_train_in_three_convs():
    """The loop's tests run on it: it must meet the same kinds of variables, losses and
    BatchNorm statistics as Network 2, and save and load back like it."""
    model = models.build("smoke", num_classes=10, image_size=16)
    kinds = {type(layer).__name__ for layer in model.layers}
    net2 = {type(layer).__name__ for layer in _built("net2").layers}
    assert kinds == net2
    assert len([l for l in model.layers if isinstance(l, keras.layers.Conv2D)]) == 3
    assert len(model.losses) == 3 and model.count_params() < 2_000
    probs = model(_pixels(2, 16), training=False).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
