"""Evaluation report for any saved model: top-1/top-5, per-class accuracy, worst classes,
misclassified grid; predictions for an unlabelled split.

Library: :func:`evaluate_split` (metrics over a split, used by the fit loop every epoch),
:func:`write_report` (the full report), :func:`write_predictions` (a CSV of wnids per image,
Tiny ImageNet's submission format) and :func:`evaluate_model` (what the CLI does: checks the
model against the build, then one of the two). CLI (``training/evaluate/__main__.py``, which
imports this package; nothing here imports it)::

    python -m training.evaluate --model runs/net2/best.keras --data /data/tiny-imagenet-tfr \
        --out runs/net2/eval

writes ``report.json``, ``report.txt``, ``per_class.csv``, ``worst_classes.png`` and
``misclassified.png`` into ``--out``. The report's ``ce_loss`` is the mean cross-entropy
alone; the history's ``loss``/``val_loss`` add the L2 penalty, as Keras reports them.

A model carries its class list (``training.classes``): inside ``best.keras`` once training
ends, else the run folder's ``classes.json`` beside it or a ``<model>.classes.json`` beside a
copied model file. A model whose classes differ from the build's is refused.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from plumbing import cli as cli_lib
from plumbing import paths
from training import classes as classes_lib
from training import config as config_lib
from training import readers as readers_lib
from training import reports
from training.errors import RunError, RunFailure

CLASSES_NAME = classes_lib.SIDECAR


def evaluate_split(model, build, *, split: str = "val", image_size: int = 64,
                   batch_size: int = 256, xla: bool = True, eval_step=None,
                   keep_outputs: bool = False, readers=None) -> dict:
    """Loss and top-1/top-5 accuracy of ``model`` over every example of ``split``.

    Args:
      build: the opened build (``manifest.open_build``).
      eval_step: a step from :func:`steps.make_eval_step` to reuse (avoids retracing each
        epoch); built here when None.
      keep_outputs: also return ``labels`` and ``preds`` (numpy) for per-class reports.
      readers: the :class:`training.readers.EvalReaders` of ``build`` to take the reader
        from (a run keeps one, so every epoch iterates the same reader); fresh ones if None.

    Returns:
      ``{"loss", "top1", "top5", "count"}`` (+ ``labels``, ``preds``); the
      loss is mean cross-entropy (no weight decay).
    """
    from training import steps as steps_lib  # TensorFlow: imported on first use (CLI start-up)
    step = eval_step or steps_lib.make_eval_step(model, xla=xla)
    ds = readers_lib.readers_of(build, readers).get(split, image_size=image_size,
                                                    batch_size=batch_size)
    totals = np.zeros(len(steps_lib.EVAL_TOTALS), np.float64)
    labels, preds = [], []
    for images, y in ds:
        t, probs = step(images, y)
        totals += t.numpy()
        if keep_outputs:
            labels.append(y.numpy())
            preds.append(np.argmax(probs.numpy(), axis=1))
    t = dict(zip(steps_lib.EVAL_TOTALS, totals))
    n = max(t["count"], 1.0)
    out = {"loss": t["ce_sum"] / n, "top1": t["top1"] / n, "top5": t["top5"] / n,
           "count": int(t["count"])}
    if keep_outputs:
        out["labels"] = np.concatenate(labels) if labels else np.zeros(0, np.int32)
        out["preds"] = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    return out


def _misclassified_images(reader, labels: np.ndarray, preds: np.ndarray, *,
                          image_size: int, limit: int, seed: int = 0):
    """Up to ``limit`` misclassified images (uint8, in split order, sampled evenly), picked
    by index from ``reader``, the evaluation reader that gave ``labels`` and ``preds``."""
    wrong = np.flatnonzero(labels != preds)
    if limit <= 0 or wrong.size == 0:
        return wrong[:0], np.zeros((0, image_size, image_size, 3), np.uint8)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(wrong, size=min(limit, wrong.size), replace=False))
    ds = reader
    images, start = [], 0
    for batch, _ in ds:
        b = batch.numpy()
        idx = chosen[(chosen >= start) & (chosen < start + len(b))] - start
        images.extend(b[idx])
        start += len(b)
        if start > chosen[-1]:
            break
    return chosen, np.stack(images)


def write_report(model, build, out_dir: str, *, split: str = "val", image_size: int = 64,
                 batch_size: int = 256, xla: bool = True, misclassified: int = 36,
                 worst_k: int = 10, model_name: str = "", readers=None) -> dict:
    """Evaluates ``model`` on ``split`` of the opened ``build`` and writes the report files
    into ``out_dir``; the misclassified grid reads the evaluation's own reader (``readers``:
    see :func:`evaluate_split`).

    Returns:
      The report dict (also ``report.json``): top1, top5, loss, count, per_class rows,
      worst_classes, and the paths of the files written.
    """
    readers = readers_lib.readers_of(build, readers)
    classes = [{"label": c.label, "wnid": c.wnid, "name": c.name} for c in build.classes]
    res = evaluate_split(model, build, split=split, image_size=image_size,
                         batch_size=batch_size, xla=xla, keep_outputs=True, readers=readers)
    rows = reports.per_class_accuracy(res["labels"], res["preds"], classes)
    worst = reports.worst_classes(rows, worst_k)
    paths.makedirs(out_dir)  # local or any tf.io.gfile URL
    files = {k: os.path.join(out_dir, v) for k, v in (
        ("json", "report.json"), ("text", "report.txt"), ("per_class", "per_class.csv"),
        ("worst_plot", "worst_classes.png"), ("misclassified", "misclassified.png"))}
    paths.atomic_write_text(files["per_class"], reports.per_class_csv(rows))
    reports.plot_worst_classes(worst, files["worst_plot"])
    idx, images = _misclassified_images(
        readers.get(split, image_size=image_size, batch_size=batch_size), res["labels"],
        res["preds"], image_size=image_size, limit=misclassified)
    name_of = {c["label"]: c["name"] for c in classes}
    mis = [{"index": int(i), "true": name_of[int(res["labels"][i])],
            "pred": name_of[int(res["preds"][i])]} for i in idx]
    if len(images):
        reports.plot_misclassified(images, [m["true"] for m in mis], [m["pred"] for m in mis],
                                   files["misclassified"])
    else:
        files.pop("misclassified")
    report = {"model": model_name or getattr(model, "name", ""), "data": build.path,
              "split": split, "image_size": image_size, "count": res["count"],
              "top1": res["top1"], "top5": res["top5"], "ce_loss": res["loss"],
              "per_class": rows, "worst_classes": worst, "misclassified": mis,
              "files": files}
    paths.atomic_write_json(files["json"], report)
    paths.atomic_write_text(files["text"], reports.report_text(report))
    return report


def load_model(path: str):
    """Loads a ``.keras`` model saved by the fit loop (custom layers are registered on
    import of ``models``)."""
    import keras
    import models  # noqa: F401  (registers SpaceToDepth)
    from training import schedules  # noqa: F401  (registers Triangular2)
    return keras.saving.load_model(path, compile=False)


def classes_path(model_path: str) -> str | None:
    """The sidecar class list of a saved model (:func:`training.classes.sidecar_path`)."""
    return classes_lib.sidecar_path(model_path)


def check_classes(model_path: str, num_outputs: int, build) -> None:
    """Refuses a model trained on other classes than the opened ``build``'s (``RunError``);
    the class list is the one inside the model, else a ``classes.json`` beside it."""
    wnids, build_dir = list(build.wnids), build.path
    record, path = classes_lib.model_classes(model_path)
    if record is not None:
        model_wnids = record["wnids"]
        if model_wnids != wnids:
            only_model = sorted(set(model_wnids or ()) - set(wnids))
            detail = (f"e.g. {only_model[0]} is not in the build" if only_model
                      else "same classes in another order" if sorted(model_wnids or ()) == sorted(wnids)
                      else "the build has classes the model lacks")
            raise RunError(f"{path}: the model was trained on {len(model_wnids or ())} classes "
                           f"that differ from {build_dir}'s {len(wnids)} ({detail})")
    if num_outputs != len(wnids):
        raise RunError(f"{model_path}: the model has {num_outputs} outputs, {build_dir} has "
                       f"{len(wnids)} classes")


def resolve_image_size(model, requested: int | None, model_path: str,
                       size_multiple: int = 8) -> int:
    """The evaluation image size: the model's own input size when it has one.

    Args:
      requested: ``--image_size``, or None for "the model's own, else 64".

    Raises:
      RunError: ``requested`` differs from the model's fixed input size, or (for a model that
        takes any size) is not a multiple of ``size_multiple``.
    """
    shape = tuple(model.input_shape)
    fixed = shape[1] if len(shape) == 4 and shape[1] is not None and shape[1] == shape[2] \
        else None
    if fixed is not None:
        if requested is not None and requested != fixed:
            raise RunError(f"--image_size={requested}: {model_path} takes {fixed} px inputs "
                           f"(leave --image_size out to use them)")
        return int(fixed)
    size = 64 if requested is None else int(requested)
    if size < size_multiple or size % size_multiple:
        raise RunError(f"--image_size={size}: {model_path} needs a multiple of "
                       f"{size_multiple}")
    return size


def predict_split(model, build, *, split: str, image_size: int, batch_size: int = 256,
                  top_k: int = 5, readers=None):
    """``(filenames, top-k label indices [N, k])`` of every image of ``split``, in shard order."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    names, probs = predict_probabilities(model, build, split=split, image_size=image_size,
                                         batch_size=batch_size, readers=readers)
    if not len(names):
        return names, np.zeros((0, top_k), np.int32)
    return names, tf.math.top_k(probs, k=top_k).indices.numpy()


def predict_probabilities(model, build, *, split: str, image_size: int,
                          batch_size: int = 256, readers=None):
    """``(filenames, float32 probabilities [N, classes])`` of every image of ``split`` of the
    opened ``build``, shard after shard in manifest order: the evaluation reader's images
    (``pipeline.eval_dataset`` with filenames, not interleaved) through the model."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    ds = readers_lib.readers_of(build, readers).get(
        split, image_size=image_size, batch_size=batch_size, with_filenames=True,
        interleave=False)
    predict = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32),
                          autograph=False)
    names, probs = [], []
    for images, _, filenames in ds:
        probs.append(predict(images).numpy())
        names.extend(n.decode("utf-8") for n in filenames.numpy())
    return names, (np.concatenate(probs) if probs else np.zeros((0, 0), np.float32))


def predictions_csv(filenames, top: np.ndarray, wnids) -> str:
    """CSV text: ``filename,wnid,top5`` (top5: the five wnids, best first, space-separated)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("filename", "wnid", "top5"))
    for name, row in zip(filenames, top):
        writer.writerow((name, wnids[row[0]], " ".join(wnids[i] for i in row)))
    return buf.getvalue()


def write_predictions(model, build, path: str, *, split: str, image_size: int,
                      batch_size: int = 256, readers=None) -> int:
    """Writes ``path`` (see :func:`predictions_csv`) for ``split`` of the opened ``build``;
    returns the number of images."""
    wnids = list(build.wnids)
    names, top = predict_split(model, build, split=split, image_size=image_size,
                               batch_size=batch_size, top_k=min(5, len(wnids)),
                               readers=readers)
    paths.atomic_write_text(path, predictions_csv(names, top, wnids))
    return len(names)


def evaluate_model(model_path: str, build_dir: str, *, out: str | None = None,
                   predictions: str | None = None, split: str = "val",
                   image_size: int | None = None, batch_size: int = 256, xla: bool = True,
                   misclassified: int = 36, worst_classes: int = 10) -> dict:
    """Checks a saved model against a build, then writes a report and/or predictions.

    Args:
      model_path: a ``.keras`` file.
      build_dir: a finished build.
      out: folder for the report files (labelled splits only).
      predictions: a CSV path for per-image predictions (any split).
      image_size: None: the model's own input size (64 for a model that takes any size).

    Returns:
      ``{"report": dict or None, "predictions": count or None, "image_size": int}``.

    Raises:
      config.ConfigError: a setting breaks its declared rule (``config.EvalSettings``).
      RunError: bad input (missing model, other classes, inapplicable image size, a report
        asked of an unlabelled split, nothing to write). ``manifest.BuildError``: bad build.
      RunFailure: a corrupt shard (named) or an output that cannot be written.
    """
    from tinyimagenet_tfrecords import manifest as manifest_lib
    if paths.is_url(model_path) or paths.is_url(build_dir):
        cli_lib.import_tensorflow_quietly()  # tf.io.gfile opens URLs
    config_lib.check_settings(config_lib.EvalSettings(
        image_size=image_size, batch_size=batch_size, misclassified=misclassified,
        worst_classes=worst_classes))
    if not out and not predictions:
        raise RunError("give --out (a report) and/or --predictions (a CSV of predictions)")
    if not paths.isfile(model_path):
        raise RunError(f"--model={model_path}: no such model file")
    build = manifest_lib.open_build(build_dir)  # the one manifest read of this evaluation
    if split not in build.split_names:
        raise RunError(f"--split={split}: {build_dir} has {sorted(build.split_names)}")
    if out and not build.split(split).labelled:
        raise RunError(f"--split={split}: {build_dir}'s {split} split is unlabelled, so there is "
                       "nothing to score; use --predictions=FILE.csv for its predictions")
    cli_lib.import_tensorflow_quietly()  # only now, with every cheap check passed
    try:
        model = load_model(model_path)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one line, no traceback
        raise RunError(f"--model={model_path}: cannot load model: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}"[:300]) from None
    check_classes(model_path, model.output_shape[-1], build)
    size = resolve_image_size(model, image_size, model_path)
    result = {"report": None, "predictions": None, "image_size": size}
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from training import shards  # pylint: disable=import-outside-toplevel
    readers = readers_lib.EvalReaders(build)
    try:
        if out:
            result["report"] = write_report(
                model, build, out, split=split, image_size=size, batch_size=batch_size,
                xla=xla, misclassified=misclassified, worst_k=worst_classes,
                model_name=os.path.basename(model_path), readers=readers)
        if predictions:
            result["predictions"] = write_predictions(
                model, build, predictions, split=split, image_size=size,
                batch_size=batch_size, readers=readers)
    except tf.errors.DataLossError as e:
        raise shards.data_loss_failure(build, e, splits=(split,)) from None
    except OSError as e:
        raise RunFailure(f"{e.filename or out or predictions}: {e.strerror or e}") from None
    return result
