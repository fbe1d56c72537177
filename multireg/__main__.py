"""``python -m multireg`` and the ``multireg`` console script; see :mod:`multireg.cli`.

Exit codes: 0 success, 1 unexpected error, 2 bad input or usage, 3 the solver did not converge
(outputs still written), 4 ``validate``: the backends disagree, 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``multireg`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        from multireg.cli import main as cli_main  # imports the frameworks' glue: seconds

        return cli_main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the command line's own handler is in place
        print("multireg: interrupted before any output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
