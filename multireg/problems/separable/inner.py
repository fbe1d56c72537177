"""The inner solve f(w) = argmin_f Φ(w, f): CG on the normal equations or LSQR on the stacked
system (Paige & Saunders 1982; Hestenes & Stiefel 1952), warm-started, matrix-free, batched CG
for many right-hand sides, and the tolerance checks the solvers share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from multireg import _checks
from multireg.problems.separable.problem import INNER_SOLVERS, SeparableProblem, _host

Array = Any


# --------------------------------------------------------------------------- inner solve


@dataclass(frozen=True)
class InnerSolve:
    """The inner solution f ≈ argmin_f Φ(w, f) and how it was reached.

    ``residual_norm`` is ‖∇_f Φ(w, f)‖ / ‖Aᵀ r(w, 0)‖ (the relative normal-equation residual).
    """

    f: Array
    iterations: int
    residual_norm: float
    converged: bool


def batched_cg(
    problem: SeparableProblem, w: Array, B: Array, X0: Array, rtol: float, max_iter: int
) -> tuple[Array, int, float]:
    """CG on N X[i] = B[i] for every row i, from X0 (N = AᵀA + LᵀL, the inner normal matrix at w);
    stops when every row has
    ‖B[i] − N X[i]‖ ≤ rtol ‖B[i]‖ (Hestenes & Stiefel 1952). Returns X, iterations, worst ratio.
    """
    bk, xp, k = problem.bk, problem.bk.xp, problem.kernels
    b_norm = np.sqrt(np.maximum(_host(bk, xp.sum(B * B, axis=1)), 1e-300))
    R, rr = k["cg_start"](w, X0, B, *problem.data)
    X, P = X0, R
    worst = float(np.max(np.sqrt(np.maximum(_host(bk, rr), 0.0)) / b_norm))
    it = 0
    while worst > rtol and it < max_iter:
        X, R, P, rr = k["cg_step"](w, X, R, P, rr, *problem.data)
        it += 1
        worst = float(np.max(np.sqrt(np.maximum(_host(bk, rr), 0.0)) / b_norm))
        if not math.isfinite(worst):
            break
    return X, it, worst


def solve_linear(
    problem: SeparableProblem,
    w: Array,
    f0: Array | None = None,
    *,
    rtol: float = 1e-6,
    max_iter: int = 500,
    solver: str = "cg",
) -> InnerSolve:
    """f(w) = argmin_f ½‖r(w, f)‖² + ½‖L f‖², matrix-free, warm-started at f0.

    ``solver="cg"``: CG on the normal equations (AᵀA + LᵀL) f = −Aᵀ r(w, 0) from f0 (Hestenes
    & Stiefel 1952). ``solver="lsqr"``: LSQR (Paige & Saunders 1982) on the stacked system
    [A; L] δ ≈ −F(w, f0) for the correction δ = f − f0 (a warm start for a method that starts
    at zero), with A v = F(w, v) − F(w, 0) (F is affine in f) and Aᵀu by a vjp in f. Both stop
    when ‖∇_f Φ‖ ≤ ``rtol``·‖Aᵀ r(w, 0)‖ (CG: its recursive residual; LSQR: its estimate
    φ̄ α |c| of ‖[A; L]ᵀ(residual)‖) or after ``max_iter`` iterations. Non-convergence is
    reported in the result, never raised.

    The tolerance is relative to the cold start's residual ‖Aᵀ r(w, 0)‖, so that f(w) means the
    same thing wherever the warm start comes from (what VarPro's reduced function needs). The
    outer methods that warm-start it from their own iterates choose their own absolute target
    (:func:`bcd`: relative to the residual at the warm start; :func:`varpro`: no looser than
    its outer gradient tolerance).
    """
    check_tolerances(rtol, max_iter, "rtol", "max_iter")
    _checks.choice("solver", solver, INNER_SOLVERS)
    w = problem.check_w(w)
    f0 = problem.check_f(f0, w)
    return _solve_linear(
        problem, w, f0, target=lambda b_norm: rtol * b_norm, max_iter=max_iter, solver=solver
    )


def _solve_linear(
    problem: SeparableProblem,
    w: Array,
    f0: Array,
    *,
    target: Callable[[float], float],
    max_iter: int,
    solver: str,
) -> InnerSolve:
    """:func:`solve_linear` to the absolute tolerance ‖∇_f Φ‖ ≤ ``target(‖Aᵀ r(w, 0)‖)``
    (arguments already checked); ``residual_norm`` stays relative to ‖Aᵀ r(w, 0)‖."""
    xp, k, data = problem.bk.xp, problem.kernels, problem.data
    b = -k["grad_f"](w, xp.zeros_like(f0), *data)
    (b_norm,) = _host(problem.bk, xp.linalg.vector_norm(b))
    rtol = target(b_norm) / max(b_norm, 1e-300)
    if solver == "cg":
        X, it, worst = batched_cg(problem, w, b[None, :], f0[None, :], rtol, max_iter)
        return InnerSolve(f=X[0, :], iterations=it, residual_norm=worst, converged=worst <= rtol)
    F0 = k["stacked"](w, xp.zeros_like(f0), *data)
    delta, it, ratio = _lsqr(
        problem.bk,
        lambda u: k["op"](w, u, F0, None, None, *data),
        lambda v: k["op_t"](w, f0, v, None, None, *data),
        -k["stacked"](w, f0, *data),
        rtol=rtol,
        max_iter=max_iter,
        scale=b_norm,
    )
    return InnerSolve(f=f0 + delta, iterations=it, residual_norm=ratio, converged=ratio <= rtol)


# The attainable accuracy of ‖∇_f Φ‖, relative to ‖Aᵀ r(w, 0)‖, in units of the dtype's eps:
# an inner target below it would only spend iterations on rounding noise.
_ROUNDING = 100.0


def _eps(like: Array) -> float:
    return float(array_api_compat.array_namespace(like).finfo(like.dtype).eps)


def _lsqr(
    bk: Any,
    A: Callable,
    At: Callable,
    b: Array,
    *,
    rtol: float,
    max_iter: int,
    scale: float,
) -> tuple[Array, int, float]:
    """min_x ‖A x − b‖ by LSQR from x = 0 (Paige & Saunders, ACM TOMS 8 (1982), Alg. LSQR §4,
    without reorthogonalisation). Stops when the recurrence's estimate φ̄_{k+1} α_{k+1} |c_k| of
    ‖Aᵀ(b − A x_k)‖ is at most ``rtol``·``scale``, or after ``max_iter`` steps. Returns x, the
    steps taken and that estimate over ``scale``. One host read per step."""
    xp = bk.xp

    def normalise(v):
        n = xp.linalg.vector_norm(v)
        return v / xp.where(n > 0, n, 1.0), n

    u, beta = normalise(b)
    v, alpha = normalise(At(u))
    x = xp.zeros_like(v)
    d, phibar, rhobar = v, beta, alpha
    if not scale > 0:
        return x, 0, 0.0
    (estimate,) = _host(bk, alpha * beta)
    ratio, it = estimate / scale, 0
    while ratio > rtol and it < max_iter:
        u, beta = normalise(A(v) - alpha * u)
        v, alpha = normalise(At(u) - beta * v)
        rho = xp.sqrt(rhobar * rhobar + beta * beta)
        rho = xp.where(rho > 0, rho, 1.0)
        c, s = rhobar / rho, beta / rho
        theta, rhobar = s * alpha, -c * alpha
        phi, phibar = c * phibar, s * phibar
        x = x + (phi / rho) * d
        d = v - (theta / rho) * d
        it += 1
        (estimate,) = _host(bk, phibar * alpha * xp.abs(c))
        ratio = estimate / scale
        if not math.isfinite(ratio):
            break
    return x, it, ratio


def _pcg(
    bk: Any,
    apply: Callable,
    b: Array,
    *,
    rtol: float,
    max_iter: int,
    precond: Callable | None = None,
) -> tuple[Array, int, float]:
    """S x = b for SPD S (``apply``) by preconditioned CG from x = 0 (Hestenes & Stiefel 1952;
    Saad, Iterative Methods, 2nd ed., Alg. 9.1). Stops when ‖b − S x‖ ≤ ``rtol``‖b‖ or after
    ``max_iter`` steps, or at a direction of non-positive curvature (rounding). Returns x, the
    steps taken and ‖b − S x‖/‖b‖. One host read per step."""
    xp = bk.xp
    x = xp.zeros_like(b)
    (b_norm,) = _host(bk, xp.linalg.vector_norm(b))
    if not b_norm > 0 or not math.isfinite(b_norm):
        return x, 0, 0.0 if b_norm == 0 else math.inf
    r = b
    z = r if precond is None else precond(r)
    p, rz = z, xp.sum(r * z)
    ratio, it = 1.0, 0
    while ratio > rtol and it < max_iter:
        q = apply(p)
        pq = xp.sum(p * q)
        alpha = xp.where(pq > 0, rz / xp.where(pq > 0, pq, 1.0), 0.0)
        x, r = x + alpha * p, r - alpha * q
        z = r if precond is None else precond(r)
        rz_new = xp.sum(r * z)
        p = z + xp.where(rz > 0, rz_new / xp.where(rz > 0, rz, 1.0), 0.0) * p
        rz = rz_new
        it += 1
        r_norm, curvature = _host(bk, xp.stack([xp.linalg.vector_norm(r), pq]))
        ratio = r_norm / b_norm
        if not curvature > 0 or not math.isfinite(ratio):
            break
    return x, it, ratio


def check_tolerances(rtol: Any, max_iter: Any, rname: str, iname: str) -> None:
    """Check an inner solve's relative tolerance (a number >= 0) and iteration cap (an integer
    >= 0) before any work, naming the caller's arguments ``rname`` and ``iname`` in the
    ValueError. Shared by every method here and by the problems built on the engine."""
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
        raise ValueError(f"{rname} must be a number >= 0, got {rtol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"{iname} must be an integer >= 0, got {max_iter!r}")
