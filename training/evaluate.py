"""Evaluation report for any saved model: top-1/top-5, per-class accuracy, worst classes,
misclassified grid.

Library: :func:`evaluate_split` (metrics over a split, used by the fit loop every epoch) and
:func:`write_report` (the full report). CLI::

    python -m training.evaluate --model runs/net2/best.keras --data /data/tiny-imagenet-tfr \
        --out runs/net2/eval

writes ``report.json``, ``report.txt``, ``per_class.csv``, ``worst_classes.png`` and
``misclassified.png`` into ``--out``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from training import fileio
from training import reports
from training import steps as steps_lib


def evaluate_split(model, build_dir: str, *, split: str = "val", image_size: int = 64,
                   batch_size: int = 256, xla: bool = True, eval_step=None,
                   keep_outputs: bool = False) -> dict:
    """Loss and top-1/top-5 accuracy of ``model`` over every example of ``split``.

    Args:
      eval_step: a step from :func:`steps.make_eval_step` to reuse (avoids retracing each
        epoch); built here when None.
      keep_outputs: also return ``labels`` and ``preds`` (numpy) for per-class reports.

    Returns:
      ``{"loss", "top1", "top5", "count"}`` (+ ``labels``, ``preds``, ``true_probs``); the
      loss is mean cross-entropy (no weight decay).
    """
    from tinyimagenet_tfrecords import pipeline
    step = eval_step or steps_lib.make_eval_step(model, xla=xla)
    ds = pipeline.make_dataset(build_dir, split, batch_size=batch_size, image_size=image_size,
                               training=False)
    totals = np.zeros(4, np.float64)
    labels, preds = [], []
    for images, y in ds:
        t, probs = step(images, y)
        totals += t.numpy()
        if keep_outputs:
            labels.append(y.numpy())
            preds.append(np.argmax(probs.numpy(), axis=1))
    n = max(totals[3], 1.0)
    out = {"loss": totals[0] / n, "top1": totals[1] / n, "top5": totals[2] / n,
           "count": int(totals[3])}
    if keep_outputs:
        out["labels"] = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        out["preds"] = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    return out


def _misclassified_images(build_dir: str, labels: np.ndarray, preds: np.ndarray, *,
                          split: str, image_size: int, limit: int, seed: int = 0):
    """Up to ``limit`` misclassified images (uint8, in split order, sampled evenly)."""
    from tinyimagenet_tfrecords import pipeline
    wrong = np.flatnonzero(labels != preds)
    if limit <= 0 or wrong.size == 0:
        return wrong[:0], np.zeros((0, image_size, image_size, 3), np.uint8)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(wrong, size=min(limit, wrong.size), replace=False))
    ds = pipeline.make_dataset(build_dir, split, batch_size=256, image_size=image_size,
                               training=False)
    images, start = [], 0
    for batch, _ in ds:
        b = batch.numpy()
        idx = chosen[(chosen >= start) & (chosen < start + len(b))] - start
        images.extend(b[idx])
        start += len(b)
        if start > chosen[-1]:
            break
    return chosen, np.stack(images)


def write_report(model, build_dir: str, out_dir: str, *, manifest: dict | None = None,
                 split: str = "val", image_size: int = 64, batch_size: int = 256,
                 xla: bool = True, misclassified: int = 36, worst_k: int = 10,
                 model_name: str = "") -> dict:
    """Evaluates ``model`` on ``split`` and writes the report files into ``out_dir``.

    Returns:
      The report dict (also ``report.json``): top1, top5, loss, count, per_class rows,
      worst_classes, and the paths of the files written.
    """
    from tinyimagenet_tfrecords import manifest as manifest_lib
    manifest = manifest or manifest_lib.load_manifest(build_dir)
    classes = sorted(manifest["classes"], key=lambda c: c["label"])
    res = evaluate_split(model, build_dir, split=split, image_size=image_size,
                         batch_size=batch_size, xla=xla, keep_outputs=True)
    rows = reports.per_class_accuracy(res["labels"], res["preds"], classes)
    worst = reports.worst_classes(rows, worst_k)
    fileio.makedirs(out_dir)  # local or any tf.io.gfile URL
    files = {k: os.path.join(out_dir, v) for k, v in (
        ("json", "report.json"), ("text", "report.txt"), ("per_class", "per_class.csv"),
        ("worst_plot", "worst_classes.png"), ("misclassified", "misclassified.png"))}
    reports.atomic_write_text(files["per_class"], reports.per_class_csv(rows))
    reports.plot_worst_classes(worst, files["worst_plot"])
    idx, images = _misclassified_images(build_dir, res["labels"], res["preds"], split=split,
                                        image_size=image_size, limit=misclassified)
    name_of = {c["label"]: c["name"] for c in classes}
    mis = [{"index": int(i), "true": name_of[int(res["labels"][i])],
            "pred": name_of[int(res["preds"][i])]} for i in idx]
    if len(images):
        reports.plot_misclassified(images, [m["true"] for m in mis], [m["pred"] for m in mis],
                                   files["misclassified"])
    else:
        files.pop("misclassified")
    report = {"model": model_name or getattr(model, "name", ""), "data": build_dir,
              "split": split, "image_size": image_size, "count": res["count"],
              "top1": res["top1"], "top5": res["top5"], "loss": res["loss"],
              "per_class": rows, "worst_classes": worst, "misclassified": mis,
              "files": files}
    reports.atomic_write_json(files["json"], report)
    reports.atomic_write_text(files["text"], reports.report_text(report))
    return report


def load_model(path: str):
    """Loads a ``.keras`` model saved by the fit loop (custom layers are registered on
    import of ``models``)."""
    import keras
    import models  # noqa: F401  (registers SpaceToDepth)
    from training import schedules  # noqa: F401  (registers Triangular2)
    return keras.saving.load_model(path, compile=False)


def main(argv):
    from absl import flags
    from tinyimagenet_tfrecords import manifest as manifest_lib
    f = flags.FLAGS
    if len(argv) > 1:
        sys.exit(f"evaluate: unexpected arguments {argv[1:]}")
    if not f.model or not f.data or not f.out:
        sys.exit("evaluate: --model, --data and --out are required")
    if not fileio.isfile(f.model):
        sys.exit(f"evaluate: {f.model}: no such model file")
    try:
        manifest = manifest_lib.load_manifest(f.data)
    except manifest_lib.BuildError as e:
        sys.exit(f"evaluate: {e}")
    try:
        model = load_model(f.model)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one line, no traceback
        sys.exit(f"evaluate: {f.model}: cannot load model: {type(e).__name__}: {e}"[:500])
    if model.output_shape[-1] != manifest["num_classes"]:
        sys.exit(f"evaluate: model has {model.output_shape[-1]} outputs, {f.data} has "
                 f"{manifest['num_classes']} classes")
    report = write_report(model, f.data, f.out, manifest=manifest, split=f.split,
                          image_size=f.image_size, batch_size=f.batch_size, xla=f.xla,
                          misclassified=f.misclassified, worst_k=f.worst_classes,
                          model_name=os.path.basename(f.model))
    print(reports.report_text(report), end="")


def _define_flags():
    from absl import flags
    flags.DEFINE_string("model", None, "a .keras model file (e.g. <run>/best.keras)")
    flags.DEFINE_string("data", None, "a finished TFRecord build folder")
    flags.DEFINE_string("out", None, "folder for the report files")
    flags.DEFINE_string("split", "val", "split to evaluate")
    flags.DEFINE_integer("image_size", 64, "evaluation image size", lower_bound=8)
    flags.DEFINE_integer("batch_size", 256, "evaluation batch size", lower_bound=1)
    flags.DEFINE_bool("xla", True, "compile the eval step with XLA")
    flags.DEFINE_integer("misclassified", 36, "images in the misclassified grid", lower_bound=0)
    flags.DEFINE_integer("worst_classes", 10, "worst classes to list and plot", lower_bound=1)


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
