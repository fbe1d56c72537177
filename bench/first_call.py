"""Time to first result: what a user meets in a new process, next to the warm numbers (issue 13).

    python bench/first_call.py [--quick] [--cases affine,elastic] [--backends jax,torch]
                               [--threads N] [--fair-data DIR] [--out PATH]

Every row is measured in new processes started by this script, side by side in one run:

* **first ever**: a new process with an empty compilation cache (``MULTIREG_CACHE_DIR`` pointing
  at a new empty folder);
* **new process, warm cache**: a second new process on the same cache folder;
* **warm**: the same call again inside that second process;
* **process**: the whole second process, from its start (interpreter, imports, reading the
  images) to its exit, which is what a command-line user waits for.

Compilations are counted with JAX's monitoring events (``compiles``: XLA compilations that the
persistent cache did not answer; ``traces``: jaxprs traced), never inferred from seconds.

Cases: FAIR's hands (``--fair-data`` or ``MULTIREG_FAIR_DATA``; synthetic blobs otherwise):
affine MLPIR with FAIR's settings (θ = 0.1, levels 3..7), through the API and through the
command line; elastic MLIR (α = 1e3, θ = 1e-2, levels 3..7); an α sweep (five values after the
first run, against five warm runs at one value); SimpleITK's affine (the reference setting of
bench/registration.py) as a whole process and warm.

Threads: every library gets ``--threads`` (default 1) intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPORT = "first_call"
ALPHAS = (250.0, 500.0, 2e3, 4e3, 8e3)

CASES = {
    "affine": dict(transform="affine", theta=0.1, levels=(3, 7)),
    "elastic": dict(
        transform="nonparametric",
        regularizer="elastic",
        alpha=1e3,
        mu=1.0,
        lam=0.0,
        theta=1e-2,
        levels=(3, 7),
    ),
}


def thread_env(n: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MULTIREG_THREADS"):
        env[var] = str(n)
    env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n)
    if n == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    return env


# ------------------------------------------------------------------------------ child process


def images(fair_data):
    """(T, R, omega, file paths or None) — FAIR's hands if present, else synthetic blobs."""
    from multireg.data import load_fair

    folder = Path(fair_data) if fair_data else None
    if folder is not None and (folder / "hands-T.jpg").is_file():
        T, R, domain = load_fair("hands", folder)
        return T, R, domain.omega, (folder / "hands-T.jpg", folder / "hands-R.jpg")
    from multireg.data import blobs

    T, domain = blobs((128, 128), (0, 20, 0, 25))
    R = T[::-1, :].copy()  # a mirror image: far from the identity, but a defined problem
    return T, R, domain.omega, None


def child(spec: dict) -> dict:
    """Run in a new process: one case, first call and a warm call, with compile counts."""
    import collections

    out: dict = {}
    counts: collections.Counter = collections.Counter()
    if spec["kind"] == "sitk":
        import SimpleITK as sitk

        sys.path.insert(0, str(HERE))
        from registration import sitk_image, sitk_register, sitk_settings

        from multireg.grid import Domain

        T, R, omega, _ = images(spec["fair_data"])
        domain = Domain(omega, T.shape)
        setting = sitk_settings(domain)["SimpleITK RSGD σ>0"]

        def run():
            fixed, moving = sitk_image(sitk, R, domain), sitk_image(sitk, T, domain)
            return sitk_register(sitk, fixed, moving, 2, setting)

    else:
        if spec["backend"] == "jax":
            from jax import monitoring

            monitoring.register_event_listener(lambda name, **kw: counts.update([name]))
            monitoring.register_event_duration_secs_listener(
                lambda name, d, **kw: counts.update([name])
            )
        import multireg

        T, R, omega, _ = images(spec["fair_data"])
        options = dict(CASES[spec["case"]])

        def run(**changes):
            return multireg.register(T, R, omega, backend=spec["backend"], **{**options, **changes})

    def snapshot():
        snap = {
            "compiles": counts["/jax/core/compile/backend_compile_duration"]
            - counts["/jax/compilation_cache/cache_hits"],
            "hits": counts["/jax/compilation_cache/cache_hits"],
            "traces": counts["/jax/core/compile/jaxpr_trace_duration"],
        }
        counts.clear()
        return snap

    t0 = time.perf_counter()
    run()
    out["first"] = time.perf_counter() - t0
    out["first_counts"] = snapshot()
    t0 = time.perf_counter()
    run()
    out["warm"] = time.perf_counter() - t0
    out["warm_counts"] = snapshot()
    if spec.get("sweep"):
        t0 = time.perf_counter()
        for a in ALPHAS:
            run(alpha=a)
        out["sweep"] = time.perf_counter() - t0
        out["sweep_counts"] = snapshot()
    return out


# ----------------------------------------------------------------------------- parent process


def spawn(argv: list[str], env: dict, label: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=HERE.parent)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"{label}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def run_child(spec: dict, env: dict) -> dict:
    wall, stdout = spawn([sys.executable, __file__, "--child", json.dumps(spec)], env, f"{spec}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["process"] = wall
    return result


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def counts_text(c: dict | None) -> str:
    return "—" if not c else f"{c['compiles']} / {c['hits']} / {c['traces']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="affine rows and SimpleITK only")
    p.add_argument(
        "--cases", default=None, help="comma-separated cases (affine, elastic; default all)"
    )
    p.add_argument(
        "--backends", default=None, help="comma-separated backends (default: jax and torch)"
    )
    p.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    p.add_argument("--fair-data", default=os.environ.get("MULTIREG_FAIR_DATA"))
    p.add_argument("--out", default=None, help="report path (default bench/out/first_call.md)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    sys.path.insert(0, str(HERE))
    from _harness import table, write_report

    from multireg import available_backends

    backends = [b for b in ("jax", "torch") if b in available_backends()]
    if args.backends:
        backends = [b for b in backends if b in args.backends.split(",")]
    env = thread_env(args.threads)
    files = images(args.fair_data)[3]
    data = "FAIR hands 128²" if files else "synthetic blobs 128² (FAIR data not found)"
    print(f"data: {data}; backends {backends}; threads {args.threads}", flush=True)
    rows: list[dict] = []
    started = time.perf_counter()

    def add(case, how, backend, cold=None, warm_cache=None, r=None, **extra):
        rows.append({
            "case": case, "how": how, "backend": backend,
            "first ever": fmt(cold["first"]) if cold else "—",
            "first-ever process": fmt(cold["process"]) if cold else "—",
            "new process, warm cache": fmt(r["first"]) if r else fmt(warm_cache),
            "process": fmt(r["process"]) if r else "—",
            "warm": fmt(r["warm"]) if r else "—",
            "compiles / hits / traces (cold; warm cache)": (
                f"{counts_text(cold.get('first_counts'))}; {counts_text(r.get('first_counts'))}"
                if cold and r and backend == "jax" else "—"
            ),
            **extra,
        })  # fmt: skip
        print("  " + " | ".join(str(v) for v in rows[-1].values()), flush=True)

    cases = ["affine"] if args.quick else ["affine", "elastic"]
    if args.cases:
        cases = [c for c in args.cases.split(",") if c in CASES]
    with tempfile.TemporaryDirectory(prefix="multireg-bench-cache-") as tmp:
        for case in cases:
            print(f"case: hands {case}", flush=True)
            for backend in backends:
                cache = Path(tmp, f"{case}-{backend}")
                benv = {**env, "MULTIREG_CACHE_DIR": str(cache)}
                spec = {"kind": "multireg", "case": case, "backend": backend,
                        "fair_data": args.fair_data, "sweep": case == "elastic"}  # fmt: skip
                cold = run_child(spec, benv)
                again = run_child(spec, benv)
                add(case, "API", backend, cold, r=again)
                if case == "elastic":
                    five = 5 * again["warm"]
                    rows[-1]["α sweep (5 values) / 5 warm"] = f"{again['sweep'] / five:.2f}"
            if case == "affine" and files is not None:
                for backend in backends:
                    cache = Path(tmp, f"cli-{backend}")
                    benv = {**env, "MULTIREG_CACHE_DIR": str(cache)}
                    walls = []
                    for i in range(2):
                        out = Path(tmp, f"cli-out-{backend}-{i}")
                        argv = [sys.executable, "-m", "multireg", "register", str(files[0]),
                                str(files[1]), "--transform", "affine", "--backend", backend,
                                "--out", str(out), "--quiet"]  # fmt: skip
                        walls.append(spawn(argv, benv, "cli")[0])
                    rows.append({
                        "case": case, "how": "CLI `multireg register`", "backend": backend,
                        "first ever": "—", "first-ever process": fmt(walls[0]),
                        "new process, warm cache": "—", "process": fmt(walls[1]), "warm": "—",
                        "compiles / hits / traces (cold; warm cache)": "—",
                    })  # fmt: skip
                    print("  " + " | ".join(str(v) for v in rows[-1].values()), flush=True)
            if case == "affine":
                try:
                    import SimpleITK  # noqa: F401
                except ImportError:
                    print("  SimpleITK not installed: no SimpleITK row", flush=True)
                else:
                    r = run_child({"kind": "sitk", "fair_data": args.fair_data}, env)
                    add(case, "SimpleITK affine (RSGD, pyramid)", "ITK", r=r)

    sitk = next((r for r in rows if r["backend"] == "ITK"), None)
    columns = [
        "case", "how", "backend", "first ever", "first-ever process", "new process, warm cache",
        "process", "warm", "compiles / hits / traces (cold; warm cache)",
        "α sweep (5 values) / 5 warm",
    ]  # fmt: skip
    elapsed = time.perf_counter() - started
    lines = [
        "# Time to first result",
        "",
        f"{data}; threads {args.threads}; {elapsed:.0f} s in all. Each row: a first-ever process "
        "(empty compilation cache), then a second new process on the same cache, and a warm call "
        "inside it. `process` is the second process's whole life (interpreter, imports, images, "
        "registration); `compiles / hits / traces` counts XLA compilations that the persistent "
        "cache did not answer, cache hits, and jaxprs traced.",
        "",
        table(rows, columns),
    ]
    if sitk is not None:
        lines += ["", f"SimpleITK's whole process: {sitk['process']}; warm {sitk['warm']}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(f"wrote {write_report(REPORT, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
