"""``multireg bench``: run the benchmarks and write one Markdown report."""

from __future__ import annotations

from pathlib import Path

from multireg import io
from multireg.cli._common import (
    EXIT_OK,
    _accepts,
    _common,
    _outputs,
    _positive,
    add_command,
)


def add_parser(commands) -> None:
    """The ``bench`` command's parser."""
    bench = add_command(
        commands,
        "bench",
        "run the benchmarks and write one Markdown report",
        [_common(backend=False), _outputs(folder=False)],
        "Run the bench/ scripts (backends and peers side by side) and write their tables "
        "into one Markdown report.",
    )
    bench.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats (minutes, not hours)"
    )
    bench.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="the report's path (default: chosen by multireg.report)",
    )
    bench.add_argument(
        "--no-run",
        action="store_true",
        help="run nothing: assemble the tables the scripts wrote last time",
    )
    bench.add_argument(
        "--timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="time limit per bench script (default: none)",
    )
    bench.add_argument(
        "--scripts",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        default=None,
        metavar="S1,S2",
        help="only these bench scripts (default: all)",
    )


def run(args) -> int:
    try:
        from multireg.workflow.report import write_bench_report
    except ImportError as err:
        raise ImportError(f"this multireg has no report module ({err})") from None
    if args.out is not None:  # refused or unwritable: said before the benchmarks run
        io.OutputSet([args.out], overwrite=args.overwrite)
    options: dict = {}
    for key, value in (("quiet", args.quiet), ("run", not args.no_run), ("timeout", args.timeout)):
        if _accepts(write_bench_report, key):
            options[key] = value
        elif key != "quiet" and value not in (True, None):
            raise ValueError(f"this multireg's bench report has no option {key!r}")
    path = write_bench_report(args.out, quick=args.quick, scripts=args.scripts, **options)
    if not args.quiet:
        print(f"bench: report written to {path}")
    return EXIT_OK
