"""Tests of the data benchmarks (``benchmarks/pipeline.py``, ``benchmarks/build.py``) on a
tiny generated dataset: every stage measures something, the figures are JSON, the imgaug
runner works without the real sample, and bad input exits 2.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import warnings

import numpy as np
import pytest
from conftest import forget_tool_flags
import tensorflow as tf

from benchmarks import build as build_bench
from benchmarks import pipeline as bench
from tinyimagenet_tfrecords import build
from tinyimagenet_tfrecords import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def tiny(tmp_path_factory):
    """A generated 3-class dataset folder and its raw build."""
    root = tmp_path_factory.mktemp("bench")
    src = synthetic.make_synthetic_dataset(str(root / "src"), num_classes=3,
                                           train_per_class=20, num_val=6, num_test=3,
                                           image_size=32, workers=1)
    out = str(root / "build")
    build.build_dataset(src, out, shards=2, workers=1, splits=("train",), progress=False)
    return src, out


def test_student_numpy_recipe_keeps_shape_and_range_and_changes_about_half():
    rng = np.random.default_rng(0)
    changed = 0
    for i in range(40):
        img = np.asarray(np.random.default_rng(i).uniform(0, 255, (32, 32, 3)), np.float32)
        out = bench.student_net2_numpy(img, rng)
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255
        changed += not np.array_equal(out, img)
    assert 10 <= changed <= 30  # Sometimes(0.5, ...)


@pytest.mark.slow
def test_bench_measures_every_stage_and_reports_json(tiny):
    src, data = tiny
    figures = bench.run_bench(
        data, src=src, batch_size=8, image_size=16, resize_sizes=[8], seconds=0.1,
        max_batches=2, recipe_name="flip", recipe=lambda images, seed: tf.reverse(images, [2]),
        stages=set(bench.STAGES), profile=True, trace_dir=None, warmup_seconds=0.0,
        log=lambda s: None)
    assert set(figures["stages"]) == {"read_parse", "decode", "resize:16", "resize:8",
                                      "train", "train_autotune_on", "train_augment",
                                      "train_augment_no_xla", "old_way", "old_way_no_augment"}
    assert all(v > 0 for v in figures["stages"].values())
    assert figures["profile"]["decode_ms"] > 0 and "augment_xla_ms" in figures["profile"]
    assert "| train_augment |" in bench.format_table(figures)
    assert figures["train_over_train_autotune_on"] > 0
    assert "| train_over_train_autotune_on |" in bench.format_table(figures)
    assert json.loads(json.dumps(figures)) == figures
    assert figures["machine"]["cpus"] == os.cpu_count() and figures["machine"]["tensorflow"]
    assert any("old_way_imgaug skipped: no --imgaug_python" in n for n in figures["notes"])
    no_recipe = bench.run_bench(
        data, src=src, batch_size=8, image_size=32, resize_sizes=[], seconds=0.1,
        max_batches=1, recipe_name="none", recipe=None, stages={"train_augment"},
        profile=False, trace_dir=None, warmup_seconds=0.0, log=lambda s: None)
    assert no_recipe["stages"] == {} and "no recipe" in no_recipe["notes"][0]


def test_old_way_imgaug_runner_times_loading_and_names_a_missing_imgaug(tiny):
    src, _ = tiny
    loading = bench.old_way_imgaug(sys.executable, src, batch_size=8, image_size=32,
                                   seconds=0.05, augment=False)
    assert loading["images"] >= 8 and loading["images_per_s"] > 0
    try:
        import imgaug  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except Exception:  # pylint: disable=broad-except  # imgaug 0.4 fails on numpy 2
        with pytest.raises(RuntimeError, match="old_way_imgaug.py"):
            bench.old_way_imgaug(sys.executable, src, batch_size=8, image_size=32,
                                 seconds=0.05)


def test_build_bench_times_each_storage(tiny, tmp_path):
    src, _ = tiny
    rows = build_bench.run_bench(src, str(tmp_path), ["jpeg", "raw"], workers=1)
    assert [r["storage"] for r in rows] == ["jpeg", "raw"]
    assert all(r["images"] == 69 and r["images_per_s"] > 0 for r in rows)
    assert rows[1]["output_mb"] > rows[0]["output_mb"]  # raw is larger
    assert "| raw | 1 | 69 |" in build_bench.format_table(rows)



# Bad input to each data benchmark: (``python`` arguments, what the one error line names).
BAD_INPUT = [
    (["-m", "benchmarks.pipeline", "--data=/no/such/build"], "/no/such/build"),
    (["-m", "benchmarks.pipeline", "--data=x", "--stages=warp"], "warp"),
    (["benchmarks/old_way_imgaug.py", "--src=/no/such/src", "--noaugment"], "/no/such/src"),
]


def test_data_benchmarks_exit_2_with_one_line_on_bad_input(fresh_flags, monkeypatch, capsys):
    """Each runs in-process as ``python <args>`` would (``runpy``; the absl tool on a fresh
    flag registry, the argparse script as ``__main__``)."""
    monkeypatch.chdir(REPO)
    for args, expected in BAD_INPUT:
        forget_tool_flags(fresh_flags)
        module = args[1] if args[0] == "-m" else None
        monkeypatch.setattr(sys, "argv", [module or args[0], *args[2 if module else 1:]])
        with pytest.raises(SystemExit) as done, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'benchmarks", RuntimeWarning)  # imported above
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(args[0], run_name="__main__")
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert done.value.code == 2, (args, err)
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, (args, err)
