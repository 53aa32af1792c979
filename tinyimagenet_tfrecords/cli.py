"""The command-line convention of the data tools: absl flags, exit 2 for usage, 1 for failures.

Every tool's ``main(argv)`` maps its flags to one library call with explicit arguments and
returns :data:`EXIT_OK`, :data:`EXIT_FAILURE` (a failure while running) or
:data:`EXIT_BAD_INPUT` (bad input or usage); :func:`run` starts it so that ``--help`` lists
the tool's flags even under a console-script wrapper and a flag error is one line and exit 2
(absl alone exits 1).
"""

from __future__ import annotations

import os
import sys

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


def run(main, module_name: str) -> None:
    """``app.run(main)`` with the tool's flags listed by ``--help`` and usage errors exit 2.

    Args:
      main: ``main(argv) -> int`` of the tool.
      module_name: ``__name__`` of the module that defined the tool's flags.
    """
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    fv = flags.FLAGS
    # absl's --help lists the flags "key" to sys.argv[0]'s module; under a console script
    # that is the wrapper, so register the tool's flags for it too.
    for flag in fv.get_key_flags_for_module(sys.modules[module_name]):
        fv.register_key_flag_for_module(sys.argv[0], flag)
    name = os.path.basename(sys.argv[0]).removesuffix(".py")

    def parse(argv):
        try:
            return fv(argv)
        except flags.Error as e:
            print(f"{name}: error: {' '.join(str(e).split())}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse)
