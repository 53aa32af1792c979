"""The exceptions a run ends with, one per exit status the command line reports.

Every message is one line that names the file or setting at fault. ``train_main`` maps
:class:`RunError` (and ``ConfigError``, ``manifest.BuildError``) to exit status 2,
:class:`RunFailure` to 1 and :class:`Interrupted` to 130, so scripts can tell "fix your
command" from "the run broke while it was running" from "stopped; resume it".
"""

from __future__ import annotations


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
