"""``training.run``: the fit loop inside the checks and guards every run gets.

Before anything is written: the settings (``config.validate``), the build (opened once:
``manifest.open_build``) and its shards; then the strategy is made (several workers: once all
have joined). Then the output folder is checked and locked (:class:`run_folder.RunFolder`) and
the fit loop runs. Whatever stops it ends as one of the exceptions of :mod:`training.errors`,
with a one-line message naming the file or setting: a corrupt shard, a full disk or an
unwritable output is a :class:`RunFailure`, Ctrl-C or SIGTERM an :class:`Interrupted` that says
after which epoch the run stopped. A run that stops before its first checkpoint on a fresh
``--out`` leaves nothing behind. A finished run gets its class list inside ``best.keras`` and,
unless ``--noexport``, a SavedModel of it in ``<out>/export`` (``training.export``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re

from plumbing import paths
from tinyimagenet_tfrecords import manifest as manifest_lib
from training import cluster as cluster_lib
from training import config as config_lib
from training import run_folder
from training import shards
from training.errors import Interrupted, RunError, RunFailure, with_checkpoint_note


def prepare(cfg: config_lib.RunConfig) -> manifest_lib.Build:
    """Every check that needs no output folder; returns the build, opened once for the run.

    The :class:`manifest.Build` is what the rest of the run reads (the loop, evaluation, the
    class list): ``manifest.json`` is read here only, once per process.

    Raises:
      config.ConfigError: a bad setting. manifest.BuildError: a missing, unfinished or
        incomplete build (a listed shard missing).
    """
    import augment  # pylint: disable=import-outside-toplevel
    import models  # pylint: disable=import-outside-toplevel
    config_lib.validate(cfg, recipe_names=augment.recipe_names(), model_names=models.NAMES)
    build = manifest_lib.open_build(cfg.data)
    if "val" not in build.split_names:
        raise RunError(f"{cfg.data}: no val split; training needs one")
    build.check_shards(("train", "val"))
    return build


def run(cfg: config_lib.RunConfig, *, flags_text: str = "", hooks=None) -> dict:
    """Trains (or resumes) the run ``cfg`` describes; returns the final summary dict.

    Args:
      cfg: the settings (validated here).
      flags_text: the effective command-line flags, saved as ``flags.txt`` for the record.
      hooks: a :class:`training.hooks.Hooks` the loop calls at fixed points of each epoch
        (tests and tools watch or stop the run through it).

    Raises:
      config.ConfigError, manifest.BuildError, RunError: bad input, nothing written.
      RunFailure: the run broke while running (the last checkpoint is kept; the message says
        which, or that none was written yet).
      Interrupted: KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by ``train_main``).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from training import loop  # pylint: disable=import-outside-toplevel

    build = prepare(cfg)
    wnids = list(build.wnids)
    # The strategy before the output folder: a worker whose peers never come may be ended by
    # the connection watchdog's hard exit (training.cluster), which leaves what exists.
    try:
        strategy = loop.connect(cfg)
    except KeyboardInterrupt:
        raise _interrupted(cfg.out) from None
    # Several workers: only the chief checks, locks and writes --out (training.cluster).
    writer = cluster_lib.writes_run_folder(cluster_lib.from_environment())
    folder = run_folder.RunFolder(cfg.out, cfg.fingerprint(), wnids) if writer \
        else contextlib.nullcontext()
    with folder:
        try:
            summary = loop.run(cfg, build, strategy, flags_text=flags_text, hooks=hooks)
            if writer:
                finish_best_model(cfg, build, summary)
            return summary
        except KeyboardInterrupt:
            raise _interrupted(cfg.out) from None
        except tf.errors.DataLossError as e:
            raise with_checkpoint_note(shards.data_loss_failure(build, e),
                                       run_folder.last_checkpoint_epoch(cfg.out)) from None
        except RunFailure as e:  # Diverged, a peer worker's failure
            raise with_checkpoint_note(e, run_folder.last_checkpoint_epoch(cfg.out)) from None
        except tf.errors.ResourceExhaustedError as e:
            if "space" not in str(e).lower():
                raise
            raise disk_full(cfg.out, e) from None
        except tf.errors.PermissionDeniedError as e:
            raise RunFailure(f"{_path_in(cfg.out, str(e))}: permission denied while "
                             "writing the run's outputs") from None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise disk_full(cfg.out, e) from None
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise RunFailure(f"{e.filename or cfg.out}: {e.strerror}") from None
            raise


def _interrupted(out: str) -> Interrupted:
    epoch = run_folder.last_checkpoint_epoch(out)
    where = f"after epoch {epoch}" if epoch else "before the first epoch's checkpoint"
    return Interrupted(f"interrupted {where}; run the same command to resume")


def finish_best_model(cfg: config_lib.RunConfig, build: manifest_lib.Build,
                      summary: dict) -> None:
    """Puts the class list inside ``best.keras`` and, unless ``cfg.export`` is off, exports
    it as a SavedModel into ``<out>/export`` (``summary["export"]`` says where)."""
    from training import classes, export  # pylint: disable=import-outside-toplevel
    best = os.path.join(cfg.out, "best.keras")
    if not paths.isfile(best):
        return
    wnids, names = classes.classes_from_build(build)
    classes.embed(best, classes.info(wnids, names, cfg.val_image_size))
    if cfg.export:
        summary["export"] = export.export_model(best, os.path.join(cfg.out, "export"),
                                                image_size=None)["out"]


def _path_in(out: str, message: str) -> str:
    """The first path under ``out`` quoted in an error message, else ``out``."""
    match = re.search(re.escape(os.path.abspath(out)) + r"[^\s;:'\"]*", message)
    return match.group(0) if match else out


def disk_full(out: str, error: Exception) -> RunFailure:
    """The one-line failure for a full disk (checkpoint temporaries are already removed)."""
    path = getattr(error, "filename", None) or _path_in(out, str(error))
    return RunFailure(f"{path}: no space left on device while writing the run's outputs; "
                      "free space and run the same command to resume from the last checkpoint")
