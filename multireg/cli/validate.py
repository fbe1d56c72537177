"""``multireg validate``: run one computing command on every backend and compare the results
(:func:`multireg.validate` on a callable built from the parsed command)."""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from multireg import io
from multireg.cli import dynamics, homotopy, register, superres
from multireg.cli._common import (
    EXIT_DISAGREE,
    EXIT_OK,
    _backend_names,
    _common,
    _input_paths,
    _positive,
    add_command,
    new_parser,
    parse,
)
from multireg.cli._compute import COMMANDS
from multireg.workflow.validate import ValidationReport, validate


def add_parser(commands) -> None:
    """The ``validate`` command's parser."""
    val = add_command(
        commands,
        "validate",
        "run one command on every installed backend and compare the results",
        [_common(backend=False)],
        "Cross-framework validation: run COMMAND ARGS on each backend, print a table of the "
        "agreement (max relative difference of parameters, images, objective; iteration "
        "counts) and the time per backend. Exit 4 if the agreement is worse than --rtol. "
        "--rtol, --backends, --report and --overwrite may come before or after COMMAND.",
    )
    val.add_argument(
        "--rtol", type=_positive, default=1e-6, help="tolerance on the relative differences"
    )
    val.add_argument(
        "--backends",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        default=None,
        metavar="B1,B2",
        help="backends to compare (default: every installed differentiable backend)",
    )
    val.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the table as Markdown to FILE (never over an input; an existing FILE "
        "only with --overwrite)",
    )
    val.add_argument("--overwrite", action="store_true", help="replace an existing --report FILE")
    val.add_argument(
        "validated",
        choices=tuple(COMMANDS),
        metavar="COMMAND",
        help=f"the command to validate: {', '.join(COMMANDS)}",
    )
    val.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS", help="the command's arguments"
    )


_VALIDATE_OPTIONS = ("--rtol", "--backends", "--report")
_VALIDATE_FLAGS = ("--overwrite",)  # the validated command writes nothing: it is validate's


def hoist_options(argv: list[str]) -> list[str]:
    """Move validate's own options from after COMMAND to before it (they may go anywhere):
    ``argv`` starts with ``validate``."""
    head, rest = argv[:1], argv[1:]
    options: list[str] = []
    i, remaining = 0, []
    while i < len(rest):
        token = rest[i]
        name = token.split("=", 1)[0]
        if token in _VALIDATE_FLAGS:
            options.append(token)
            i += 1
            continue
        if name in _VALIDATE_OPTIONS:
            if "=" in token:
                options.append(token)
                i += 1
            else:
                options.extend(rest[i : i + 2])
                i += 2
            continue
        remaining.append(token)
        i += 1
    return head + options + remaining


def parse_validated(argv: Sequence[str]) -> tuple[str, argparse.Namespace]:
    """Parse a computing command's line (``["register", "T.png", "R.png", ...]``) into
    ``(name, namespace)`` with the parsers of the computing commands alone, the same parsers
    :func:`multireg.cli.parse_command` uses: their usage errors (:class:`UsageError`) and help
    are those of ``multireg <command>``."""
    parser, commands = new_parser()
    for module in (register, homotopy, superres, dynamics):
        module.add_parser(commands)
    argv = [str(a) for a in argv]
    if not argv or argv[0] not in COMMANDS:
        raise ValueError(
            f"command {argv[0] if argv else ''!r} cannot be validated; commands that can: "
            f"{', '.join(COMMANDS)}"
        )
    args = parse(parser, argv, tuple(COMMANDS))
    return args.command, args


def validate_command(name: str, namespace: argparse.Namespace, **options: Any) -> ValidationReport:
    """:func:`multireg.validate` of the computing command ``name`` parsed into ``namespace``:
    the callable runs ``COMMANDS[name](namespace, backend)`` (a copy of the namespace per run)
    and returns the command's numbers with its status (``status``, or ``command_status`` when
    the numbers hold a ``status``); ``options``: :func:`multireg.validate`'s keywords."""
    if name not in COMMANDS:
        raise ValueError(
            f"command {name!r} cannot be validated; commands that can: {', '.join(COMMANDS)}"
        )
    command = COMMANDS[name]

    def run(*, backend: str) -> dict:
        result, status = command(copy.copy(namespace), backend)
        leaves = dict(result) if isinstance(result, Mapping) else {"result": result}
        leaves["status" if "status" not in leaves else "command_status"] = status
        return leaves

    return validate(run, **options)


def run_command(
    argv: Sequence[str],
    *,
    backends: Sequence[str] | None = None,
    rtol: float = 1e-6,
    out: str | Path | Callable[[str], Any] | None = None,
    **options: Any,
) -> ValidationReport:
    """Validate a command line: ``argv`` is a computing command and its arguments, e.g.
    ``["register", "T.png", "R.png", "--transform", "affine"]``, parsed once
    (:func:`parse_validated`) and run per backend (:func:`validate_command`; ``options``:
    :func:`multireg.validate`'s other keywords). ``out``: a callable that receives the
    Markdown table, or a path the table is written to (atomically), or None."""
    if isinstance(argv, str) or not isinstance(argv, (list, tuple)) or not argv:
        raise TypeError("argv must be a non-empty list of strings (a command and its arguments)")
    if not all(isinstance(a, str) for a in argv):
        raise TypeError("argv must hold strings only")
    name, namespace = parse_validated(argv)
    report = validate_command(
        name, namespace, backends=backends, rtol=rtol, title=" ".join(argv), **options
    )
    if callable(out):
        out(report.table())
    elif out is not None:
        path = Path(out)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(report.table())
        tmp.replace(path)
    return report


def run(args) -> int:
    """``multireg validate``: the inner command's usage errors and the --report's output rules
    come before any work; exit 4 when the backends disagree by more than --rtol."""
    argv = [args.validated, *args.args]
    name, inner = parse_validated(argv)
    wrong = [b for b in args.backends or () if b not in _backend_names()]
    if wrong:  # e.g. numpy: forward-only, so no command can run on it
        raise ValueError(
            f"--backends: cannot validate on {', '.join(map(repr, wrong))}; "
            f"choose from {', '.join(_backend_names())}"
        )
    outputs = None
    if args.report is not None:  # the same output rules as every command, before any work
        outputs = io.OutputSet([args.report], overwrite=args.overwrite, protect=_input_paths(inner))
    report = validate_command(
        name, inner, backends=args.backends, rtol=args.rtol, title=" ".join(argv)
    )
    if outputs is not None:
        with outputs:
            outputs.stage(args.report).write_text(report.table(), encoding="utf-8")
    if not args.quiet:
        print(report.table())
    if not report.ok:
        print(
            f"multireg: error: the backends disagree by more than --rtol {args.rtol:g}",
            file=sys.stderr,
        )
        return EXIT_DISAGREE
    return EXIT_OK
