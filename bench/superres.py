"""Super-resolution benchmark: every separable method, per backend, against the oracle.

    python bench/superres.py                      # the default problem, JAX and torch
    python bench/superres.py --large              # and the large one (or --sizes large:
                                                  #   only it, report superres_large.md)
    python bench/superres.py --backend jax        # one backend (report superres_jax.md)
    python bench/superres.py --backend jax --methods lap --no-memory --append "why"
                                                  # re-run rows, appended to superres.md
    python bench/superres.py --quick              # a small problem (development)
    python bench/superres.py --memory-only        # only the memory-vs-inner-iterations table
    python bench/superres.py --perturb 0.25       # start from the truth plus 0.25 × the motion
                                                  #   spread (report superres_perturbed0.25.md)

Problems (``multireg.superres.make_problem``): ``default`` is LAP's setup (128² fine, 32 frames
of 32², frame 0 fixed, rigid motions with rotation σ = 0.2 rad and translation σ = 2 coarse
pixels, 2 % relative noise, α = 1e-2, scikit-image's camera); ``large`` is 256², 64 frames of
64²; ``small`` is 32², 8 frames of 16². The start is the same for every row: w0 from
:func:`multireg.superres.pre_register` (run once per backend and timed; the first backend's
w0 is used everywhere, so that rows compare methods, not pre-registrations) and f0 the inner
solution at w0 (CG to 1e-8). The oracle is the inner solution at the true motions.

Each (problem, backend, method) runs in a fresh subprocess: imports, the problem, f0 (which
compiles the inner-solve kernels), then the method once ("cold": its own kernels compile) and,
when that took less than ``--warm-limit`` seconds, again ("warm"). Memory is the peak resident
set during the cold run (Linux's VmHWM, reset just before it through /proc/self/clear_refs)
minus the resident set at its start, so it holds the method's working set plus its kernels'
compilation, not the imports, the data or f0.

The memory table isolates one reduced-Jacobian (or reduced-gradient) evaluation at w0 on a
``medium`` problem (64², 16 frames of 16²) with a fixed number k of inner CG iterations: the
implicit Jacobian (batched CG for df/dw, ``rtol = 0``, k steps), the unrolled Jacobian
(forward-mode AD through k CG steps, as the engine does it), and reverse-mode AD of the reduced
objective through k unrolled CG steps (what unrolling costs when it is taped). Each runs in its
own subprocess after a k = 1 run of the same kernels (so compilation is in the baseline).

VarPro's implicit and Kaufman Jacobians run matrix-free by default (one inner solve per product
J̃v or J̃ᵀu, the outer PCG to 0.1); ``varpro/implicit-dense`` forms J̃ from P = 3(N−1) batched
solves (warm-started across outer iterations) and ``varpro/unrolled`` from forward-mode AD of
``--unrolled-iterations`` CG steps with P tangents. These two are capped (``--uncapped`` lifts
it): not run on the large problem (one Jacobian would take 20–25 min on JAX, hours on torch;
the default problem's rows give their per-iteration cost), and on the default problem on torch
1 (unrolled) and 2 (dense) outer iterations.

Targets (issue 5): the best method's f error within 10 % of the oracle's, its motion error under
1e-2, and the default problem solved in under 60 s warm on CPU. The report is written to
bench/out/superres.md; the figure (truth, one frame, the initial and the best final
reconstruction) to bench/out/superres.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import OUT, fmt_time, table, write_report

REPORT = "superres"
SIZES = {
    "small": dict(m_fine=(32, 32), m_coarse=(16, 16), n_frames=8),
    "medium": dict(m_fine=(64, 64), m_coarse=(16, 16), n_frames=16),
    "default": dict(),
    "large": dict(m_fine=(256, 256), m_coarse=(64, 64), n_frames=64),
}
METHODS = {
    "varpro/implicit": dict(method="varpro", jacobian="implicit"),
    "varpro/implicit-dense": dict(method="varpro", jacobian="implicit", matrix_free=False),
    "varpro/unrolled": dict(method="varpro", jacobian="unrolled"),
    "varpro/kaufman": dict(method="varpro", jacobian="kaufman"),
    "varpro/partial": dict(method="varpro", jacobian="partial"),
    "lap": dict(method="lap"),
    "lap+bounds": dict(method="lap", bounds=(0.0, 1.0)),
    "bcd": dict(method="bcd"),
    "full": dict(method="full"),
}
COLUMNS = [
    "size",
    "backend",
    "method",
    "e_f0",
    "e_w0",
    "e_f",
    "e_w",
    "outer",
    "inner",
    "jac CG",
    "status",
    "cold",
    "warm",
    "ΔRSS MB",
]


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak() -> float:
    """Reset the peak resident set (Linux: write 5 to /proc/self/clear_refs) and return the
    current resident set in MB: the baseline of the next :func:`peak_above`."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmRSS")
    except OSError:  # no /proc: the process-lifetime peak (an upper bound of the baseline)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_above(base: float) -> float:
    """Peak resident set since :func:`reset_peak`, minus its baseline, in MB."""
    try:
        peak = _status_mb("VmHWM")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak - base


# ------------------------------------------------------------------------------ workers


def worker_solve(spec: dict) -> dict:
    """One method on one backend, cold then warm; prints nothing but its JSON."""
    from multireg._backend import _instance
    from multireg.problems import separable, superres

    p = superres.make_problem(**SIZES[spec["size"]])
    bk = _instance(spec["backend"])
    w0 = np.load(spec["w0"])
    problem = superres.build(p.frames, p.omega, p.m_fine, alpha=p.alpha, backend=bk)
    t = time.perf_counter()
    if spec["method"] == "oracle":
        s = separable.solve_linear(problem, bk.asarray(p.w_true), rtol=1e-8, max_iter=2000)
        bk.sync(s.f)
        elapsed = time.perf_counter() - t
        f = bk.to_numpy(s.f).reshape(p.m_fine)
        np.save(spec["f_out"], f)
        return dict(e_f=rel(f, p.f_true), e_w=0.0, inner=s.iterations, cold=elapsed)
    s = separable.solve_linear(problem, bk.asarray(w0), rtol=1e-8, max_iter=2000)
    f0 = bk.to_numpy(s.f)
    t_f0 = time.perf_counter() - t
    options = dict(METHODS[spec["method"]], **spec["options"])

    def run():
        t = time.perf_counter()
        res = superres.solve(
            p.frames, p.omega, p.m_fine, alpha=p.alpha, w0=w0, f0=f0, backend=bk, **options
        )
        bk.sync(res.f)
        return res, time.perf_counter() - t

    base = reset_peak()
    res, cold = run()
    peak = peak_above(base)
    warm = float("nan")
    if cold < spec["warm_limit"]:
        res, warm = run()
    f, w = bk.to_numpy(res.f), bk.to_numpy(res.w)
    np.save(spec["f_out"], f)
    np.save(spec["f_out"].replace(".npy", "_f0.npy"), bk.to_numpy(res.f0))
    return dict(
        e_f0=rel(bk.to_numpy(res.f0), p.f_true),
        e_w0=rel(w0, p.w_true),
        e_f=rel(f, p.f_true),
        e_w=rel(w, p.w_true),
        outer=res.iterations,
        inner=res.inner_iterations,
        jac=res.separable.jacobian_iterations,
        status=res.status.value,
        cold=cold,
        warm=warm,
        rss=peak,
        t_f0=t_f0,
    )


def worker_memory(spec: dict) -> dict:
    """Peak memory of one reduced Jacobian / gradient with k inner CG steps (after k = 1)."""
    from multireg._backend import _instance
    from multireg.problems import separable, superres

    p = superres.make_problem(**SIZES[spec["size"]])
    bk = _instance(spec["backend"])
    xp = bk.xp
    problem = superres.build(p.frames, p.omega, p.m_fine, alpha=p.alpha, backend=bk)
    k, data = problem.kernels, problem.data
    w = bk.asarray(np.load(spec["w0"]))
    f = separable.solve_linear(problem, w, rtol=1e-10, max_iter=2000).f
    kind = spec["kind"]

    def reverse_unrolled(steps):
        """∇_w Φ(w, f_k(w)) by reverse-mode AD through k CG steps from f = 0."""

        def reduced(wv):
            u = xp.zeros_like(f)
            r = -k["grad_f"](wv, u, *data)
            d, rr = r, xp.sum(r * r)
            for _ in range(steps):
                q = k["normal"](wv, d, *data)
                a = rr / xp.sum(d * q)
                u, r = u + a * d, r - a * q
                rr_new = xp.sum(r * r)
                d, rr = r + (rr_new / rr) * d, rr_new
            return k["value"](wv, u, *data)[0]

        value, pullback = bk.vjp(reduced, w)
        return pullback(xp.ones_like(value))

    def run(steps):
        if kind == "implicit":
            J, _ = separable.reduced_jacobian(problem, w, f, "implicit", rtol=0.0, max_iter=steps)
        elif kind == "unrolled":
            J, _ = separable.reduced_jacobian(problem, w, f, "unrolled", unrolled_iterations=steps)
        else:
            J = reverse_unrolled(steps)
        bk.sync(J)

    run(1)
    base = reset_peak()
    t = time.perf_counter()
    run(spec["steps"])
    elapsed = time.perf_counter() - t
    return dict(rss=peak_above(base), time=elapsed)


def spawn(spec: dict, timeout: float) -> dict:
    """Run a worker in a fresh interpreter; its last stdout line is the JSON answer."""
    env = dict(os.environ)
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(error=f"killed after {timeout:.0f} s")
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return dict(error=f"exit {out.returncode}: " + " | ".join(tail))
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- driver


def pre_registrations(size: str, backends: list[str], workdir: Path) -> tuple[Path, dict]:
    """w0 per backend (timed); the first backend's is saved for every row."""
    from multireg._backend import _instance
    from multireg.problems import superres

    p = superres.make_problem(**SIZES[size])
    times, errors, path = {}, {}, workdir / f"w0_{size}.npy"
    for i, name in enumerate(backends):
        bk = _instance(name)
        t = time.perf_counter()
        w0 = superres.pre_register(p.frames, p.omega, motion=p.motion, backend=bk)
        times[name] = time.perf_counter() - t
        errors[name] = rel(w0, p.w_true)
        if i == 0:
            np.save(path, w0)
    return path, dict(time=times, e_w0=errors)


def perturbed_start(size: str, scale: float, workdir: Path) -> tuple[Path, dict]:
    """w0 = the true motions plus Gaussian noise of ``scale`` times the problem's motion spread
    (rotation 0.2 rad and translation 2 coarse pixels at scale 1), frame 0 kept at the
    identity, seed 0: a start the pre-registration does not give, to separate the methods."""
    from multireg.problems import superres

    p = superres.make_problem(**SIZES[size])
    if p.motion != "rigid":
        raise SystemExit("--perturb needs rigid motions")
    rng = np.random.default_rng(0)
    sigma = scale * np.array([0.2, 2.0, 2.0])
    w0 = p.w_true + sigma * rng.normal(size=p.w_true.shape)
    w0[0] = p.w_true[0]
    path = workdir / f"w0_{size}_perturbed.npy"
    np.save(path, w0)
    return path, dict(time={"perturbed truth": 0.0}, e_w0={"perturbed truth": rel(w0, p.w_true)})


def fmt(x, digits=3):
    if isinstance(x, float):
        return "—" if x != x else f"{x:.{digits}e}"
    return str(x)


def caps(size: str, backend: str, method: str, args) -> dict | None:
    """Per-row options: the unrolled step count, and the outer-iteration caps (or skips) that
    keep the formed-Jacobian VarPro rows within hours (see the module docstring)."""
    options = {}
    if method == "varpro/unrolled":
        options["unrolled_iterations"] = args.unrolled_iterations
    if args.uncapped or method not in ("varpro/unrolled", "varpro/implicit-dense"):
        return options
    if size == "large":
        # P = 189 tangents / right-hand sides at 256² (16× the work of a 128² product, twice
        # the columns): one unrolled Jacobian (20 steps) is ~25 min on JAX and hours on torch,
        # one dense implicit Jacobian ~20 min on JAX
        return None
    if size == "default" and backend == "torch":
        # torch.func's forward-mode CG step over 93 tangents takes 27 s here (JAX: 4.6 s)
        return dict(options, max_iter=1 if method == "varpro/unrolled" else 2)
    return options


def run_methods(size, backends, methods, args, workdir, w0_path) -> list[dict]:
    rows = []
    for name in backends:
        for method in ["oracle", *methods]:
            options = {} if method == "oracle" else caps(size, name, method, args)
            if options is None:
                rows.append(
                    dict(
                        size=size,
                        backend=name,
                        method=method,
                        key=method,
                        status="not run (cost, see text)",
                    )
                )
                continue
            spec = dict(
                size=size,
                backend=name,
                method=method,
                w0=str(w0_path),
                options=options,
                warm_limit=args.warm_limit,
                f_out=str(workdir / f"f_{size}_{name}_{method.replace('/', '-')}.npy"),
            )
            t = time.perf_counter()
            out = spawn(spec, args.timeout)
            label = method + "".join(f" {k}={v}" for k, v in spec["options"].items())
            row = dict(size=size, backend=name, method=label, key=method, f_out=spec["f_out"])
            if "error" in out:
                row.update(status=out["error"])
            else:
                row.update(out)
            rows.append(row)
            print(
                f"  {size} {name:5s} {label:40s} e_f={fmt(row.get('e_f', float('nan')))} "
                f"e_w={fmt(row.get('e_w', float('nan')))} outer={row.get('outer', '')} "
                f"status={row.get('status', 'ok')} cold={fmt_time(row.get('cold', float('nan')))} "
                f"warm={fmt_time(row.get('warm', float('nan')))} "
                f"ΔRSS={row.get('rss', float('nan')):.0f} MB "
                f"(wall {time.perf_counter() - t:.0f} s)",
                flush=True,
            )
    return rows


def run_memory(backends, steps, args, workdir, w0_path) -> list[dict]:
    rows = []
    for name in backends:
        for kind in ("implicit", "unrolled", "reverse"):
            for k in steps:
                spec = dict(size="medium", backend=name, kind=kind, steps=k, w0=str(w0_path))
                out = spawn(spec, args.timeout)
                row = dict(backend=name, kind=kind, steps=k, **out)
                rows.append(row)
                print(
                    f"  memory {name:5s} {kind:9s} k={k:4d} "
                    f"ΔRSS={row.get('rss', float('nan')):.0f} MB "
                    f"time={fmt_time(row.get('time', float('nan')))} {row.get('error', '')}",
                    flush=True,
                )
    return rows


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets on the default problem, per backend."""
    lines = []
    for name in sorted({r["backend"] for r in rows if r["size"] == "default"}):
        mine = [r for r in rows if r["size"] == "default" and r["backend"] == name]
        oracle = next((r for r in mine if r["key"] == "oracle" and "e_f" in r), None)
        done = [r for r in mine if r["key"] != "oracle" and "e_f" in r]
        if oracle is None or not done:
            continue
        best = min(done, key=lambda r: r["e_f"])
        same = [r for r in done if "bounds" not in r["key"]]  # the oracle's problem: no bounds
        if same and best not in same:
            b = min(same, key=lambda r: r["e_f"])
            lines.append(
                f"- {name}: best f error without bounds (the oracle's problem) {b['method']} "
                f"{b['e_f']:.4e} = {b['e_f'] / oracle['e_f']:.3f}× the oracle's; its motion "
                f"error {b['e_w']:.2e}. Bounds on f add information the oracle does not use."
            )
        fastest = min(
            (r for r in done if r["e_f"] <= 1.1 * oracle["e_f"] and r["e_w"] < 1e-2),
            key=lambda r: r["warm"] if r["warm"] == r["warm"] else r["cold"],
            default=None,
        )
        lines.append(
            f"- {name}: best f error {best['method']} {best['e_f']:.4e} = "
            f"{best['e_f'] / oracle['e_f']:.3f}× the oracle's {oracle['e_f']:.4e} "
            f"({'met' if best['e_f'] <= 1.1 * oracle['e_f'] else 'missed'}: ≤ 1.1×); its motion "
            f"error {best['e_w']:.2e} ({'met' if best['e_w'] < 1e-2 else 'missed'}: < 1e-2)."
        )
        if fastest is not None:
            t = fastest["warm"] if fastest["warm"] == fastest["warm"] else fastest["cold"]
            total = t + fastest.get("t_f0", 0.0)
            lines.append(
                f"- {name}: fastest method meeting both accuracy targets: {fastest['method']}, "
                f"{t:.1f} s warm (+ {fastest.get('t_f0', 0.0):.1f} s for f0 = {total:.1f} s; "
                f"{'met' if total < 60 else 'missed'}: < 60 s; pre-registration extra, below)."
            )
    return lines


def write_figure(rows: list[dict], size: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from multireg.problems import superres

    done = [r for r in rows if r["size"] == size and "e_f" in r and r["key"] != "oracle"]
    if not done:
        return None
    best = min(done, key=lambda r: r["e_f"])
    p = superres.make_problem(**SIZES[size])
    f0 = np.load(best["f_out"].replace(".npy", "_f0.npy"))
    f = np.load(best["f_out"])
    panels = [
        ("truth", p.f_true),
        (f"frame 1 (of {p.frames.shape[0]})", p.frames[1]),
        (f"initial f0 (w0), e_f={best['e_f0']:.3f}", f0),
        (f"{best['method']} ({best['backend']}), e_f={best['e_f']:.3f}", f),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(11, 3.1))
    for ax, (title, image) in zip(axes, panels, strict=True):
        ax.imshow(image.T, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    OUT.mkdir(exist_ok=True)
    path = OUT / ("superres.png" if size == "default" else f"superres_{size}.png")
    fig.savefig(path, dpi=130, bbox_inches="tight")
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="both", help="jax, torch or both (default)")
    ap.add_argument("--quick", action="store_true", help="the small problem only")
    ap.add_argument("--sizes", default="default", help="default, large, small, comma-separated")
    ap.add_argument("--large", action="store_true", help="also the 256², 64-frame problem")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    ap.add_argument("--unrolled-iterations", type=int, default=20)
    ap.add_argument(
        "--uncapped", action="store_true", help="no outer caps on the formed-Jacobian VarPro"
    )
    ap.add_argument("--timeout", type=float, default=3000.0, help="seconds per subprocess")
    ap.add_argument("--warm-limit", type=float, default=120.0, help="rerun warm below this")
    ap.add_argument("--memory-steps", default="20,100")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument(
        "--perturb",
        type=float,
        default=None,
        metavar="S",
        help="start from the truth plus S times the motion spread instead of the pre-registration",
    )
    ap.add_argument(
        "--append",
        metavar="REASON",
        default=None,
        help="append these rows to the existing report as a dated re-run section, with REASON",
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        out = worker_memory(spec) if "kind" in spec else worker_solve(spec)
        print(json.dumps(out))
        return
    backends = ["jax", "torch"] if args.backend == "both" else args.backend.split(",")
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    sizes = ["small"] if args.quick else args.sizes.split(",")
    if args.large and "large" not in sizes:
        sizes.append("large")
    for size in sizes:
        if size not in SIZES:
            raise SystemExit(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    name = REPORT if sizes[0] == "default" else f"{REPORT}_{'_'.join(sizes)}"
    if args.perturb is not None:
        name += f"_perturbed{args.perturb:g}"
    if args.backend != "both" and not args.append:
        name += "_" + "_".join(backends)  # does not overwrite the both-backend report
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="superres_bench_"))
    rows, pre, memory = [], {}, []
    for size in [] if args.memory_only else sizes:
        print(f"{size}: pre-registration", flush=True)
        if args.perturb is None:
            w0_path, pre[size] = pre_registrations(size, backends, workdir)
        else:
            w0_path, pre[size] = perturbed_start(size, args.perturb, workdir)
        rows += run_methods(size, backends, methods, args, workdir, w0_path)
    if not args.no_memory:
        print("memory: medium problem (64², 16 frames of 16²)", flush=True)
        w0_path, _ = pre_registrations("medium", backends[:1], workdir)
        steps = [int(s) for s in args.memory_steps.split(",")]
        memory = run_memory(backends, steps, args, workdir, w0_path)
    text = report(rows, pre, memory, args, time.perf_counter() - start)
    if args.append:
        print(text)
        print(f"appended to {append_report(name, text, args.append)}")
        return
    figure = None if not rows else write_figure(rows, sizes[0])
    if figure is not None:
        text += f"\nFigure: {figure.relative_to(OUT.parent.parent)}\n"
    print(text)
    print(f"written to {write_report(name, text)}")


def append_report(name: str, text: str, reason: str) -> Path:
    """Append a re-run's tables to bench/out/<name>.md as a dated section whose rows replace
    the rows above with the same size, backend and method (a long report is amended, not
    rerun whole, when one method changes)."""
    path = OUT / f"{name}.md"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown commit"
    body = text.split("\n", 2)[2]  # without the title line
    section = (
        f"\n## Re-run at {commit}, {time.strftime('%Y-%m-%d')}: {reason}\n\n"
        "The rows below replace the rows above with the same size, backend and method.\n" + body
    )
    old = path.read_text() if path.exists() else ""
    return write_report(name, old + section)


def report(rows, pre, memory, args, seconds) -> str:
    import platform

    lines = [
        "# Super-resolution benchmark",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"{seconds / 60:.0f} min in all.",
        "",
        "e_f = ‖f − f*‖/‖f*‖, e_w = ‖w − w*‖/‖w*‖ (frame 0 included), before (w0, f0) and "
        "after; outer = outer iterations; inner = CG/LSQR steps in f (all methods; for full the "
        "joint-system PCG steps); jac CG = batched CG steps of the implicit/Kaufman Jacobian "
        "solves (each step is P = 3(N−1) products) or the unrolled steps; cold/warm = the "
        "method's wall time from (w0, f0), first run (compiles) and second run (— when the "
        "first took more than the warm limit); ΔRSS = peak resident memory of the cold run "
        "above the resident memory at its start.",
        "",
    ]
    for size, info in pre.items():
        if "perturbed truth" in info["e_w0"]:
            lines.append(
                f"Start ({size}): the true motions plus {args.perturb:g} × the motion spread "
                f"(no pre-registration), e_w0 {info['e_w0']['perturbed truth']:.2e}."
            )
            continue
        parts = ", ".join(
            f"{b}: {info['time'][b]:.1f} s, e_w0 {info['e_w0'][b]:.2e}" for b in info["time"]
        )
        lines.append(f"Pre-registration ({size}): {parts}.")
    if rows:
        table_rows = []
        for r in rows:
            table_rows.append(
                {
                    "size": r["size"],
                    "backend": r["backend"],
                    "method": r["method"],
                    "e_f0": fmt(r.get("e_f0", "")),
                    "e_w0": fmt(r.get("e_w0", ""), 2),
                    "e_f": fmt(r.get("e_f", "")),
                    "e_w": fmt(r.get("e_w", ""), 2),
                    "outer": r.get("outer", ""),
                    "inner": r.get("inner", ""),
                    "jac CG": r.get("jac", ""),
                    "status": r.get("status", "-"),
                    "cold": fmt_time(r.get("cold", float("nan"))),
                    "warm": fmt_time(r.get("warm", float("nan"))),
                    "ΔRSS MB": f"{r['rss']:.0f}" if "rss" in r else "",
                }
            )
        lines += ["", table(table_rows, COLUMNS), "", "Targets (default problem):", ""]
        lines += targets(rows) or ["- default problem not run"]
    if memory:
        lines += [
            "",
            "Memory of one reduced Jacobian / gradient against the inner iteration count k "
            "(medium problem, 64², 16 frames of 16², P = 45): peak resident memory above the "
            "resident memory at the start, after a k = 1 run of the same kernels.",
            "",
        ]
        mem_rows = [
            {
                "backend": r["backend"],
                "derivative": {
                    "implicit": "implicit (batched CG, k steps)",
                    "unrolled": "unrolled, forward mode (engine)",
                    "reverse": "unrolled, reverse mode (taped)",
                }[r["kind"]],
                "k": r["steps"],
                "ΔRSS MB": f"{r['rss']:.0f}" if "rss" in r else r.get("error", ""),
                "time": fmt_time(r.get("time", float("nan"))),
            }
            for r in memory
        ]
        lines.append(table(mem_rows, ["backend", "derivative", "k", "ΔRSS MB", "time"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
