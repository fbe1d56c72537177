"""The ``multireg`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="multireg", description="Variational image registration.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo on built-in synthetic data")
    demo.add_argument(
        "--backend", action="append", help="backend to run (repeatable; default: all installed)"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from multireg.demo import run

        run(args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
