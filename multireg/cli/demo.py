"""``multireg demo``: every capability on built-in synthetic data, with figures."""

from __future__ import annotations

from pathlib import Path

from multireg.cli._common import (
    EXIT_OK,
    _accepts,
    _backend_names,
    _common,
    add_command,
)


def add_parser(commands) -> None:
    """The ``demo`` command's parser."""
    demo = add_command(
        commands,
        "demo",
        "run every capability on built-in synthetic data and write figures",
        [_common(backend=False)],
        "The demo: registration, homotopy, super-resolution and dynamics on synthetic data, "
        "on every installed backend, with figures written to a folder it names.",
    )
    demo.add_argument(
        "--backend",
        action="append",
        choices=_backend_names(),
        help="backend to run (repeatable; default: all installed)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for the figures (default: a new multireg-demo-<time> folder)",
    )
    demo.add_argument(
        "--overwrite", action="store_true", help="reuse a folder that holds an earlier demo"
    )
    demo.add_argument(
        "--small", action="store_true", help="smaller problems (seconds instead of a minute)"
    )


def run(args) -> int:
    from multireg.workflow import demo

    if _accepts(demo.run, "quiet"):
        options = {}
        for key in ("overwrite", "small"):
            if getattr(args, key):
                if not _accepts(demo.run, key):
                    raise ValueError(f"this multireg's demo has no option --{key}")
                options[key] = True
        folder = demo.run(args.backend, out=args.out, quiet=args.quiet, **options)
        if not args.quiet and folder is not None:
            print(f"demo: figures written to {folder}")
    else:  # an older demo without figures
        if args.out is not None:
            raise ValueError("this multireg's demo writes no figures; --out is not supported")
        demo.run(args.backend, out=(lambda *a: None) if args.quiet else print)
    return EXIT_OK
