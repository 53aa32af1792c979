"""The exceptions a run ends with, one per exit status the command line reports.

Every message is one line that names the file or setting at fault. ``train_main`` maps
:class:`RunError` (and ``ConfigError``, ``manifest.BuildError``) to exit status 2 and
:class:`RunFailure` to exit status 1, so scripts can tell "fix your command" from "the run
broke while it was running".
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
