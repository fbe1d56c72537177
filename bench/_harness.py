"""Timing and table helpers shared by the bench/ scripts.

Everything measured in one process, side by side; times are medians of warm runs, and the first
call (with compilation where the backend compiles) is reported separately as "cold".
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"


def measure(
    fn: Callable[[], object],
    *,
    sync: Callable[[object], object] = lambda x: x,
    min_time: float = 0.4,
    max_runs: int = 50,
    min_runs: int = 5,
) -> tuple[float, float]:
    """``(cold, median_warm)`` wall-clock seconds of ``fn()``, synchronised by ``sync``."""
    t0 = time.perf_counter()
    sync(fn())
    cold = time.perf_counter() - t0
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (
        time.perf_counter() - start < min_time and len(times) < max_runs
    ):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return cold, statistics.median(times)


def stream_bandwidth(n_bytes: int = 1 << 27, repeat: int = 5) -> float:
    """Sustained copy bandwidth in bytes/s (read + write), NumPy ``copyto`` on a large array."""
    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def fmt_time(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table (readable as plain text too). A ``|`` inside a cell is escaped: it
    would otherwise end the cell (registration.py's iterations "7 | 3+3+4" split its row)."""
    cells = [[str(r.get(c, "")).replace("|", "\\|") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join([line, rule, *body])


def write_report(name: str, text: str, *, collect: bool = True) -> Path:
    """Write ``bench/out/<name>.md``; with ``collect``, also refresh ``bench/out/REPORT.md``, the
    one report that holds every script's latest table (``multireg.report``; ``multireg bench``
    runs every script and writes it afresh)."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    if collect:
        collect_report()
    return path


def collect_report() -> Path | None:
    """Assemble ``bench/out/REPORT.md`` from the tables in bench/out/ (runs nothing). A failure
    here is reported on stderr and never fails the benchmark that called it."""
    try:
        from multireg.workflow.report import write_bench_report

        return write_bench_report(bench_dir=OUT.parent, run=False, quiet=True)
    except Exception as exc:  # the benchmark's own table is already written
        print(f"could not refresh bench/out/REPORT.md: {exc}", file=sys.stderr)
        return None
