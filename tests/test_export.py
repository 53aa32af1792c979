"""training.export / training.classes: the class list inside best.keras, the SavedModel's
preprocessing equal to evaluation's, a SavedModel that TensorFlow alone loads and serves, the
export at the end of training, and equality of every prediction path on the real sample."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import save_tiny_net2  # noqa: E402
from training import classes as classes_lib
from training.errors import RunError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
WNIDS = [f"n{i:08d}" for i in range(10)]


def _class_build(folder, classes):
    """An opened build holding only ``classes`` (``(wnid, name)`` in label order)."""
    from tinyimagenet_tfrecords import features
    from tinyimagenet_tfrecords import manifest as manifest_lib
    os.makedirs(folder, exist_ok=True)
    manifest = {"schema_version": features.SCHEMA_VERSION, "storage": "raw", "splits": {},
                "classes": [{"label": i, "wnid": w, "name": n}
                            for i, (w, n) in enumerate(classes)]}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest_lib.open_build(str(folder))
NAMES = [f"class {i}, the {i}th" for i in range(10)]


def encode(array: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    image = image.convert(mode) if mode else image
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def random_image(h=64, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def tiny_keras(tmp_path_factory) -> str:
    """A random-init tiny Network 2 (32 px input, 10 classes) saved with its class list."""
    return save_tiny_net2(str(tmp_path_factory.mktemp("tiny") / "tiny.keras"), WNIDS, NAMES)


# --- the class list inside the model -----------------------------------------------------------

def test_class_list_embedded_in_keras_file_is_read_back_and_keras_still_loads_it(tiny_keras):
    from training import evaluate
    record, where = classes_lib.model_classes(tiny_keras)
    assert (record["wnids"], record["names"], record["image_size"], where) == (
        WNIDS, NAMES, 32, tiny_keras)
    assert evaluate.load_model(tiny_keras).output_shape[-1] == 10
    with zipfile.ZipFile(tiny_keras) as z:  # re-embedding replaces the member, not adds one
        assert z.namelist().count(classes_lib.MEMBER) == 1


def test_re_embedding_replaces_the_class_list(tiny_keras, tmp_path):
    copy = str(tmp_path / "copy.keras")
    shutil.copy(tiny_keras, copy)
    classes_lib.embed(copy, classes_lib.info(WNIDS[::-1]))
    with zipfile.ZipFile(copy) as z:
        assert z.namelist().count(classes_lib.MEMBER) == 1
    assert classes_lib.embedded(copy)["wnids"] == WNIDS[::-1]


def test_sidecar_classes_json_is_the_fallback_and_the_embedded_list_wins(tiny_keras, tmp_path):
    bare = tmp_path / "bare.keras"
    with zipfile.ZipFile(tiny_keras) as src, zipfile.ZipFile(bare, "w") as dst:
        for item in src.infolist():
            if item.filename != classes_lib.MEMBER:
                dst.writestr(item, src.read(item.filename))
    assert classes_lib.model_classes(str(bare)) == (None, None)
    (tmp_path / "classes.json").write_text(json.dumps({"wnids": WNIDS}))
    record, where = classes_lib.model_classes(str(bare))
    assert (record["wnids"], record["names"], where) == (WNIDS, WNIDS,
                                                         str(tmp_path / "classes.json"))
    embedded_copy = tmp_path / "best.keras"
    shutil.copy(tiny_keras, embedded_copy)
    assert classes_lib.model_classes(str(embedded_copy))[0]["names"] == NAMES


def test_evaluate_checks_the_embedded_class_list_without_any_classes_json(tiny_keras,
                                                                          tmp_path):
    from training import evaluate
    model = str(tmp_path / "alone.keras")
    shutil.copy(tiny_keras, model)
    evaluate.check_classes(model, 10, _class_build(tmp_path / "b1", [(w, w) for w in WNIDS]))
    other = _class_build(tmp_path / "b2", [(f"x{i}", "") for i in range(10)])
    with pytest.raises(RunError, match=r"alone\.keras: the model was trained on 10 classes"):
        evaluate.check_classes(model, 10, other)


# --- preprocessing equal to evaluation's -------------------------------------------------------

def _eval_pixels(rgb: np.ndarray, size: int) -> np.ndarray:
    """What the validation pipeline feeds the model for these decoded pixels."""
    import tensorflow as tf
    from tinyimagenet_tfrecords import pipeline
    return pipeline.resize_images(tf.constant(rgb[None]), size)[0].numpy()


@pytest.mark.parametrize("fmt,mode", [("JPEG", None), ("JPEG", "L"), ("PNG", None),
                                      ("PNG", "RGBA"), ("PNG", "LA"), ("GIF", None),
                                      ("BMP", None), ("JPEG", "CMYK")])
def test_encoded_bytes_are_preprocessed_as_the_validation_pipeline_does(fmt, mode):
    import tensorflow as tf
    from training import export
    data = encode(random_image(), fmt, mode)
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # the converter's decode
    for size in (32, 64, 40):
        got = export.decode_encoded(tf.constant(data), size).numpy()
        np.testing.assert_array_equal(got, _eval_pixels(rgb, size), err_msg=f"{size}")


def test_16_bit_png_is_scaled_to_8_bits():
    import tensorflow as tf
    from training import export
    grey8 = random_image()[..., 0]
    data = encode((grey8.astype(np.uint16) * 257), "PNG")
    got = export.decode_encoded(tf.constant(data), 64).numpy()
    np.testing.assert_array_equal(got, np.repeat(grey8[..., None], 3, axis=2))


def test_pixel_arrays_are_preprocessed_like_encoded_images():
    import tensorflow as tf
    from training import export
    rgb = random_image(48, 80)
    batch = np.stack([rgb, rgb[::-1]])
    want = np.stack([_eval_pixels(x, 32) for x in batch])
    np.testing.assert_array_equal(export.preprocess_pixels(tf.constant(batch), 32).numpy(), want)
    rgba = np.concatenate([batch, np.full(batch.shape[:3] + (1,), 7, np.uint8)], axis=3)
    np.testing.assert_array_equal(export.preprocess_pixels(tf.constant(rgba), 32).numpy(), want)
    grey = batch[..., :1]
    got = export.preprocess_pixels(tf.constant(grey), 32).numpy()
    np.testing.assert_array_equal(got, np.stack([_eval_pixels(np.repeat(x, 3, 2), 32)
                                                 for x in grey]))


def test_image_size_is_the_models_own_else_the_evaluated_one():
    from training import export

    class Fake:
        def __init__(self, shape):
            self.input_shape = shape
    assert export.model_image_size(Fake((None, 32, 32, 3)), {"image_size": 64}) == 32
    with pytest.raises(RunError, match="--image_size=64: the model takes 32 px"):
        export.model_image_size(Fake((None, 32, 32, 3)), None, 64)
    assert export.model_image_size(Fake((None, None, None, 3)), {"image_size": 48}) == 48
    assert export.model_image_size(Fake((None, None, None, 3)), {"image_size": 48}, 16) == 16
    assert export.model_image_size(Fake((None, None, None, 3)), None) == 64


# --- the SavedModel, loaded by TensorFlow alone ------------------------------------------------

TF_ONLY = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    req = json.load(open(sys.argv[2]))
    out = {}
    if req.get("files"):
        data = tf.constant([open(f, "rb").read() for f in req["files"]])
        res = model.signatures["serving_default"](images=data)
        out["bytes"] = {k: v.numpy().tolist() for k, v in res.items()}
    if req.get("pixels"):
        res = model.signatures["serve_pixels"](pixels=tf.constant(np.load(req["pixels"])))
        out["pixels"] = {k: v.numpy().tolist() for k, v in res.items()}
    project = sorted(m for m in sys.modules
                     if m.split(".")[0] in ("models", "training", "tinyimagenet_tfrecords",
                                            "augment", "benchmarks"))
    out["project_modules"] = project
    json.dump(out, open(sys.argv[3], "w"), default=lambda b: b.decode())
""")


def call_tensorflow_only(export_dir: str, tmp_path, *, files=(), pixels=None) -> dict:
    """Runs the SavedModel in a fresh ``python -I`` process that imports TensorFlow and numpy
    only (no PYTHONPATH, started outside the checkout)."""
    script, req, out = tmp_path / "tf_only.py", tmp_path / "req.json", tmp_path / "out.json"
    script.write_text(TF_ONLY)
    npy = None
    if pixels is not None:
        npy = str(tmp_path / "pixels.npy")
        np.save(npy, pixels)
    req.write_text(json.dumps({"files": [str(f) for f in files], "pixels": npy}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(script), export_dir, str(req), str(out)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="session")  # not module: see conftest._xdist_group
def tiny_export(tiny_keras, tmp_path_factory) -> str:
    from training import export
    out = str(tmp_path_factory.mktemp("export") / "exported")
    result = export.export_model(tiny_keras, out)
    assert result == {"out": out, "image_size": 32, "num_classes": 10}
    return out


@pytest.mark.slow  # exports a SavedModel and starts a TensorFlow process
@pytest.mark.subprocess
def test_savedmodel_serves_encoded_images_and_pixels_with_tensorflow_alone(tiny_export,
                                                                           tmp_path):
    files = []
    for i, (fmt, ext) in enumerate((("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"),
                                    ("BMP", "bmp"))):
        files.append(tmp_path / f"img{i}.{ext}")
        files[-1].write_bytes(encode(random_image(50 + i, 70, seed=i), fmt))
    pixels = random_image(30, 20)[None]
    out = call_tensorflow_only(tiny_export, tmp_path, files=files, pixels=pixels)
    assert out["project_modules"] == []
    got = out["bytes"]
    assert np.asarray(got["probabilities"]).shape == (4, 10)
    np.testing.assert_allclose(np.sum(got["probabilities"], axis=1), 1.0, rtol=1e-5)
    for idx, wnids, names in zip(got["top5_indices"], got["top5_wnids"], got["top5_names"]):
        assert wnids == [WNIDS[i] for i in idx] and names == [NAMES[i] for i in idx]
    assert np.asarray(out["pixels"]["probabilities"]).shape == (1, 10)


def test_export_without_a_class_list_is_refused_in_one_line(tiny_keras, tmp_path):
    from training import export
    bare = tmp_path / "bare.keras"
    with zipfile.ZipFile(tiny_keras) as src, zipfile.ZipFile(bare, "w") as dst:
        for item in src.infolist():
            if item.filename != classes_lib.MEMBER:
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(RunError, match="carries no class list and there is no classes.json"):
        export.export_model(str(bare), str(tmp_path / "out"))
    with pytest.raises(RunError, match="no such model file"):
        export.export_model(str(tmp_path / "missing.keras"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # writes a SavedModel
def test_export_cli_exit_statuses_help_and_an_export_replaced_whole(tiny_keras, tmp_path,
                                                                   run_tool):
    """``python -m training.export``, run in-process as a fresh process would run it."""
    def cli(*args):
        return run_tool("training.export", *args)

    status, _, err = cli("--no_such_flag=1")
    assert status == 2 and err.strip().count("\n") == 0, err
    status, out, _ = cli("--help")
    assert status == 0 and "--image_size" in out
    status, _, err = cli("--model", str(tmp_path / "nope.keras"), "--out", str(tmp_path / "o"))
    assert status == 2 and err.strip() == (
        f"export: error: --model={tmp_path / 'nope.keras'}: no such model file")
    out = tmp_path / "o"
    out.mkdir()
    (out / "stale.txt").write_text("an earlier export's file")
    status, _, err = cli("--model", tiny_keras, "--out", str(out))
    assert status == 0, err
    assert (out / "saved_model.pb").exists() and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temporaries left


# --- every path to a prediction agrees (the real sample) ---------------------------------------

def _peaked_tiny_model(num_classes: int):
    """A random-init tiny Network 2 whose classifier is scaled up, so that its top-1 is never
    a near tie that float rounding could flip."""
    import keras
    import models
    keras.utils.set_random_seed(3)  # the same network whatever ran before
    model = models.build("net2", num_classes=num_classes, image_size=32, width=1 / 16)
    head = [layer for layer in model.layers if getattr(layer, "kernel", None) is not None][-1]
    head.kernel.assign(head.kernel * 30.0)  # the 1x1 conv to the classes
    return model


def _predict_rows(model_path: str, paths) -> dict:
    from training import predict
    lines = []
    result = predict.predict_files(model_path, paths, write=lines.append, fmt="jsonl",
                                   batch_size=100, progress=False)
    assert result["failed"] == []
    return {os.path.basename(r["file"]): r for r in map(json.loads, lines)}


@pytest.mark.slow  # exports a SavedModel, runs it in a TensorFlow-only process
@pytest.mark.subprocess
def test_savedmodel_pixels_signature_evaluate_and_predict_agree_on_sample_val(
        sample_dir, sample_build, tmp_path):
    from tinyimagenet_tfrecords import manifest as manifest_lib
    from training import evaluate, export
    build = manifest_lib.open_build(sample_build)
    wnids, names = classes_lib.classes_from_build(build)
    keras_path = str(tmp_path / "best.keras")
    _peaked_tiny_model(len(wnids)).save(keras_path)
    classes_lib.embed(keras_path, classes_lib.info(wnids, names, 32))
    export_dir = export.export_model(keras_path, str(tmp_path / "export"))["out"]
    val = os.path.join(sample_dir, "val", "images")
    files = sorted(os.path.join(val, f) for f in os.listdir(val))
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    served = call_tensorflow_only(export_dir, tmp_path, files=files, pixels=pixels)
    by_bytes = np.asarray(served["bytes"]["probabilities"], np.float32)
    by_pixels = np.asarray(served["pixels"]["probabilities"], np.float32)
    ev_names, ev_probs = evaluate.predict_probabilities(
        evaluate.load_model(keras_path), build, split="val", image_size=32)
    order = {os.path.basename(f): i for i, f in enumerate(files)}
    by_eval = np.zeros_like(by_bytes)
    by_eval[[order[n] for n in ev_names]] = ev_probs
    assert sorted(ev_names) == sorted(order)
    top1 = np.argmax(by_eval, axis=1)
    # A random network's top-1 is often the same class for every image, so the probabilities
    # (compared to 1e-5 below) must vary with the image: the paths could not agree by chance.
    assert np.ptp(by_eval, axis=0).max() > 1e-3
    for other in (by_bytes, by_pixels):
        np.testing.assert_array_equal(np.argmax(other, axis=1), top1)
        np.testing.assert_allclose(other, by_eval, rtol=0, atol=1e-5)
    for model_path in (export_dir, keras_path):
        rows = _predict_rows(model_path, [val])
        assert sorted(rows) == sorted(order)
        for name, row in rows.items():
            i = order[name]
            assert row["wnids"][0] == wnids[top1[i]], (model_path, name)
            np.testing.assert_allclose(row["probabilities"],
                                       np.sort(by_eval[i])[::-1][:5], rtol=0, atol=1e-5)


# --- the export at the end of training ---------------------------------------------------------

@pytest.mark.slow  # trains the demo for one short epoch
def test_training_the_demo_leaves_an_export_with_its_class_names(tmp_path, run_tool):
    """The demo's defaults export at the end of training. That such an export is served by
    TensorFlow alone is the subject of the SavedModel tests above (same ``export_model``)."""
    import tensorflow as tf
    data, out = tmp_path / "data", tmp_path / "run"
    status, _, err = run_tool(
        os.path.join(ROOT, "train_main.py"),
        f"--flagfile={os.path.join(ROOT, 'flags', 'demo.flags')}", f"--data={data}",
        f"--out={out}", "--epochs=1", "--steps_per_epoch=2", "--noprogress", "--noxla")
    assert status == 0, err[-3000:]
    from tinyimagenet_tfrecords import manifest as manifest_lib
    wnids, names = classes_lib.classes_from_build(manifest_lib.open_build(str(data)))
    assert classes_lib.embedded(str(out / "best.keras"))["wnids"] == wnids
    served = tf.saved_model.load(str(out / "export")).signatures["serving_default"](
        images=tf.constant([encode(random_image(120, 90), "JPEG")]))
    idx = served["top5_indices"].numpy()[0].tolist()
    got_names = [n.decode() for n in served["top5_names"].numpy()[0]]
    assert got_names == [names[i] for i in idx] and len(got_names) == 5


def test_runner_embeds_the_class_list_and_skips_the_export_when_turned_off(tiny_keras,
                                                                          tmp_path):
    from training import config as config_lib
    from training import runner
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(tiny_keras, out / "best.keras")
    build = _class_build(tmp_path / "build", [(w, f"name {w}") for w in WNIDS[::-1]])
    cfg = config_lib.RunConfig(data="d", out=str(out), export=False, val_image_size=48)
    summary = {}
    runner.finish_best_model(cfg, build, summary)
    record = classes_lib.embedded(str(out / "best.keras"))
    assert (record["wnids"], record["names"][0], record["image_size"]) == (
        WNIDS[::-1], f"name {WNIDS[-1]}", 48)
    assert summary == {} and sorted(p.name for p in out.iterdir()) == ["best.keras"]
    assert "export" in config_lib.runtime_only_keys()
