"""Train a Tiny ImageNet DenseNet-style network: ``train_main --flagfile=flags/net2.flags``.

Parses flags into a :class:`training.config.RunConfig` and calls :func:`training.run` — nothing
else reads flags. Bad input (a missing or unfinished data build, an out-of-range flag, an
output folder holding another run) ends with one line on stderr and exit status 2; re-running
the same command resumes an interrupted run from its last checkpoint.

Curriculum phases are repeated ``--phase`` flags (see ``training/config.py``)::

    --phase=epochs=15,size=32,batch=256,aug=none,plateau=on
    --phase=epochs=24,min_lr=1e-4,max_lr=6e-4,step_epochs=6
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS

# Data and outputs.
flags.DEFINE_string("data", None, "a finished TFRecord build (tinyimagenet_tfrecords.build)")
flags.DEFINE_string("out", None, "output folder of this run (resumed if it holds this run)")
flags.DEFINE_bool("make_synthetic_data", False,
                  "if --data is missing, generate a small learnable synthetic dataset and "
                  "build it there (demos and tests)")
flags.DEFINE_integer("synthetic_classes", 10, "classes of the synthetic dataset")
flags.DEFINE_integer("synthetic_train_per_class", 100, "training images per synthetic class")
flags.DEFINE_integer("synthetic_val_per_class", 20, "val images per synthetic class")
# Model.
flags.DEFINE_string("model", "net2", "net1, net1_student or net2")
flags.DEFINE_float("width", 1.0, "filter-count multiplier (tiny variants for CPU demos)")
flags.DEFINE_float("bn_momentum", 0.0, "BatchNorm moving-average momentum; 0 keeps the "
                   "model's (0.99). Short CPU runs: 0.9")
# Length and curriculum.
flags.DEFINE_integer("epochs", 1, "epochs of the single phase used when no --phase is given")
flags.DEFINE_multi_string("phase", [], "a curriculum phase 'epochs=N[,size=S][,batch=B]"
                          "[,aug=RECIPE][,plateau=on|off][,min_lr=..,max_lr=..,step_epochs=..]'"
                          "; repeat in order")
flags.DEFINE_integer("batch_size", 128, "global batch size (split across replicas)")
flags.DEFINE_integer("steps_per_epoch", 0,
                     "steps per epoch; 0 = one pass over the training split")
flags.DEFINE_integer("steps_per_call", 1, "train steps per compiled call (fewer Python "
                     "round trips; progress updates once per call)")
flags.DEFINE_integer("image_size", 64, "training image size (phases may override)")
flags.DEFINE_integer("val_image_size", 64, "validation image size")
flags.DEFINE_integer("eval_batch_size", 256, "validation batch size")
flags.DEFINE_string("augment", "none", "augmentation recipe (augment.RECIPE_NAMES)")
# Optimisation.
flags.DEFINE_enum("optimizer", "adam", ["adam", "rmsprop", "sgd"], "optimizer")
flags.DEFINE_float("learning_rate", 1e-3, "learning rate (constant schedule)")
flags.DEFINE_float("epsilon", 1e-7, "optimizer epsilon (Adam/RMSprop)")
flags.DEFINE_enum("lr_schedule", "constant", ["constant", "triangular2"],
                  "constant (+ optional ReduceLROnPlateau) or Triangular2 phases")
flags.DEFINE_bool("plateau", False, "ReduceLROnPlateau on val_loss (phases may override)")
flags.DEFINE_float("plateau_factor", 0.31622776601683794, "ReduceLROnPlateau factor")
flags.DEFINE_integer("plateau_patience", 5, "ReduceLROnPlateau patience (epochs)")
flags.DEFINE_float("plateau_min_lr", 5e-7, "ReduceLROnPlateau minimum learning rate")
# Execution.
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "compute precision")
flags.DEFINE_bool("xla", True, "compile the per-replica train step with XLA")
flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "default", "multiworker"],
                  "auto: MultiWorkerMirroredStrategy under a multi-worker TF_CONFIG, else "
                  "MirroredStrategy over several GPUs, else default")
flags.DEFINE_float("cluster_timeout", 300.0, "multi-worker: seconds to wait for every worker "
                   "of TF_CONFIG to join (and for a silent worker before the others give up)")
flags.DEFINE_integer("seed", 0, "base seed of initialisation, data order and augmentation")
flags.DEFINE_bool("deterministic", False, "enable TF op determinism (exact resume/repeat)")
flags.DEFINE_integer("checkpoint_every", 1, "checkpoint every N epochs (and at the end)")
flags.DEFINE_integer("keep_checkpoints", 3, "checkpoints kept")
flags.DEFINE_integer("misclassified", 36, "images in the final misclassified grid")
flags.DEFINE_integer("worst_classes", 10, "worst classes in the final report")
flags.DEFINE_bool("progress", True, "show a progress bar")
# Test/demo hooks.
flags.DEFINE_integer("num_logical_cpus", 0,
                     "split the CPU into N logical devices (multi-replica tests on CPU)")
flags.DEFINE_integer("stop_after_epoch", 0,
                     "test hook: exit abruptly (os._exit) after this epoch's checkpoint")

_CONFIG_FLAGS = (
    "data", "out", "model", "width", "bn_momentum", "batch_size", "steps_per_epoch", "steps_per_call",
    "val_image_size", "eval_batch_size", "optimizer", "learning_rate", "epsilon",
    "lr_schedule", "plateau_factor", "plateau_patience", "plateau_min_lr", "precision", "xla",
    "strategy", "seed", "deterministic", "checkpoint_every", "keep_checkpoints",
    "misclassified", "worst_classes", "make_synthetic_data", "progress", "stop_after_epoch",
    "cluster_timeout")


def build_config(f) -> "training.config.RunConfig":  # noqa: F821
    """The run settings from parsed flags ``f`` (raises ConfigError for bad values)."""
    from training import config as config_lib
    if not f.data:
        raise config_lib.ConfigError("--data is required (a build folder)")
    if not f.out:
        raise config_lib.ConfigError("--out is required (the run's output folder)")
    defaults = dict(image_size=f.image_size, batch_size=f.batch_size, augment=f.augment,
                    plateau=f.plateau)
    if f.phase:
        phases = tuple(config_lib.parse_phase(s, **defaults) for s in f.phase)
    else:
        if f.epochs < 1:
            raise config_lib.ConfigError(f"--epochs={f.epochs}: must be >= 1")
        phases = (config_lib.Phase(epochs=f.epochs, image_size=f.image_size,
                                   batch_size=f.batch_size, augment=f.augment,
                                   plateau=f.plateau),)
    kwargs = {k: getattr(f, k) for k in _CONFIG_FLAGS}
    from training import fileio
    kwargs["data"] = fileio.abspath(kwargs["data"])  # URLs (gs://, ram://, ...) unchanged
    kwargs["out"] = fileio.abspath(kwargs["out"])
    return config_lib.RunConfig(phases=phases, **kwargs)


def _fail(msg: str) -> None:
    print(f"train_main: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TF's per-step INFO lines drown the progress bar
    if FLAGS.num_logical_cpus > 1:
        from training import strategy as strategy_lib
        strategy_lib.configure_logical_cpus(FLAGS.num_logical_cpus)

    import training
    from training import config as config_lib
    from tinyimagenet_tfrecords import manifest as manifest_lib
    try:
        cfg = build_config(FLAGS)
        if FLAGS.make_synthetic_data and not os.path.exists(cfg.data):
            training.make_synthetic_build(
                cfg.data, num_classes=FLAGS.synthetic_classes,
                train_per_class=FLAGS.synthetic_train_per_class,
                val_per_class=FLAGS.synthetic_val_per_class, seed=FLAGS.seed)
        own = FLAGS.get_flags_for_module(sys.modules[__name__])
        flags_text = "".join(fl.serialize() + "\n" for fl in sorted(own, key=lambda x: x.name)
                             if fl.serialize())
        summary = training.run(cfg, flags_text=flags_text)
    except (config_lib.ConfigError, manifest_lib.BuildError, training.RunError) as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except training.RunFailure as e:
        print(f"train_main: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        sys.exit(1)
    print(f"done: {summary['epochs']} epochs, best val top-1 {summary['best_val_acc']:.4f}; "
          f"outputs in {FLAGS.out}")


def run():
    """Console-script entry point (``train_main`` in setup.cfg)."""
    app.run(main)


if __name__ == "__main__":
    run()
