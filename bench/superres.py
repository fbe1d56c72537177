"""Super-resolution benchmark: methods × Jacobian variants × backends on synthetic problems.

For each problem (``small``: 32² fine, 8 frames of 16²; ``default``: LAP's 128², 32 frames of
32²; ``large``: 256², 64 frames of 64²) it prints, per backend and solver, the relative errors
of f and w before (at the pre-registration) and after, outer and inner iterations, wall time
and the process's peak resident memory, next to the oracle (the reconstruction at the true
motions). ``--figure`` writes the reconstructions to bench/out/superres.png.

    python bench/superres.py --sizes small --backends jax,torch
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from _harness import OUT, fmt_time

from multireg import superres
from multireg._backend import _instance

SIZES = {
    "small": dict(m_fine=(32, 32), m_coarse=(16, 16), n_frames=8),
    "default": dict(m_fine=(128, 128), m_coarse=(32, 32), n_frames=32),
    "large": dict(m_fine=(256, 256), m_coarse=(64, 64), n_frames=64),
}
SOLVERS = [
    ("varpro", "implicit"),
    ("varpro", "unrolled"),
    ("varpro", "kaufman"),
    ("varpro", "partial"),
    ("bcd", "-"),
]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(size: str, backends: list[str], solvers, max_iter: int, figure: bool) -> list[dict]:
    p = superres.make_problem(**SIZES[size])
    rows, images = [], {}
    for name in backends:
        bk = _instance(name)
        w0 = superres.pre_register(p.frames, p.omega, motion=p.motion, backend=bk)
        common = dict(alpha=p.alpha, backend=bk, inner_rtol=1e-6)
        oracle = superres.solve(p.frames, p.omega, p.m_fine, w0=p.w_true, max_iter=0, **common)
        f_oracle = bk.to_numpy(oracle.f)
        rows.append(
            dict(
                size=size,
                backend=name,
                solver="oracle",
                e_f0="",
                e_w0="",
                e_f=rel(f_oracle, p.f_true),
                e_w=0.0,
                outer=0,
                inner=oracle.inner_iterations,
                time=float("nan"),
                rss=peak_rss_mb(),
            )
        )
        print(format_row(rows[-1]), flush=True)
        for method, jacobian in solvers:
            kw = dict(method=method, max_iter=max_iter, w0=w0, **common)
            if method == "varpro":
                kw["jacobian"] = jacobian
            t = time.perf_counter()
            res = superres.solve(p.frames, p.omega, p.m_fine, **kw)
            bk.sync(res.f)
            elapsed = time.perf_counter() - t
            f, w = bk.to_numpy(res.f), bk.to_numpy(res.w)
            images[(name, method, jacobian)] = f
            rows.append(
                dict(
                    size=size,
                    backend=name,
                    solver=f"{method}/{jacobian}",
                    e_f0=rel(bk.to_numpy(res.f0), p.f_true),
                    e_w0=rel(w0, p.w_true),
                    e_f=rel(f, p.f_true),
                    e_w=rel(w, p.w_true),
                    outer=res.iterations,
                    inner=res.inner_iterations,
                    time=elapsed,
                    rss=peak_rss_mb(),
                )
            )
            print(format_row(rows[-1]), flush=True)
        images[(name, "oracle", "-")] = f_oracle
    if figure:
        write_figure(p, images, size)
    return rows


def format_row(r: dict) -> str:
    def num(x):
        return f"{x:.3e}" if isinstance(x, float) else str(x)

    return (
        f"| {r['size']} | {r['backend']} | {r['solver']} | {num(r['e_f0'])} | {num(r['e_w0'])} "
        f"| {num(r['e_f'])} | {num(r['e_w'])} | {r['outer']} | {r['inner']} "
        f"| {fmt_time(r['time'])} | {r['rss']:.0f} |"
    )


HEADER = (
    "| size | backend | solver | ‖f0−f‖/‖f‖ | ‖w0−w‖/‖w‖ | ‖f−f*‖/‖f*‖ | ‖w−w*‖/‖w*‖ | outer "
    "| inner CG | time | peak RSS MB |\n|" + "---|" * 11
)


def write_figure(p, images, size):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(images)
    fig, axes = plt.subplots(1, len(keys) + 2, figsize=(2.2 * (len(keys) + 2), 2.4))
    axes[0].imshow(p.f_true.T, cmap="gray", origin="lower")
    axes[0].set_title("truth", fontsize=7)
    axes[1].imshow(p.frames[0].T, cmap="gray", origin="lower")
    axes[1].set_title("frame 0", fontsize=7)
    for ax, key in zip(axes[2:], keys, strict=True):
        ax.imshow(images[key].T, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.set_title("/".join(key), fontsize=7)
    for ax in axes:
        ax.axis("off")
    OUT.mkdir(exist_ok=True)
    fig.savefig(OUT / f"superres_{size}.png", dpi=120, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,default")
    ap.add_argument("--backends", default="jax,torch")
    ap.add_argument("--solvers", default=",".join(f"{m}/{j}" for m, j in SOLVERS))
    ap.add_argument("--max-iter", type=int, default=10)
    ap.add_argument("--figure", action="store_true")
    args = ap.parse_args()
    solvers = [tuple(s.split("/")) for s in args.solvers.split(",")]
    print(HEADER, flush=True)
    for size in args.sizes.split(","):
        run(size, args.backends.split(","), solvers, args.max_iter, args.figure)


if __name__ == "__main__":
    main()
