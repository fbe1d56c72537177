"""``multireg register-many``: register the pairs of a CSV manifest on a process pool or a
Dask cluster, each pair's outputs those of ``multireg register``, and a summary."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from multireg import io
from multireg.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    EXIT_PAIRS_FAILED,
    _cli_default_backend,
    _common,
    _count,
    _floats,
    _out_dir,
    _outputs,
    add_command,
    stdout_closed,
    stop_writing_stdout,
)
from multireg.cli._compute import _write
from multireg.cli._options import (
    _add_registration_options,
    _check_registration_options,
    _registration_kwargs,
)
from multireg.cli.register import _register_files, _register_result
from multireg.optimize import Status


def add_parser(commands) -> None:
    """The ``register-many`` command's parser."""
    outputs = _outputs()
    many = add_command(
        commands,
        "register-many",
        "register many pairs listed in a CSV manifest, on a process pool or a Dask cluster",
        [_common(device=False, per_worker=True), outputs],
        "Register every (template, reference) pair of MANIFEST with the same options as "
        "'multireg register' (multireg.register_many: each pair exactly once, on a pool "
        "of --workers processes or on the Dask scheduler at --scheduler). MANIFEST is a CSV "
        "file with the columns template and reference (image paths, relative to the "
        "manifest's folder) and optionally id (the pair's folder name; default the template's "
        "file name without extension, or pair-<row> when those repeat) and template_labels, "
        "reference_labels (label maps on the images' grids: the template's labels are warped "
        "with the pair's map, nearest neighbour, and scored against the reference's by Dice). "
        "Each pair's outputs are written by its worker as it completes, all of them or none, "
        "to DIR/<id>/: the files 'multireg register' writes for the pair (warped.<ext>: "
        "T(y) on R's grid in R's format; result.json; displacement.npz for --transform "
        "nonparametric), so 'multireg apply DIR/<id>' works; DIR/summary.csv has one row per "
        "pair (id, status, distance, reduction, iterations, time, Dice, error). A pair that "
        "fails is a row with its error; the others go on. The manifest is checked (columns, "
        "files, ids, outputs) before any work. Ctrl-C cancels every pair: pairs not finished "
        "leave no folder, and summary.csv lists them as cancelled (exit 130). With "
        "--scheduler, a pair already running on a Dask worker cannot be stopped from here: it "
        "may still complete and write its folder after Ctrl-C (summary.csv lists it as "
        "cancelled all the same).",
    )
    many.add_argument(
        "manifest", type=Path, metavar="MANIFEST", help="CSV file listing the pairs (see above)"
    )
    g = many.add_argument_group("image input")
    g.add_argument(
        "--spacing",
        type=_floats,
        default=None,
        metavar="S1,S2[,S3]",
        help="pixel size per axis for formats without geometry (default 1: omega in pixels)",
    )
    _add_registration_options(many)
    g = many.add_argument_group("execution")
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=_count,
        default=None,
        metavar="N",
        help="local worker processes, one pair each at a time (default: the CPUs, at most 8)",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="address of a Dask scheduler (tcp://host:8786) to run the pairs on its workers "
        "(needs dask.distributed: pip install 'multireg[dask]')",
    )


class _PairWriter:
    """``register-many``'s writer (:func:`multireg.register_many`'s ``writer``): a pair's
    folder gets the files of ``multireg register`` for that pair, written by the same code
    (:func:`_register_result`, :func:`_write`), all of them or none. Runs in the worker; holds
    only the parsed options, so it pickles to a spawned process or a Dask worker."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def __call__(self, folder: Path, result, *, job, backend, inputs, seconds) -> dict[str, str]:
        T, R = inputs  # io.Image: register-many's jobs are paths
        plan = {
            **_register_files(self.args, folder, Path(job.reference)),
            "result": folder / "result.json",
        }
        command = _register_result(self.args, T, R, result, backend, None, seconds)
        written = _write(
            "register", self.args, command, plan, io.OutputSet(plan.values(), overwrite=True)
        )
        return {k: str(v) for k, v in written.items()}


_MANIFEST_COLUMNS = ("template", "reference", "id", "template_labels", "reference_labels")


def _read_manifest(path: Path) -> list[dict]:
    """The pairs of a register-many manifest, checked before any work: the columns (template,
    reference; optional id, template_labels, reference_labels; no others), at least one row,
    every file present (paths relative to the manifest's folder), ids distinct and usable as
    folder names. Each error names the manifest and the row (its line in the file)."""
    import csv

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (the manifest)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"manifest {path}: cannot be read as text ({err})") from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or ()]
    if not columns:
        raise ValueError(f"manifest {path} is empty: it needs a header 'template,reference'")
    missing = [c for c in ("template", "reference") if c not in columns]
    if missing:
        raise ValueError(
            f"manifest {path}: no column {', '.join(map(repr, missing))} (header: "
            f"{','.join(columns)})"
        )
    unknown = [c for c in columns if c not in _MANIFEST_COLUMNS]
    if unknown or len(set(columns)) != len(columns):
        raise ValueError(
            f"manifest {path}: unknown or repeated column(s) "
            f"{', '.join(map(repr, unknown or columns))}; the columns are "
            f"{', '.join(_MANIFEST_COLUMNS)}"
        )
    folder = path.parent
    rows: list[dict] = []
    for raw in reader:
        line = reader.line_num
        if None in raw:
            raise ValueError(f"manifest {path}, line {line}: more values than columns")
        cells = {k.strip(): (v or "").strip() for k, v in raw.items()}
        if not any(cells.values()):
            continue  # a blank line
        row: dict = {"line": line}
        for key in ("template", "reference", "template_labels", "reference_labels"):
            value = cells.get(key, "")
            if not value:
                if key in ("template", "reference"):
                    raise ValueError(f"manifest {path}, line {line}: no {key}")
                row[key] = None
                continue
            file = folder / value
            if not file.is_file():
                raise FileNotFoundError(f"manifest {path}, line {line}: {key} {file}: no such file")
            row[key] = file
        if (row["template_labels"] is None) != (row["reference_labels"] is None):
            raise ValueError(
                f"manifest {path}, line {line}: give template_labels and reference_labels "
                "together (Dice compares the warped template labels with the reference's)"
            )
        row["id"] = cells.get("id", "")
        rows.append(row)
    if not rows:
        raise ValueError(f"manifest {path} is empty: it has a header but no pairs")
    if not any(r["id"] for r in rows):  # the template's name, unless two templates share it
        stems = [_stem(r["template"]) for r in rows]
        unique = len(set(stems)) == len(stems)
        for i, r in enumerate(rows):
            r["id"] = stems[i] if unique else f"pair-{i + 1}"
    for r in rows:
        name = r["id"]
        if not name or name in (".", "..") or "/" in name or "\\" in name or name[0] == ".":
            raise ValueError(
                f"manifest {path}, line {r['line']}: id {name!r} cannot name a folder (it must "
                "be non-empty, without / or \\, and not start with '.')"
            )
    ids = [r["id"] for r in rows]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"manifest {path}: the ids {', '.join(twice)} repeat (one folder each)")
    return rows


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", *(path.suffixes[-1:] or [""])):
        if ext and name.lower().endswith(ext.lower()):
            return name[: -len(ext)]
    return name


def _pair_map(args, result, domain):
    """The pair's map y(x) on the reference grid, from what the worker returned and wrote."""
    import multireg
    from multireg.workflow.apply import Map

    if args.transform != "nonparametric":
        options = {"omega": domain.omega, "p": tuple(args.p)} if args.transform == "bspline" else {}
        trafo = multireg.transform(args.transform, None if options else domain.dim, **options)
        return Map(domain, trafo, np.asarray(result.w))
    with np.load(result.outputs["displacement"]) as arrays:  # register's displacement.npz
        return Map(domain, displacement=arrays["displacement"])


def _pair_dice(args, row: dict, result) -> tuple[float, float]:
    """Dice (mean over labels) of the template's labels before (identity) and after warping
    with the pair's map (nearest neighbour), against the reference's labels."""
    from multireg.workflow import metrics
    from multireg.workflow.apply import apply

    fixed = io.read_image(row["reference_labels"], spacing=args.spacing)
    moving = io.read_image(row["template_labels"], spacing=args.spacing)
    if fixed.m != moving.m:
        raise ValueError(f"label maps of shapes {moving.m} and {fixed.m} (they share one grid)")
    warped = apply(_pair_map(args, result, fixed.domain), moving, order="nearest")
    return metrics.dice(moving.data, fixed.data).mean, metrics.dice(warped, fixed.data).mean


_SUMMARY_COLUMNS = (
    "id", "status", "distance", "reduction", "iterations", "iterations_per_level", "det_min",
    "time_s", "dice_before", "dice", "backend", "worker", "template", "reference", "error",
)  # fmt: skip


def _summary_row(row: dict, result, dice: tuple | None, error: str | None) -> dict:
    def number(v, fmt=".9g"):
        return "" if v is None or v != v else format(v, fmt)

    out = {"id": row["id"], "template": str(row["template"]), "reference": str(row["reference"])}
    if result is None:
        return {**out, "status": "cancelled", "error": error or ""}
    out.update(
        status=result.status,
        distance=number(result.distance),
        reduction=number(result.reduction),
        iterations=str(sum(result.iterations)) if result.iterations else "",
        iterations_per_level="+".join(map(str, result.iterations)),
        det_min=number(result.det_min),
        time_s=number(result.seconds, ".3f"),
        dice_before=number(dice[0], ".6f") if dice else "",
        dice=number(dice[1], ".6f") if dice else "",
        backend=result.backend,
        worker=result.worker,
        error="; ".join(e for e in (result.error, error) if e),
    )
    return out


def _write_summary(path: Path, rows: list[dict], overwrite: bool, protect: list) -> None:
    import csv
    import io as _io

    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    outputs = io.OutputSet([path], overwrite=overwrite, protect=protect)
    with outputs:
        outputs.stage(path).write_text(buffer.getvalue(), encoding="utf-8")


def _progress_line(done: int, total: int, summary: dict) -> str:
    width = len(str(total))
    head = f"[{done:>{width}}/{total}] {summary['id']}: {summary['status']}"
    if summary["status"] == "failed":
        return f"{head}: {summary['error']}"
    text = (
        f"{head}, {summary['iterations']} iterations, distance {float(summary['distance']):.6g}"
        f", {float(summary['time_s']):.2f} s"
    )
    if summary["dice"]:
        text += f", Dice {float(summary['dice_before']):.3f} -> {float(summary['dice']):.3f}"
    if summary["error"]:
        text += f" ({summary['error']})"
    return text


def run(args) -> int:
    """``multireg register-many``: every pair of the manifest through
    :func:`multireg.register_many`; one folder per pair and DIR/summary.csv."""
    from multireg.workflow.many import register_many

    rows = _read_manifest(args.manifest)
    _check_registration_options(args)
    if args.workers == 0:
        raise ValueError("--workers must be at least 1")
    out = _out_dir(args, "register-many")
    inputs = [args.manifest] + [r[k] for r in rows for k in _MANIFEST_PATHS if r[k] is not None]
    planned = [out / "summary.csv"]
    for r in rows:  # each pair's folder: the files of 'multireg register' for the pair
        files = _register_files(args, out / r["id"], r["reference"])
        planned.extend([*files.values(), out / r["id"] / "result.json"])
    io.OutputSet(planned, overwrite=args.overwrite, protect=inputs)  # refused before any work
    for r in rows:  # a file of an earlier run that this one would leave beside its own
        for name, earlier in (("displacement.npz", "a nonparametric run"),
                              ("y_grid.npy", "an older multireg")):  # fmt: skip
            stale = out / r["id"] / name
            if stale not in planned and (stale.exists() or stale.is_symlink()):
                raise ValueError(
                    f"{stale}: left by {earlier}; this run writes no {name} and would leave it "
                    "beside its own outputs: remove it (or choose another --out)"
                )
    levels = args.levels if args.levels != 1 else None
    options = _registration_kwargs(args, levels)
    backend = args.backend or _cli_default_backend()
    executor = None
    if args.scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError(
                "--scheduler needs dask.distributed: pip install 'multireg[dask]'"
            ) from None
        try:
            executor = Client(args.scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise ValueError(f"--scheduler {args.scheduler}: cannot connect ({err})") from None
    summaries: list[dict | None] = [None] * len(rows)
    failed_metrics = 0

    def progress(done: int, total: int, result) -> None:
        nonlocal failed_metrics
        row = rows[result.index]
        dice, error = None, None
        if result.ok and row["template_labels"] is not None:
            try:
                dice = _pair_dice(args, row, result)
            except Exception as err:  # the registration's outputs stand; the row says why
                error = f"Dice: {type(err).__name__}: {err}".splitlines()[0]
                failed_metrics += 1
        summaries[result.index] = _summary_row(row, result, dice, error)
        if not args.quiet:
            try:
                print(_progress_line(done, total, summaries[result.index]), flush=True)
            except BrokenPipeError:  # '| head': the reader left; the pairs and summary go on
                if not stdout_closed():
                    raise
                stop_writing_stdout()

    jobs = [
        {"template": str(r["template"]), "reference": str(r["reference"]), "name": r["id"]}
        for r in rows
    ]
    out.mkdir(parents=True, exist_ok=True)  # the pair folders appear in it one by one
    interrupted = False
    started = time.perf_counter()
    try:
        register_many(
            jobs, executor=executor, workers=args.workers, backend=backend, dtype=args.dtype,
            threads=args.threads or 1, spacing=args.spacing, out=out, writer=_PairWriter(args),
            progress=progress, **options,
        )  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if executor is not None:
            executor.close()
    table = [
        s if s is not None else _summary_row(r, None, None, "interrupted before it finished")
        for r, s in zip(rows, summaries)
    ]
    for folder in (out, *(out / r["id"] for r in rows)):  # what killed workers left behind
        io.remove_stale_temporaries(folder)
    _write_summary(out / "summary.csv", table, args.overwrite, inputs)
    statuses = [s["status"] for s in table]
    failed = statuses.count("failed") + failed_metrics
    if interrupted:
        print(
            f"multireg: interrupted: {len(rows) - statuses.count('cancelled')} of {len(rows)} "
            f"pairs finished (their folders are complete), the others were cancelled and left "
            + (
                "nothing"
                if args.scheduler is None  # a Dask worker's running pair cannot be stopped
                else "nothing, except a pair already running on a Dask worker, which may "
                "still complete its folder"
            )
            + f"; see {out / 'summary.csv'}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not args.quiet:
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        print(
            f"register-many: {len(rows)} pairs on {backend} in "
            f"{time.perf_counter() - started:.1f} s: {counts}; wrote {out / 'summary.csv'}"
        )
    if failed:
        print(
            f"multireg: error: {failed} of {len(rows)} pairs failed (see the error column of "
            f"{out / 'summary.csv'}); exit code 5",
            file=sys.stderr,
        )
        return EXIT_PAIRS_FAILED
    if any(s != Status.CONVERGED.value for s in statuses):
        print(
            "multireg: warning: a pair did not converge (see the status column of "
            f"{out / 'summary.csv'}); outputs written, exit code 3",
            file=sys.stderr,
        )
        return EXIT_NOT_CONVERGED
    return EXIT_OK


_MANIFEST_PATHS = ("template", "reference", "template_labels", "reference_labels")
