"""Many registrations: a serial loop vs register_batch, and register_many on a process pool and on
Dask (issue 16).

    python bench/scale.py [--quick] [--pairs N] [--pairs-3d N] [--no-3d] [--backend jax|torch]
                          [--workers 2] [--no-executors] [--out PATH]

Pairs: synthetic series (an image moved by small random affine maps, seed 0) in two cases, 2-D
128² (blobs; 64 pairs, 16 with --quick) and 3-D 64³ (three Gaussian blobs; 16 pairs, 4 with
--quick: one 64³ pair takes ~5 s serially on a 2-core machine, so 64 pairs would take over 5
minutes per row and the five rows most of an hour; the table gives each case's pair count),
each registered affine MLPIR (θ = 1e-2, 3 levels). --quick takes a few minutes with torch; with
JAX the first batched call at 64³ also compiles the 3-D kernels (~3 min on a loaded 2-core
machine; JAX's compilation cache keeps them for the next run). Rows, side by side in one
run, per case:
the loop in this process (warm: after one pair compiled the kernels), register_batch in this
process (all pairs in one batch onto the one reference; first call, which compiles its kernels,
and warm), register_many on a spawned process pool of ``--workers`` processes, and on a Dask
``LocalCluster`` with as many single-threaded worker processes (if dask.distributed is
installed). Throughput is pairs per second of wall time, including the workers' start and their
first compilations (that is what a user pays once per run); peak memory is the largest resident
set of one worker (Linux's VmHWM, each worker's own; for the rows in this process, the peak
during that row).

Every pair is checked against the loop's result (max |Δw|), so a fast wrong row cannot pass.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPORT = "scale"


def series(n: int, m: tuple[int, ...], seed: int = 0):
    from multireg import spline_coefficients, spline_interpolate
    from multireg.data import blobs
    from multireg.grid import Domain

    omega = tuple(v for k in range(len(m)) for v in (0.0, 1.0))
    domain = Domain(omega, m)
    if len(m) == 2:
        R, _ = blobs(m, omega)
    else:
        x = domain.cell_centers().reshape(*m, 3)
        R = sum(
            np.exp(-40 * np.sum((x - c) ** 2, axis=-1))
            for c in ((0.4, 0.5, 0.5), (0.6, 0.4, 0.55), (0.5, 0.62, 0.4))
        )
    rng = np.random.default_rng(seed)
    coef = spline_coefficients(R, 0.0)
    x = domain.cell_centers()
    pairs = []
    for _ in range(n):
        d = len(m)
        A = np.eye(d) + 0.03 * rng.standard_normal((d, d))
        b = 0.02 * rng.standard_normal(d)
        y = (x - 0.5) @ A.T + 0.5 + b
        T = spline_interpolate(coef, domain, y).reshape(m)
        pairs.append((T, R))
    return pairs, omega


def _peak_mb(*_: object) -> float:
    """This process's peak resident set since it started or since :func:`_reset_peak`: Linux's
    VmHWM. Not ru_maxrss: Linux carries that over fork and exec, so a worker spawned after this
    process grew would report this process's peak as its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM); elsewhere a no-op."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def executors(workers: int):
    """(name, context manager giving (executor, peak-memory-per-worker function))."""
    import concurrent.futures as cf
    import contextlib
    import multiprocessing

    @contextlib.contextmanager
    def pool():
        spawn = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=spawn) as ex:
            peaks = lambda: max(ex.map(_peak_mb, range(4 * workers)))  # noqa: E731
            yield ex, peaks

    @contextlib.contextmanager
    def dask():
        import dask
        import distributed

        from multireg.workflow.many import DASK_WORKERS

        with (
            dask.config.set(DASK_WORKERS),  # no MALLOC_TRIM_THRESHOLD_ (1.7-2.8x slower)
            distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client, lambda: max(client.run(_peak_mb).values())

    found = [("process pool", pool)]
    try:
        import distributed  # noqa: F401

        found.append(("Dask LocalCluster", dask))
    except ImportError:
        print("  dask.distributed not installed: no Dask rows", flush=True)
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="16 pairs 2-D 128², 4 pairs 3-D 64³ (a few minutes)"
    )
    p.add_argument("--pairs", type=int, default=None, help="2-D 128² pairs (default 64)")
    p.add_argument("--pairs-3d", type=int, default=None, help="3-D 64³ pairs (default 16)")
    p.add_argument("--no-3d", action="store_true", help="the 2-D case only")
    p.add_argument("--backend", default="jax", choices=("jax", "torch"))
    p.add_argument("--workers", type=int, default=2, help="pool and Dask worker processes")
    p.add_argument("--no-executors", action="store_true", help="no pool and Dask rows")
    p.add_argument("--out", default=None, help="write the table here (default: bench/out/scale.md)")
    args = p.parse_args(argv)
    # one thread everywhere, here as in the workers (register_many sends the same): the JAX
    # adapter then turns off XLA's multithreading in both, the compiled programs' cache keys
    # match, and the workers load what this process compiled
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["MULTIREG_THREADS"] = "1"

    sys.path.insert(0, str(HERE))
    from _harness import table, write_report

    import multireg
    from multireg.problems.batch import register_batch
    from multireg.workflow.many import register_many

    for name in ("pairs", "pairs_3d", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    n2 = args.pairs or (16 if args.quick else 64)
    n3 = args.pairs_3d or (4 if args.quick else 16)
    cases = [("2-D 128²", (128, 128), n2)]
    if not args.no_3d:
        cases.append(("3-D 64³", (64, 64, 64), n3))
    options = dict(transform="affine", theta=1e-2, levels=3)
    rows = []
    started = time.perf_counter()
    for label, m, n in cases:
        pairs, omega = series(n, m)
        print(f"case {label}: {n} pairs, backend {args.backend}", flush=True)
        multireg.register(*pairs[0], omega, backend=args.backend, **options)  # compile
        _reset_peak()
        t0 = time.perf_counter()
        loop = [multireg.register(T, R, omega, backend=args.backend, **options) for T, R in pairs]
        t_loop = time.perf_counter() - t0
        bk = multireg.get_backend(args.backend)
        w_loop = np.stack([bk.to_numpy(r.w) for r in loop])
        rss_self = _peak_mb()
        rows.append({
            "case": label, "pairs": n, "how": "loop in one process (warm)", "workers": 1,
            "wall": f"{t_loop:.1f} s", "pairs/s": f"{n / t_loop:.2f}", "vs loop": "1.00",
            "peak MB / worker": f"{rss_self:.0f} (this process)", "max |Δw|": "0",
            "failed": sum(r.status.value != "converged" for r in loop),
        })  # fmt: skip
        print("  " + " | ".join(map(str, rows[-1].values())), flush=True)

        Ts, R = [T for T, _ in pairs], pairs[0][1]  # a series onto one reference
        for run in ("first call (compiles)", "warm"):
            _reset_peak()
            t0 = time.perf_counter()
            res = register_batch(Ts, R, omega, backend=args.backend, **options)
            t = time.perf_counter() - t0
            dw = float(np.max(np.abs(np.stack([bk.to_numpy(r.w) for r in res]) - w_loop)))
            same = all(r.iterations == x.iterations and r.status is x.status
                       for r, x in zip(res, loop, strict=True))  # fmt: skip
            rows.append({
                "case": label, "pairs": n, "how": f"register_batch, one batch, {run}", "workers": 1,
                "wall": f"{t:.1f} s", "pairs/s": f"{n / t:.2f}", "vs loop": f"{t_loop / t:.2f}",
                "peak MB / worker": f"{_peak_mb():.0f} (this process)",
                "max |Δw|": f"{dw:.1e}" + ("" if same else " (iterations or statuses differ)"),
                "failed": sum(r.status.value != "converged" for r in res),
            })  # fmt: skip
            print("  " + " | ".join(map(str, rows[-1].values())), flush=True)

        for how, make in [] if args.no_executors else executors(args.workers):
            with make() as (ex, memory):
                for run in ("first run (workers start)", "warm"):
                    t0 = time.perf_counter()
                    res = register_many(
                        pairs, omega=omega, executor=ex, backend=args.backend, **options
                    )
                    t = time.perf_counter() - t0
                    dw = float(np.max(np.abs(np.stack([r.w for r in res]) - w_loop)))
                    rows.append({
                        "case": label, "pairs": n, "how": f"register_many, {how}, {run}",
                        "workers": args.workers, "wall": f"{t:.1f} s", "pairs/s": f"{n / t:.2f}",
                        "vs loop": f"{t_loop / t:.2f}", "peak MB / worker": f"{memory():.0f}",
                        "max |Δw|": f"{dw:.1e}", "failed": sum(not r.ok for r in res),
                    })  # fmt: skip
                    print("  " + " | ".join(map(str, rows[-1].values())), flush=True)

    elapsed = time.perf_counter() - started
    columns = ["case", "pairs", "how", "workers", "wall", "pairs/s", "vs loop", "peak MB / worker",
               "max |Δw|", "failed"]  # fmt: skip
    text = "\n".join([
        "# Many registrations: loop vs register_batch vs register_many",
        "",
        f"{', '.join(f'{n} pairs {label}' for label, _, n in cases)}, affine MLPIR "
        f"(θ = 1e-2, 3 levels), backend {args.backend}, "
        f"1 thread per worker, {os.cpu_count()} CPUs; {elapsed:.0f} s in all. register_batch "
        "evaluates every pair's kernels in one call per step (peak memory: this process's high-"
        "water mark so far, loop included). Each executor runs the pairs "
        "twice: first with the workers starting (their first pair traces the kernels and loads "
        "them from the compilation cache), then warm.",
        "",
        table(rows, columns),
    ]) + "\n"  # fmt: skip
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(f"wrote {write_report(REPORT, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
