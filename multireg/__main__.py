"""``python -m multireg`` and the ``multireg`` console script; see :mod:`multireg.cli`.

Exit codes: 0 success, 1 unexpected error, 2 bad input or usage, 3 the solver did not converge
(outputs still written), 4 ``validate``: the backends disagree, 5 ``register-many``: a pair
failed, 130 interrupted, 141 stdout's reader went away (``| head``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``multireg`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        from multireg.cli import main as cli_main  # imports the frameworks' glue: seconds

        try:
            return cli_main(argv)  # --help and usage errors exit through SystemExit
        finally:
            sys.stdout.flush()  # text buffered for a closed pipe fails here, not at exit
    except KeyboardInterrupt:  # Ctrl-C before the command line's own handler is in place
        print("multireg: interrupted before any output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        from multireg import cli

        if not cli.stdout_closed():
            raise
        return cli.stop_writing_stdout()


if __name__ == "__main__":
    sys.exit(main())
