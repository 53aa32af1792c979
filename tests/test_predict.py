"""training.predict: what a PATH stands for, header checks, one clear line per bad file with
the rest predicted, output formats and the exit statuses the README states."""

from __future__ import annotations

import io
import json
import os
import runpy
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import forget_tool_flags, save_tiny_net2  # noqa: E402
from training import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
WNIDS = [f"n{i:08d}" for i in range(10)]
NAMES = [f"class {i}" for i in range(10)]


def encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buf, fmt)
    return buf.getvalue()


def rgb(h=64, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


# --- fast: pure functions ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt,mode", [("PNG", None), ("GIF", None), ("BMP", None),
                                      ("JPEG", None), ("JPEG", "L"), ("JPEG", "CMYK")])
def test_header_size_reads_width_and_height_without_decoding(fmt, mode):
    assert predict.header_size(encode(rgb(37, 53), fmt, mode)) == (53, 37)


def test_header_size_of_non_images_is_unknown():
    assert predict.header_size(b"hello") is None
    assert predict.header_size(b"\xff\xd8\xff") is None


def test_check_bytes_names_empty_too_small_and_too_large_images():
    checks = {"min_size": 8, "max_pixels": 10_000}
    assert predict.check_bytes(b"", **checks) == "empty file"
    assert predict.check_bytes(encode(rgb(1, 1), "PNG"), **checks) == (
        "image is 1x1, smaller than --min_size=8 px")
    assert predict.check_bytes(encode(rgb(100, 101), "PNG"), **checks) == (
        "image is 101x100 (0.0 MP), over --max_pixels=10000")
    assert predict.check_bytes(encode(rgb(99, 101), "PNG"), **checks) is None
    assert predict.check_bytes(b"not an image", **checks) is None  # left to the decoder


def test_decode_errors_become_one_short_line():
    import tensorflow as tf
    graph_error = tf.errors.InvalidArgumentError(None, None, (
        "Graph execution error:\n\nDetected at node map/while/DecodeImage defined at (most "
        "recent call last):\n  File \"<frozen runpy>\", line 198, in _run_module_as_main\n\n"
        "<stack traces unavailable>\njpeg::Uncompress failed. Invalid JPEG "
        "data or crop window.\n\t [[{{node map/while/DecodeImage}}]] [Op:__inference_sig_1]"))
    assert predict.decode_error_reason(graph_error) == (
        "cannot decode: jpeg::Uncompress failed. Invalid JPEG data or crop window.")
    try:
        tf.io.decode_image(b"hello")
    except tf.errors.InvalidArgumentError as e:
        assert predict.decode_error_reason(e).startswith("not an image (unknown format")


def test_paths_expand_to_folders_recursively_zips_stdin_and_missing_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.JPG", "a/b/y.png", "a/notes.txt", "z.gif"):
        (tmp_path / name).write_bytes(b"data of " + name.encode())
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as z:
        z.writestr("in/one.jpeg", b"zipped")
        z.writestr("in/readme.md", b"skip")
    stdin = io.StringIO(f"{tmp_path / 'z.gif'}\n\n{tmp_path / 'imgs.zip'}\n")
    sources, failures = predict.list_sources(
        [str(tmp_path / "a"), "-", str(tmp_path / "missing.jpg"), str(tmp_path / "a/notes.txt")],
        stdin=stdin)
    labels = [s.label for s in sources]
    assert labels == [str(tmp_path / "a/b/y.png"), str(tmp_path / "a/x.JPG"),
                      str(tmp_path / "z.gif"), f"{tmp_path / 'imgs.zip'}:in/one.jpeg",
                      str(tmp_path / "a/notes.txt")]  # a file named explicitly is tried
    assert sources[3].read() == b"zipped"
    assert failures == [predict.Failure(str(tmp_path / "missing.jpg"),
                                        "no such file or folder")]


def test_a_batch_with_a_bad_image_predicts_the_others():
    import tensorflow as tf
    calls = []

    def fake(batch):
        calls.append(len(batch))
        if b"bad" in batch:
            raise tf.errors.InvalidArgumentError(None, None, "Unknown image file format. x")
        return {"n": np.array([len(b) for b in batch])}

    items = [("a", b"aa"), ("b", b"bad"), ("c", b"cccc")]
    got = predict.predict_batch(fake, items)
    assert [(label, r if isinstance(r, str) else int(r["n"])) for label, r in got] == [
        ("a", 2), ("b", "not an image (unknown format; JPEG, PNG, GIF, BMP or WebP expected)"),
        ("c", 4)]
    assert calls == [3, 1, 1, 1]


def test_rows_are_csv_with_a_header_or_json_lines():
    row = {"top5_wnids": np.array([b"n1", b"n2"]), "top5_names": np.array([b"a, b", b"c"]),
           "top5_probabilities": np.array([0.75, 0.25], np.float32)}
    assert predict.format_row("f.jpg", row, "csv") == 'f.jpg,n1,"a, b",0.750000,n2,c,0.250000\n'
    assert json.loads(predict.format_row("f.jpg", row, "jsonl")) == {
        "file": "f.jpg", "wnids": ["n1", "n2"], "names": ["a, b", "c"],
        "probabilities": [0.75, 0.25]}
    assert predict.csv_header(2) == (
        "file,wnid_1,name_1,probability_1,wnid_2,name_2,probability_2\n")


# --- slow: a model on a folder with bad files mixed in -----------------------------------------

@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def tiny_keras(tmp_path_factory) -> str:
    """A random-init tiny Network 2 (32 px input, 10 classes) saved with its class list."""
    return save_tiny_net2(str(tmp_path_factory.mktemp("tiny") / "tiny.keras"), WNIDS, NAMES)


GOOD = 12


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def mixed_folder(tmp_path_factory):
    """Good images (JPEG/PNG, a CMYK JPEG, a 16-bit PNG) and bad files; ``{name: reason}``."""
    folder = tmp_path_factory.mktemp("mixed")
    for i in range(GOOD):
        (folder / f"good{i:02d}.{'jpg' if i % 2 else 'png'}").write_bytes(
            encode(rgb(50 + i, 64, seed=i), "JPEG" if i % 2 else "PNG"))
    (folder / "sub").mkdir()
    (folder / "sub" / "cmyk.jpg").write_bytes(encode(rgb(seed=99), "JPEG", "CMYK"))
    grey = rgb(seed=7)[..., 0]
    (folder / "sub" / "deep16.png").write_bytes(encode(grey.astype(np.uint16) * 257, "PNG"))
    (folder / "sub" / "deep8.png").write_bytes(encode(grey, "PNG"))
    full = encode(rgb(seed=3), "JPEG")
    bad = {"empty.jpg": b"", "text.jpg": b"just some text, not an image",
           "truncated.jpg": full[:len(full) // 2], "one.png": encode(rgb(1, 1), "PNG")}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    big = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(big, "JPEG")
    (folder / "huge.jpg").write_bytes(big.getvalue())
    (folder / "notes.txt").write_text("not looked at: no image extension")
    reasons = {"empty.jpg": "empty file", "text.jpg": "not an image (unknown format",
               "truncated.jpg": "cannot decode: ", "one.png": "image is 1x1, smaller",
               "huge.jpg": "image is 10000x10000 (100.0 MP), over --max_pixels=89478485"}
    return folder, reasons


@pytest.mark.slow  # builds a model and runs it
def test_every_good_file_is_predicted_and_every_bad_one_named_once(tiny_keras, mixed_folder):
    folder, reasons = mixed_folder
    lines, reported = [], []
    result = predict.predict_files(tiny_keras, [str(folder)], write=lines.append, fmt="jsonl",
                                   batch_size=4, progress=False, on_failure=reported.append)
    rows = {os.path.relpath(r["file"], folder): r for r in map(json.loads, lines)}
    assert sorted(rows) == sorted([f"good{i:02d}.{'jpg' if i % 2 else 'png'}"
                                   for i in range(GOOD)] + ["sub/cmyk.jpg", "sub/deep16.png",
                                                            "sub/deep8.png"])
    assert result["predicted"] == len(rows)
    failed = {os.path.basename(f.label): f.reason for f in result["failed"]}
    assert sorted(failed) == sorted(reasons) and reported == result["failed"]
    for name, start in reasons.items():
        assert failed[name].startswith(start) and "\n" not in failed[name], (name, failed[name])
    for row in rows.values():
        assert row["names"] == [NAMES[WNIDS.index(w)] for w in row["wnids"]]
        assert len(row["probabilities"]) == 5
    assert rows["sub/deep16.png"]["probabilities"] == rows["sub/deep8.png"]["probabilities"]


@pytest.mark.slow  # a subprocess importing TensorFlow
@pytest.mark.subprocess  # libjpeg's C++ ERROR line on fd 2 is silenced only in a fresh process
def test_cli_names_each_bad_file_in_one_line_and_exits_1_when_a_file_failed(tiny_keras,
                                                                            mixed_folder,
                                                                            tmp_path):
    folder, reasons = mixed_folder
    out = tmp_path / "preds.csv"
    proc = subprocess.run([sys.executable, "-m", "training.predict", f"--model={tiny_keras}",
                           f"--output={out}", str(folder)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == len(reasons) + 1 and err[-1].startswith(
        f"predict: {GOOD + 3} images predicted, {len(reasons)} failed in"), err
    assert "images/s)" in err[-1]
    assert len(out.read_text().splitlines()) == 1 + GOOD + 3


def _predict_cli(monkeypatch, *args, stdin=""):
    """``python -m training.predict <args>`` in-process (needs ``fresh_flags``): status."""
    monkeypatch.setattr(sys, "argv", ["predict", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    with pytest.raises(SystemExit) as done, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'training.predict' found in sys.modules",
                                RuntimeWarning)  # this process imported it first
        runpy.run_module("training.predict", run_name="__main__", alter_sys=True)
    return done.value.code



@pytest.mark.slow  # loads the model and predicts
def test_cli_exits_0_with_skip_failures_reading_paths_from_stdin(tiny_keras, mixed_folder,
                                                                 fresh_flags, monkeypatch,
                                                                 capsys):
    folder, _ = mixed_folder
    status = _predict_cli(monkeypatch, f"--model={tiny_keras}", "--skip_failures",
                          "--format=jsonl", "-",
                          stdin=f"{folder / 'empty.jpg'}\n{folder / 'good00.png'}\n")
    out, err = capsys.readouterr()
    assert status == 0, err
    assert [json.loads(ln)["file"] for ln in out.splitlines()] == [str(folder / "good00.png")]
    assert f"predict: {folder / 'empty.jpg'}: empty file" in err.splitlines()


# Usage errors: (arguments, what the one line says); each exits 2 before any model is loaded.
USAGE = [
    (["--no_such_flag"], "no_such_flag"),
    (["--model=m.keras"], "at least one PATH"),
    (["--model=no.keras", "."], "no such model file"),  # ".": an empty folder
]


def test_cli_exits_2_with_one_line_for_usage(fresh_flags, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    for args, says in USAGE:
        forget_tool_flags(fresh_flags)
        status = _predict_cli(monkeypatch, *args)
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and says in err, (args, status, err)
