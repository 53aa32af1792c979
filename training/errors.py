"""The exceptions a run ends with, one per exit status the command line reports.

Every message is one line that names the file or setting at fault. ``train_main`` maps
:class:`RunError` (and ``ConfigError``, ``manifest.BuildError``) to exit status 2,
:class:`RunFailure` to 1 and :class:`Interrupted` to 130, so scripts can tell "fix your
command" from "the run broke while it was running" from "stopped; resume it".
"""

from __future__ import annotations

import re

# How a failure's message ends when it leaves the checkpoint question open (the fit loop and
# the shard check cannot see the run folder); :func:`with_checkpoint_note` settles it.
_KEPT = re.compile(r"the last checkpoint (\(if any\) )?is kept$")


class RunError(Exception):
    """Bad input: the data, the output folder or a setting; nothing was trained (exit 2)."""


class RunFailure(Exception):
    """The run started and could not go on (disk full, corrupt shard, ...); exit 1.

    The last good checkpoint is kept, so the same command resumes once the cause is fixed.
    """


class Diverged(RunFailure):
    """The training loss became NaN or infinite; the message names the epoch and step."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the run stopped after its last checkpoint (exit 130).

    The message says after which epoch and that the same command resumes.
    """


def checkpoint_note(epoch: int) -> str:
    """What a stopped run leaves to resume from: the last checkpoint's epoch, or that there
    is none (a user must not look for a checkpoint that was never written)."""
    return f"the last checkpoint (epoch {epoch}) is kept" if epoch else \
        "no checkpoint was written yet"


def with_checkpoint_note(failure: RunFailure, epoch: int) -> RunFailure:
    """``failure`` with its "the last checkpoint (if any) is kept" made exact for a run whose
    newest checkpoint is of ``epoch`` (0: none)."""
    text = str(failure)
    if not _KEPT.search(text):
        return failure
    return type(failure)(_KEPT.sub(checkpoint_note(epoch), text))
