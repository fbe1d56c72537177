"""The demo: multireg's capabilities on built-in synthetic data, on every installed backend.

``multireg demo`` (or ``python -m multireg demo``) makes a smooth synthetic image, warps it with
a known affine map and a known smooth deformation, and registers it back, parametric and
nonparametric, on each installed differentiable backend, printing the recovered parameters, the
error against the truth, the agreement between backends and the time of each run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

import multireg
from multireg.data import blobs

W_TRUE = np.array([1.04, 0.06, -0.05, -0.04, 0.97, 0.03])


def affine_pair(m: tuple[int, int] = (96, 80)):
    """A template, its affine warp as the reference, and the truth: T(y(w_true, x)) == R(x)."""
    T, domain = blobs(m, (0.0, 1.2, 0.0, 1.0), seed=3)
    trafo = multireg.transform("affine", dim=2)
    x = domain.cell_centers()
    R = np.asarray(
        multireg.spline_interpolate(multireg.spline_coefficients(T), domain, trafo(W_TRUE, x))
    )
    return T, R.reshape(m), domain


def deformed_pair(m: tuple[int, int] = (96, 80)):
    """A template and a smoothly (nonlinearly) deformed copy of it as the reference."""
    T, domain = blobs(m, (0.0, 1.2, 0.0, 1.0), seed=5)
    x = domain.cell_centers()
    u = 0.03 * np.stack([np.sin(2 * np.pi * x[:, 1]), np.sin(2 * np.pi * x[:, 0] / 1.2)], axis=1)
    R = np.asarray(multireg.spline_interpolate(multireg.spline_coefficients(T), domain, x + u))
    return T, R.reshape(m), domain


def run(backends: Sequence[str] | None = None, *, out=print) -> dict:
    """Run the demo; returns the numbers it printed (for tests)."""
    names = [b for b in (backends or multireg.available_backends())]
    names = [b for b in names if multireg.get_backend(b).differentiable]
    if not names:
        raise RuntimeError('the demo needs torch or JAX: pip install "multireg[torch,jax]"')
    summary: dict = {"affine": {}, "elastic": {}}
    T, R, domain = affine_pair()
    out(f"multireg {multireg.__version__}: backends {', '.join(names)}")
    out(f"\n1. Affine registration, multilevel Gauss–Newton, m = {domain.m}")
    out(f"   truth w = {np.round(W_TRUE, 4).tolist()}")
    for name in names:
        bk = multireg.get_backend(name)
        t0 = time.perf_counter()
        res = multireg.register(T, R, domain.omega, transform="affine", levels=3, backend=name,
                                tol_j=1e-10, tol_y=1e-8, tol_g=1e-8, max_iter=30)  # fmt: skip
        elapsed = time.perf_counter() - t0
        w = bk.to_numpy(res.w)
        err = float(np.max(np.abs(w - W_TRUE)))
        summary["affine"][name] = {"w": w, "error": err, "iterations": res.iterations}
        out(
            f"   {name:6s} w = {np.round(w, 4).tolist()}  max error {err:.1e}  "
            f"iterations per level {res.iterations}  {elapsed:.2f} s (incl. compilation)"
        )
    if len(names) > 1:
        ws = [summary["affine"][n]["w"] for n in names]
        diff = max(float(np.max(np.abs(a - ws[0]) / np.abs(ws[0]).max())) for a in ws[1:])
        summary["affine_agreement"] = diff
        out(f"   backends agree to {diff:.1e} (max relative difference of w)")

    T, R, domain = deformed_pair()
    out(f"\n2. Elastic registration (alpha = 10, affine pre-registration), m = {domain.m}")
    for name in names:
        bk = multireg.get_backend(name)
        t0 = time.perf_counter()
        res = multireg.register(
            T, R, domain.omega, transform="nonparametric", regularizer="elastic", alpha=10.0,
            levels=3, backend=name,
        )  # fmt: skip
        elapsed = time.perf_counter() - t0
        summary["elastic"][name] = {
            "reduction": res.reduction,
            "det_min": res.det_min,
            "y": bk.to_numpy(res.y),
        }
        out(
            f"   {name:6s} distance reduced to {100 * res.reduction:.1f} % of the identity's, "
            f"min det ∇y = {res.det_min:.3f}, status {res.status.value}, {elapsed:.2f} s"
        )
    if len(names) > 1:
        ys = [summary["elastic"][n]["y"] for n in names]
        diff = max(float(np.max(np.abs(a - ys[0]))) for a in ys[1:])
        summary["elastic_agreement"] = diff
        out(f"   backends agree to {diff:.1e} (max difference of the transformed grid)")
    return summary
