"""Bad-input audit: run unusual and wrong input through the command line and the API, judge each.

    python -m multireg.testing.audit [--quick] [--backend NAME] [--out FILE [--overwrite]]
                                     [--cases TEXT] [--keep] [--list] [--hashes]

Each case writes its synthetic inputs (32² images and the like) into a temporary folder, runs one
command-line call (a subprocess ``python -m multireg ...``) or one API call (in this process, any
exception caught and classified), and records the exit code (or exception type), the first line
of the error, the time, and the sha256 of every input file before and after. Verdicts, worst
first (a case gets the first that applies):

``DATA LOSS``
    an input file (or a file the case said must be left alone, e.g. an existing output without
    ``--overwrite``) changed or disappeared.
``TRACEBACK``
    a traceback on stderr; exit code 1 (the command line's "unexpected error", a traceback it
    hides); death by a signal nobody sent; from the API an exception other than ``ValueError`` /
    ``TypeError`` (``OSError`` where a file is at fault), or one raised inside NumPy / torch /
    JAX rather than by multireg (e.g. torch's ``RuntimeError``, NumPy's ufunc ``TypeError``).
``PARTIAL OUTPUT``
    outputs incomplete after a success, any new file after a failure or an interrupt (a run's
    outputs are one unit: all of them or none), or a temporary left behind (a new file or folder
    whose name starts with ``.`` or contains ``.tmp``).
``WRONG VERDICT``
    success where an error is expected or the reverse, exit 3 (not converged) on a problem that a
    good library solves or refuses, a hang, or a wrong result (registering an image to itself not
    giving the identity, a known shift not recovered, ``result.json`` claiming levels that did
    not run, ``--help`` offering a backend that is then refused).
``POOR ERROR``
    the right kind of failure, but not a clear one-line message naming the problem (the message
    must mention one of the case's keywords, e.g. the option or file at fault, and must not name
    an internal temporary), or one that comes only after the work has started (``fast`` cases).
``ok``
    a clear one-line error naming the problem, or a correct success.

The expectations are what a careful library should do (issue 12), not today's behaviour. Exit
status 0 only when every case is ``ok``. ``--quick`` runs a subset (in-process API cases and a
few command-line calls) in well under a minute.

The module is the command: its cases are :mod:`multireg.testing.audit_cases`, its harness
:mod:`multireg.testing.audit_harness` (both re-exported here: ``Case``, ``Context``,
``Outcome``, ``run_case``, ``run_cases``, ``cases``); here are the tables and ``main``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from multireg.testing.audit_cases import cases
from multireg.testing.audit_harness import (
    VERDICTS,
    Case,
    Context,
    Outcome,
    run_case,
    run_cases,
)

__all__ = ["VERDICTS", "Case", "Context", "Outcome", "cases", "main", "run_case", "run_cases"]


# ----------------------------------------------------------------------------------- tables


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _inputs_cell(o: Outcome) -> str:
    changed = [k for k, (a, b) in o.hashes.items() if a != b]
    if changed:
        return "CHANGED " + ", ".join(Path(k).name for k in changed)
    return f"{len(o.hashes)} same"


def table(outcomes: Sequence[Outcome], *, markdown: bool = False, width: int = 64) -> str:
    header = ("case", "kind", "exit", "first line of the error", "inputs", "time", "verdict")
    rows = [
        (
            o.case,
            o.kind,
            o.exit,
            o.error if markdown else _short(o.error, width),
            _inputs_cell(o),
            f"{o.elapsed:.1f} s",
            o.verdict,
        )
        for o in outcomes
    ]
    if markdown:
        esc = [[c.replace("|", "\\|") for c in r] for r in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in esc]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        + [fmt.format(*r) for r in rows]
    )


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return {v: sum(o.verdict == v for o in outcomes) for v in VERDICTS}


def summary(outcomes: Sequence[Outcome]) -> str:
    c = counts(outcomes)
    parts = [f"{v} {n}" for v, n in c.items()]
    return f"{len(outcomes)} cases: " + ", ".join(parts)


def problems_text(outcomes: Sequence[Outcome], *, markdown: bool = False) -> str:
    lines = []
    for o in outcomes:
        if o.ok and not o.note:
            continue
        if o.ok:
            lines.append(f"- {o.case}: ok ({o.note})" if markdown else f"  {o.case}: ok ({o.note})")
            continue
        lines.append(f"- **{o.case}** ({o.verdict})" if markdown else f"  {o.case} ({o.verdict})")
        for p in o.problems:
            lines.append(f"  - {p}" if markdown else f"      {p}")
        if o.note:
            lines.append(f"  - note: {o.note}" if markdown else f"      note: {o.note}")
    return "\n".join(lines)


def hashes_text(outcomes: Sequence[Outcome]) -> str:
    lines = ["| case | file | sha256 before | sha256 after |", "|---|---|---|---|"]
    for o in outcomes:
        for key, (a, b) in sorted(o.hashes.items()):
            lines.append(f"| {o.case} | {key} | {a or '(absent)'} | {b or '(absent)'} |")
    return "\n".join(lines)


def markdown_report(
    outcomes: Sequence[Outcome], *, backend: str, quick: bool, elapsed: float
) -> str:
    return (
        "\n\n".join(
            [
                "# multireg bad-input audit",
                f"Backend {backend}; {'quick subset' if quick else 'all cases'}; "
                f"{elapsed:.0f} s; `python -m multireg.testing.audit`. {summary(outcomes)}.",
                table(outcomes, markdown=True),
                "## Cases that are not ok, and notes",
                problems_text(outcomes, markdown=True) or "None.",
                "## sha256 of the inputs each case named (and any that changed), before and after",
                hashes_text(outcomes),
            ]
        )
        + "\n"
    )


# -------------------------------------------------------------------------------------- main


def _default_backend() -> str:
    from multireg._backend import _instance, available_backends

    names = [n for n in available_backends() if _instance(n).differentiable]
    if not names:
        raise SystemExit("multireg audit: no differentiating backend is installed (torch or jax)")
    return "torch" if "torch" in names else names[0]


def _check_report_path(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise ValueError(f"--out {path}: is a folder; name a file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--out {path}: exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"--out {path}: {parent} is not a folder")


def _write_report(path: Path, text: str, overwrite: bool) -> None:
    """Atomically: a recognisable temporary beside ``path``, then a link (never clobbers) or a
    rename (``overwrite``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".multireg-audit.tmp"
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multireg.testing.audit",
        description="Run bad and unusual input through multireg's command line and API; "
        "print a table with a verdict per case. Exit 0 only when every case is ok.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a subset that runs in well under a minute"
    )
    parser.add_argument("--backend", help="backend for the runs (default: torch if installed)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out FILE")
    parser.add_argument("--cases", metavar="TEXT", help="only the cases whose name contains TEXT")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--hashes", action="store_true", help="also print the sha256 table")
    args = parser.parse_args(argv)

    selected = cases(quick=args.quick)
    if args.cases:
        selected = [c for c in selected if args.cases in c.name]
    if args.list:
        for c in selected:
            print(f"{c.name:40s} {c.kind:4s} expect {c.expect}{'  (quick)' if c.quick else ''}")
        return 0
    if args.out is not None:
        try:
            _check_report_path(args.out, args.overwrite)
        except (ValueError, OSError) as err:
            print(f"multireg audit: error: {err}", file=sys.stderr)
            return 2
    if args.backend is None:
        args.backend = _default_backend()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="multireg-audit-"))
    try:
        ctx = Context(root, args.backend)
        print(
            f"multireg audit: {len(selected)} cases, backend {args.backend}, in {root}", flush=True
        )

        def progress(o: Outcome) -> None:
            print(f"  {o.verdict:14s} {o.case} ({o.elapsed:.1f} s)", flush=True)

        outcomes = run_cases(ctx, selected, progress)
    finally:
        if not args.keep:
            for p in root.rglob("*"):
                with contextlib.suppress(OSError):
                    if not p.is_symlink() and p.is_dir():
                        p.chmod(0o755)
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print()
    print(table(outcomes))
    bad = problems_text(outcomes)
    if bad:
        print("\nnot ok, and notes:\n" + bad)
    if args.hashes:
        print("\n" + hashes_text(outcomes))
    print(f"\n{summary(outcomes)} ({elapsed:.0f} s)")
    if args.keep:
        print(f"kept {root}")
    if args.out is not None:
        text = markdown_report(outcomes, backend=args.backend, quick=args.quick, elapsed=elapsed)
        _write_report(args.out, text, args.overwrite)
        print(f"wrote {args.out}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
