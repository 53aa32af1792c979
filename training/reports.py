"""Run outputs: the per-epoch CSV, curves, and the evaluation report.

Every file is written to a temporary name in the same folder and moved into place
(``plumbing.paths.atomic_write_bytes``), so a run killed at any moment leaves either the old
or the new file, never a truncated one. Paths may be local or any ``tf.io.gfile`` URL; local
files get the permissions the user's umask gives (not a temporary file's 0600).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Sequence

import numpy as np

from plumbing import paths

CSV_FIELDS = ("epoch", "phase", "image_size", "batch_size", "lr", "loss", "acc", "val_loss",
              "val_acc", "val_top5", "images_per_s", "seconds")


def history_csv(history: Sequence[dict]) -> str:
    """The per-epoch metrics as CSV text (columns ``CSV_FIELDS``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history: Sequence[dict], out_dir: str) -> list[str]:
    """``loss.png`` and ``accuracy.png``: train and val per epoch, phase starts marked."""
    if not history:
        return []
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    phase_starts = [r["epoch"] for prev, r in zip(history, history[1:])
                    if r["phase"] != prev["phase"]]
    paths = []
    for name, keys, ylabel in (("loss", ("loss", "val_loss"), "loss"),
                               ("accuracy", ("acc", "val_acc", "val_top5"), "accuracy")):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for k in keys:
            ax.plot(epochs, [r[k] for r in history], marker="." if len(epochs) < 40 else None,
                    label={"loss": "train", "acc": "train top-1", "val_loss": "val",
                           "val_acc": "val top-1", "val_top5": "val top-5"}[k])
        for s in phase_starts:
            ax.axvline(s - 0.5, color="grey", lw=0.6, ls=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        # Fixed margins: tight_layout measured its text on every call, a third of the
        # plot's cost, and these are redrawn after every epoch.
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.97)
        path = os.path.join(out_dir, f"{name}.png")
        _save_fig(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def _save_fig(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    paths.atomic_write_bytes(path, buf.getvalue())


def per_class_accuracy(labels: np.ndarray, preds: np.ndarray, classes: Sequence[dict]
                       ) -> list[dict]:
    """One row per class: label, wnid, name, accuracy (recall), count of val examples."""
    rows = []
    for c in classes:
        mask = labels == c["label"]
        n = int(mask.sum())
        acc = float((preds[mask] == c["label"]).mean()) if n else float("nan")
        rows.append({"label": c["label"], "wnid": c["wnid"], "name": c["name"],
                     "accuracy": acc, "count": n})
    return rows


def per_class_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=("wnid", "name", "accuracy", "count"),
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "accuracy": f"{r['accuracy']:.4f}"})
    return buf.getvalue()


def worst_classes(rows: Sequence[dict], k: int) -> list[dict]:
    """The ``k`` classes with the lowest accuracy (ties by name), classes without examples
    left out."""
    rated = [r for r in rows if r["count"] > 0]
    return sorted(rated, key=lambda r: (r["accuracy"], r["name"]))[:k]


def short_name(name: str) -> str:
    """The first synonym of a WordNet name ("goldfish, Carassius auratus" -> "goldfish")."""
    return name.split(",")[0].strip()


def plot_worst_classes(worst: Sequence[dict], path: str) -> None:
    """A horizontal bar chart of the worst classes' accuracy (the seed report's Figure 4)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.4 * max(len(worst), 3) + 1.2), dpi=100)
    names = [short_name(r["name"]) for r in worst][::-1]
    accs = [100 * r["accuracy"] for r in worst][::-1]
    ax.barh(names, accs, color="tab:red")
    ax.set_xlabel("val accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_title(f"{len(worst)} worst classes")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def plot_misclassified(images: np.ndarray, true_names: Sequence[str],
                       pred_names: Sequence[str], path: str, columns: int = 6) -> None:
    """A grid of misclassified images titled "true / predicted" (the seed's Figure 17)."""
    plt = _pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), dpi=100,
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            ax.set_title(f"T: {short_name(true_names[i])[:18]}\nP: {short_name(pred_names[i])[:18]}",
                         fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def report_text(report: dict) -> str:
    """A short human-readable summary of an evaluation report."""
    lines = [f"model: {report['model']}",
             f"data: {report['data']} (split {report['split']}, {report['count']} images, "
             f"{report['image_size']} px)",
             f"top-1: {100 * report['top1']:.2f}%   top-5: {100 * report['top5']:.2f}%   "
             f"ce_loss: {report['ce_loss']:.4f} (cross-entropy, no L2 penalty)",
             f"worst {len(report['worst_classes'])} classes:"]
    for r in report["worst_classes"]:
        lines.append(f"  {100 * r['accuracy']:5.1f}%  {r['wnid']}  {r['name']}")
    return "\n".join(lines) + "\n"
