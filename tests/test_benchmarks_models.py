"""Tests for ``benchmarks.models`` and ``benchmarks.train_step``: they time the product's own
train step (TensorFlow) or a Keras-only step (any backend), count FLOPs right, and print a
table, the machine and one JSON line. Everything runs tiny (16 px, 10 classes, one step): the
FLOP counts use Network 2 at width 1/16, the timed steps the three-conv ``smoke`` network
(what is checked is the benchmark around the step, not the network). The command lines run
in-process as ``python -m <tool>`` would (conftest's ``fresh_flags``)."""

import json
import os
import runpy
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
from conftest import forget_tool_flags

import models
from benchmarks import models as models_bench
from benchmarks import train_step as train_step_bench
from training import steps as steps_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 1 / 16
SMOKE = "smoke"  # three convs: the cheapest model a timed step can take


def _run_tool(monkeypatch, module, *args):
    """``python -m <module> <args>`` in-process (needs ``fresh_flags``); its exit status."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(SystemExit) as done, warnings.catch_warnings():
        # "found in sys.modules": this process imported the tool before running it.
        warnings.filterwarnings("ignore", "'benchmarks", RuntimeWarning)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    return done.value.code or 0


@pytest.fixture
def product_steps(monkeypatch):
    """Records every call of the product's ``make_train_step`` (then calls it)."""
    calls = []
    real = steps_lib.make_train_step

    def recording(model, optimizer, strategy, **kwargs):
        calls.append({"model": model.name, "optimizer": optimizer, **kwargs})
        return real(model, optimizer, strategy, **kwargs)

    monkeypatch.setattr(steps_lib, "make_train_step", recording)
    return calls


def test_conv_flops_match_the_formula_and_scale_with_area():
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    single = keras.Model(inputs, outputs)
    assert models_bench.conv_flops(single) == 2 * 16 * 16 * 3 * 3 * 3 * 8
    at32 = models_bench.gflops_per_image("net2", 32, 10, TINY)
    at64 = models_bench.gflops_per_image("net2", 64, 10, TINY)
    assert at64 == pytest.approx(4 * at32, rel=1e-6)
    with pytest.raises(ValueError, match="image_size"):
        models_bench.conv_flops(models.build("net2", num_classes=10, width=TINY))


@pytest.mark.slow
def test_models_bench_times_the_products_train_step_with_the_runs_optimizer(product_steps):
    lines = []
    summary = models_bench.run_benchmark([SMOKE], batch=2, size=16, steps=1, warmup=1,
                                         xla=False, precision="float32", width=TINY,
                                         num_classes=10, printer=lines.append)
    (call,) = product_steps
    assert call["model"] == SMOKE and call["xla"] is False and call["recipe"] is None
    assert type(call["optimizer"]).__name__.startswith("RMSprop")
    (r,) = summary["results"]
    assert r["images_per_s"] > 0 and np.isfinite(r["loss"])
    assert r["s_per_100k_images"] == pytest.approx(1e5 / r["images_per_s"])
    assert r["fwd_gflops_per_image"] == pytest.approx(
        models_bench.gflops_per_image(SMOKE, 16, 10, TINY))
    assert r["fwd_gflops_per_image"] > 0
    assert r["achieved_tflops"] == pytest.approx(
        r["images_per_s"] * 3 * r["fwd_gflops_per_image"] / 1e3)
    assert "make_train_step" in summary["step"]
    assert lines[1].startswith("| model | batch | px |") and lines[2].startswith("| smoke |")
    assert lines[-1].startswith("machine: device ") and summary["machine"]["keras"]
    json.dumps(summary)  # the CLI's last line
    assert keras.config.dtype_policy().name == "float32"


def test_keras_only_step_lowers_the_loss_without_the_products_step(product_steps):
    """The backend-neutral step (here on TensorFlow, the backend the tests have)."""
    keras.utils.set_random_seed(0)
    model = models.build(SMOKE, num_classes=10, image_size=16)
    optimizer = models_bench.keras_optimizer("rmsprop", 1e-3)
    optimizer.build(model.trainable_variables)
    step = models_bench.make_keras_step(model, optimizer, xla=False)
    state = models_bench.initial_state(model, optimizer)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    labels = np.arange(8, dtype=np.int32) % 10
    losses = []
    for _ in range(4):
        state, loss = step(state, images, labels)
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses
    assert int(optimizer.iterations.numpy()) == 4
    assert product_steps == []


def test_backend_neutral_mode_reports_a_row_and_refuses_float16(product_steps):
    summary = models_bench.run_benchmark([SMOKE], batch=2, size=16, steps=1, warmup=1,
                                         xla=False, precision="mixed_bfloat16", width=TINY,
                                         num_classes=10, backend_neutral=True,
                                         printer=lambda line: None)
    (r,) = summary["results"]
    assert r["model"] == SMOKE and r["images_per_s"] > 0 and np.isfinite(r["loss"])
    assert summary["step"].startswith("Keras-only") and product_steps == []
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(ValueError, match="loss scaling"):
        models_bench.time_backend_neutral(SMOKE, batch=2, size=16, steps=1, warmup=1,
                                          xla=False, precision="mixed_float16", width=TINY)


@pytest.mark.slow  # compiles the step with XLA
def test_train_step_bench_times_the_product_step_with_xla_on_and_off(product_steps):
    lines = []
    summary = train_step_bench.run_benchmark(
        [SMOKE], image_size=16, batch_size=2, steps=1, warmup=1, precisions=["float32"],
        width=TINY, recipe="none", printer=lines.append)
    # (--augment=<recipe> passes augment.get_recipe(recipe); compiling one takes a minute.)
    assert [(c["xla"], c["recipe"]) for c in product_steps] == [(True, None), (False, None)]
    assert [(r["xla"], r["augment"]) for r in summary["results"]] == [
        (True, "none"), (False, "none")]
    assert all(r["images_per_s"] > 0 and np.isfinite(r["loss"]) for r in summary["results"])
    assert lines[0].startswith("| model |") and len(lines) == 1 + 2 + 1
    assert lines[-1].startswith("machine: ")


def _run(args, env=None, python=sys.executable, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO, **(env or {}))
    return subprocess.run([python, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_models_bench_cli_prints_a_table_the_machine_and_one_json_line(fresh_flags, monkeypatch,
                                                                       capsys):
    status = _run_tool(monkeypatch, "benchmarks.models", f"--models={SMOKE}", "--batch=2",
                       "--size=16", "--steps=1", "--num_classes=10", "--noxla")
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["results"][0]["model"] == SMOKE
    assert any(l.startswith(f"| {SMOKE} | 2 | 16 | float32 |") for l in lines)
    assert lines[-2].startswith("machine: device ")


# Every refusal a table row: (module, its flags, the flag the one error line names).
BAD_FLAGS = [
    ("benchmarks.models", ["--models=net3"], "--models"),
    ("benchmarks.models", ["--size=20"], "--size"),
    ("benchmarks.train_step", ["--models=net3"], "--models"),
    ("benchmarks.train_step", ["--augment=nope"], "--augment"),
]


def test_bench_clis_refuse_bad_flags_with_one_line_and_exit_2(fresh_flags, monkeypatch, capsys,
                                                               product_steps):
    for module, args, named in BAD_FLAGS:
        status = _run_tool(monkeypatch, module, *args)
        err = capsys.readouterr().err
        errors = [l for l in err.splitlines() if l.startswith(module)]
        assert status == 2, (module, args, err[-2000:])
        assert len(errors) == 1 and named in errors[0], (module, args, err[-2000:])
        forget_tool_flags(fresh_flags)
    assert product_steps == []  # refused before anything was timed



def _jax_python():
    """An interpreter with JAX and Keras (``TIN_JAX_PYTHON``, else this one), or None."""
    python = os.environ.get("TIN_JAX_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", "import jax, keras"], capture_output=True,
                           env=dict(os.environ, KERAS_BACKEND="jax"))
    return python if probe.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.subprocess
def test_backend_neutral_mode_runs_on_jax_without_importing_tensorflow():
    """Optional: runs where JAX is installed (``TIN_JAX_PYTHON`` may name a separate venv)."""
    python = _jax_python()
    if python is None:
        pytest.skip("JAX is not installed (set TIN_JAX_PYTHON to a python with jax and keras)")
    code = textwrap.dedent("""
        import json, sys
        from benchmarks import models as models_bench
        summary = models_bench.run_benchmark(
            ["net1", "net2"], batch=2, size=16, steps=2, warmup=1, xla=True,
            precision="mixed_bfloat16", width=1/16, num_classes=10, backend_neutral=True)
        assert summary["machine"]["backend"].startswith("jax"), summary["machine"]
        assert "tensorflow" not in sys.modules, "the backend-neutral mode imported TensorFlow"
        print(json.dumps(summary))
    """)
    proc = _run(["-c", code], env={"KERAS_BACKEND": "jax"}, python=python)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    assert [r["model"] for r in results] == ["net1_w0.0625", "net2_w0.0625"]
    assert all(r["images_per_s"] > 0 for r in results)
