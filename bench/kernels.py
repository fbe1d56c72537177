"""Kernel benchmark: interpolation + SSD, its gradient and a Hessian-vector product, per backend.

For each size (256², 128³) and dtype (float64, float32) it times, in one process:

* the reference, ``scipy.ndimage.map_coordinates`` forward only (order 1, and order 3 on
  prefiltered coefficients, which is the same cubic B-spline evaluation as multireg's model);
* (a) the SSD value D(w) = ½·hd·‖T(y(w, x)) − R‖² of an affine map through the cubic spline
  model, (b) D and ∇_w D, (c) a Hessian-vector product ∇²_w D · v,

on NumPy (value only), torch eager, torch with ``torch.compile`` (opt-in adapter option), JAX
eager and JAX jit. Times are medians of warm runs; "cold" is the first call (compilation). Ratios
are to SciPy's order-1 forward interpolation at the same size and dtype. "bound" is the time to
move the unavoidable bytes (points in, reference in, values out, coefficients once) at the
machine's measured copy bandwidth; time/bound says how far a kernel is from memory-bound.

    python bench/kernels.py [--quick] [--no-compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fmt_time, measure, stream_bandwidth, table, write_report

import multireg
from multireg.data import blobs


def problem(m):
    data, domain = blobs(m, seed=1)
    d = len(m)
    w = np.eye(d, d + 1).ravel()
    w[d] = 0.01  # a small shift so the map is not exactly the identity
    return data, domain, w


def kernels(bk, domain, dtype):
    xp = bk.xp
    trafo = multireg.transform("affine", dim=domain.dim)
    dist = multireg.SSD()

    def D(w, coef, R, x):
        Tc = xp.reshape(multireg.spline_interpolate(coef, domain, trafo(w, x)), domain.m)
        return dist(Tc, R, domain)

    def value(w, coef, R, x):
        return D(w, coef, R, x)

    def value_and_grad(w, coef, R, x):
        return bk.value_and_grad(lambda u: D(u, coef, R, x))(w)

    def hvp(w, v, coef, R, x):
        return bk.hvp(lambda u: D(u, coef, R, x), w, v)

    return value, value_and_grad, hvp


def run(sizes, with_compile):
    bandwidth = stream_bandwidth()
    rows = []
    backends = [b for b in ("numpy", "torch", "jax") if b in multireg.available_backends()]
    for m in sizes:
        data, domain, w_np = problem(m)
        n, d = domain.n, domain.dim
        for dtype in ("float64", "float32"):
            nbytes = np.dtype(dtype).itemsize
            coef_np = np.asarray(multireg.spline_coefficients(data.astype(dtype)))
            x_np = domain.cell_centers(dtype=np.dtype(dtype))
            xi = ((x_np - np.array(domain.lower)) / np.array(domain.h) - 0.5).T.astype(dtype)
            size = "×".join(map(str, m))
            ref = {}
            for order in (1, 3):
                src = coef_np if order == 3 else data.astype(dtype)
                cold, warm = measure(
                    lambda src=src, order=order, xi=xi: map_coordinates(
                        src, xi, order=order, mode="grid-constant", prefilter=False
                    )
                )
                ref[order] = warm
                bound = (d + 2) * n * nbytes / bandwidth
                rows.append(
                    dict(size=size, dtype=dtype, backend=f"scipy order={order}", op="forward",
                         cold=fmt_time(cold), median=fmt_time(warm), ratio="1.00" if order == 1
                         else f"{warm / ref[1]:.2f}", bound=f"{warm / bound:.0f}×")
                )  # fmt: skip
            for name in backends:
                bk = multireg.get_backend(name)
                modes = [("eager", bk)]
                if name == "jax":
                    modes.append(("jit", bk))
                if name == "torch" and with_compile:
                    from multireg_torch import TorchBackend

                    modes.append(("compile", TorchBackend(compile=True)))
                args = [bk.asarray(a, dtype=dtype) for a in (w_np, coef_np, data, x_np)]
                v = bk.asarray(np.linspace(-1, 1, w_np.size), dtype=dtype)
                for mode, b in modes:
                    value, vg, hvp = kernels(b, domain, dtype)
                    ops = [("(a) value", value, args)]
                    if b.differentiable:
                        ops += [
                            ("(b) value+grad", vg, args),
                            ("(c) hvp", hvp, [args[0], v, *args[1:]]),
                        ]
                    for op, fn, fargs in ops:
                        f = b.jit(fn) if mode in ("jit", "compile") else fn
                        try:
                            cold, warm = measure(lambda f=f, fargs=fargs: f(*fargs), sync=b.sync)
                        except Exception as exc:  # a compiler failure is a result to report
                            failed = f"failed: {type(exc).__name__}"
                            label = f"{name} {mode}"
                            rows.append(
                                dict(size=size, dtype=dtype, backend=label, op=op, cold=failed)
                            )
                            continue
                        bound = (d + 2) * n * nbytes / bandwidth
                        rows.append(
                            dict(size=size, dtype=dtype, backend=f"{name} {mode}", op=op,
                                 cold=fmt_time(cold), median=fmt_time(warm),
                                 ratio=f"{warm / ref[1]:.2f}", bound=f"{warm / bound:.0f}×")
                        )  # fmt: skip
    return rows, bandwidth


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="256² only")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args(argv)
    sizes = [(256, 256)] if args.quick else [(256, 256), (128, 128, 128)]
    t0 = time.perf_counter()
    rows, bandwidth = run(sizes, with_compile=not args.no_compile)
    columns = ["size", "dtype", "backend", "op", "cold", "median", "ratio", "bound"]
    text = (
        "# Kernel benchmark\n\n"
        f"Copy bandwidth {bandwidth / 1e9:.1f} GB/s. ratio = median / SciPy order-1 forward "
        "interpolation (same size and dtype); bound = median / time to move (d+2)·n values at "
        "that bandwidth.\n\n" + table(rows, columns) + "\n"
    )
    print(text)
    path = write_report("kernels", text)
    print(f"written to {path} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
