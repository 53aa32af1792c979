"""Benchmarks the converter on a generated full-size dataset and prints images/second.

    python -m benchmarks.build                      # 120,000 images, both storages
    python -m benchmarks.build --storage=jpeg --workers=4
    python -m benchmarks.build --num_classes=20     # a quicker look

The synthetic dataset (``synthetic.make_synthetic_dataset``: 200 classes x 500 train, 10,000
val, 10,000 test, 64x64 JPEGs) is generated once into ``--data_dir`` and reused. Each build
writes into ``--out_dir`` with ``overwrite=True``; the time covers the whole
``build_dataset`` call (scan, all workers, manifest, rename), from a warm page cache.
"worker CPU us/image" is the shard writers' CPU time per image (independent of how busy the
machine is): ``images x that / cores`` estimates an uncontended wall time. The run prints a
table, then one JSON line of the rows with a description of the machine.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time

from plumbing import cli as cli_lib
from tinyimagenet_tfrecords import build
from tinyimagenet_tfrecords import synthetic


def machine_description() -> dict:
    """Where the figures were measured: CPU model and count, OS, Python, TensorFlow if loaded."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    tf = sys.modules.get("tensorflow")
    return {"cpu": cpu, "cpus": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": getattr(tf, "__version__", None)}


def ensure_dataset(data_dir: str, num_classes: int, train_per_class: int, num_val: int,
                   num_test: int, image_size: int, workers) -> tuple[str, float]:
    """Generates the dataset unless ``data_dir`` already holds one; returns (path, seconds)."""
    if os.path.isfile(os.path.join(data_dir, "wnids.txt")):
        with open(os.path.join(data_dir, "wnids.txt")) as f:
            have = sum(1 for line in f if line.strip())
        if have == num_classes:
            return data_dir, 0.0
        shutil.rmtree(data_dir)
    start = time.perf_counter()
    path = synthetic.make_synthetic_dataset(data_dir, num_classes, train_per_class, num_val,
                                            num_test, image_size, seed=0, workers=workers)
    return path, time.perf_counter() - start


def _dir_mb(path: str) -> float:
    return sum(e.stat().st_size for e in os.scandir(path)) / 1e6


def run_bench(src: str, out_dir: str, storages, workers, repeats: int = 1) -> list[dict]:
    """Times ``build_dataset`` per storage (best of ``repeats``); returns table rows."""
    rows = []
    for storage in storages:
        best = None
        for _ in range(repeats):
            out = os.path.join(out_dir, storage)
            stats: dict = {}
            start = time.perf_counter()
            manifest = build.build_dataset(src, out, storage=storage, workers=workers,
                                           overwrite=True, progress=False, stats=stats)
            seconds = time.perf_counter() - start
            if best is None or seconds < best[0]:
                best = (seconds, stats)
        seconds, stats = best
        images = sum(s["num_examples"] for s in manifest["splits"].values())
        rows.append({"storage": storage, "workers": workers or os.cpu_count(),
                     "images": images, "seconds": seconds, "images_per_s": images / seconds,
                     "scan_s": stats["scan_s"], "cpu_us_per_image":
                     stats["worker_cpu_s"] / images * 1e6, "output_mb": _dir_mb(out)})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| storage | workers | images | wall s | images/s | scan s "
             "| worker CPU us/image | output MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['storage']} | {r['workers']} | {r['images']:,} | "
                     f"{r['seconds']:.1f} | {r['images_per_s']:,.0f} | {r['scan_s']:.1f} | "
                     f"{r['cpu_us_per_image']:.0f} | {r['output_mb']:.0f} |")
    return "\n".join(lines)


def main(argv) -> int:
    """Maps the flags to :func:`run_bench`; prints the table and one JSON line."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    fv = flags.FLAGS
    if len(argv) > 1:
        print(f"build bench: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    unknown = set(fv.storage) - set(build.features.STORAGE_FORMATS)
    if unknown:
        print(f"build bench: error: unknown --storage {sorted(unknown)}", file=sys.stderr)
        return cli_lib.EXIT_BAD_INPUT
    data_dir = fv.data_dir or os.path.join(
        tempfile.gettempdir(), f"tinyimagenet-synthetic-{fv.num_classes}")
    src, gen_s = ensure_dataset(data_dir, fv.num_classes, fv.train_per_class, fv.num_val,
                                fv.num_test, fv.image_size, fv.workers)
    if gen_s:
        print(f"generated {src} in {gen_s:.1f} s", file=sys.stderr)
    out_dir = fv.out_dir or tempfile.mkdtemp(prefix="tin-build-bench-")
    try:
        rows = run_bench(src, out_dir, fv.storage, fv.workers, fv.repeats)
    except (build.BuildError, build.source_lib.SourceError, OSError) as e:
        print(f"build bench: error: {e}", file=sys.stderr)
        return build.exit_status(e)
    finally:
        if not fv.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    fast = build._FAST_CRC  # pylint: disable=protected-access
    crc = "google-crc32c (C)" if fast else "tf.io.TFRecordWriter"
    print(f"crc32c: {crc}; CPUs: {os.cpu_count()}; source: {src}")
    print(format_table(rows))
    print(json.dumps({"rows": rows, "crc32c": crc, "machine": machine_description()},
                     sort_keys=True))
    return cli_lib.EXIT_OK


def _define_flags() -> None:
    from absl import flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_string("data_dir", None, "Synthetic dataset folder (generated if missing; "
                        "default: <tmp>/tinyimagenet-synthetic-<num_classes>).")
    flags.DEFINE_string("out_dir", None, "Where builds go (default: a temporary folder, "
                        "deleted afterwards).")
    flags.DEFINE_list("storage", ["jpeg", "raw"], "Storage formats to time.")
    flags.DEFINE_integer("workers", None, "Worker processes (default: CPU count).")
    flags.DEFINE_integer("repeats", 1, "Builds per storage; the best time is reported.")
    flags.DEFINE_integer("num_classes", 200, "Classes.")
    flags.DEFINE_integer("train_per_class", 500, "Train images per class.")
    flags.DEFINE_integer("num_val", 10000, "Val images.")
    flags.DEFINE_integer("num_test", 10000, "Test images.")
    flags.DEFINE_integer("image_size", 64, "Image side.")


if __name__ == "__main__":
    _define_flags()
    cli_lib.run(main, __name__)
