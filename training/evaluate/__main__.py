"""Evaluate a saved model: ``python -m training.evaluate --model=<run>/best.keras --data=<build>
--out=<folder>``.

Maps flags to :func:`training.evaluate.evaluate_model`; the evaluation settings' flags come
from their one declaration (``training.config.EvalSettings``) and are checked before
TensorFlow is imported (``evaluate_model`` checks its inputs before it loads the model).
``--split=test`` (unlabelled) cannot be scored: give ``--predictions=FILE.csv`` for a CSV of
predicted wnids per image (filename, wnid, top-5 wnids). Exit status: 0 done, 2 bad input or usage (one line on stderr), 1 a
failure while running (e.g. a corrupt shard, a full disk).

The package's ``__main__``: it imports the library (``training.evaluate``), which never imports
it back, and nothing else imports it, so its flags are defined once, only for this command.
"""

from __future__ import annotations

import sys

from absl import flags

from plumbing import cli as cli_lib
from training import config as config_lib
from training import settings

cli_lib.quiet_tensorflow()

flags.DEFINE_string("model", None, "a .keras model file (e.g. <run>/best.keras)")
flags.DEFINE_string("data", None, "a finished TFRecord build folder")
flags.DEFINE_string("out", None, "folder for the report files (labelled splits)")
flags.DEFINE_string("predictions", None, "write a CSV of predictions (filename, wnid, top5) "
                    "for every image of --split; the way to use the unlabelled test split")
flags.DEFINE_string("split", "val", "split to evaluate")
flags.DEFINE_bool("xla", True, "compile the eval step with XLA")
# --image_size, --batch_size, --misclassified, --worst_classes: declared once in
# training.config.EvalSettings (a run's final report uses the same declarations).
settings.define_eval_flags(flags.FLAGS, __name__)

FLAGS = flags.FLAGS


def _fail(msg: str, status: int) -> None:
    print(f"evaluate: error: {msg}", file=sys.stderr, flush=True)
    if status == cli_lib.EXIT_INTERRUPTED:
        # Nothing is half-written (reports are written whole at the end): leave at once
        # instead of waiting tens of seconds for TensorFlow's objects to be collected.
        cli_lib.exit_now(status)
    sys.exit(status)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    cli_lib.interrupt_on_signals()  # also when started as a background job (SIGINT ignored)
    if not FLAGS.model or not FLAGS.data:
        _fail("--model and --data are required (and --out and/or --predictions)", 2)
    try:  # settings first: a bad value is refused before TensorFlow starts (seconds)
        chosen = settings.eval_settings(FLAGS)
    except config_lib.ConfigError as e:
        _fail(str(e).splitlines()[0], 2)
    from tinyimagenet_tfrecords import manifest as manifest_lib
    from training import evaluate
    from training import reports
    from training.errors import RunError, RunFailure
    try:
        result = evaluate.evaluate_model(
            FLAGS.model, FLAGS.data, out=FLAGS.out, predictions=FLAGS.predictions,
            split=FLAGS.split, image_size=chosen.image_size, batch_size=chosen.batch_size,
            xla=FLAGS.xla, misclassified=chosen.misclassified,
            worst_classes=chosen.worst_classes)
    except (RunError, manifest_lib.BuildError, config_lib.ConfigError) as e:
        _fail(str(e).splitlines()[0], 2)
    except RunFailure as e:
        _fail(str(e).splitlines()[0], 1)
    except KeyboardInterrupt:
        _fail("interrupted", cli_lib.EXIT_INTERRUPTED)
    if result["report"] is not None:
        print(reports.report_text(result["report"]), end="")
    if result["predictions"] is not None:
        print(f"predictions: {result['predictions']} images of split {FLAGS.split} -> "
              f"{FLAGS.predictions}", file=sys.stderr)


def run():
    """Entry point: ``--help`` lists this module's flags; a flag error is one line and
    exit 2."""
    cli_lib.run(main, __name__)


if __name__ == "__main__":
    run()
