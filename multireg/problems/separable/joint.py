"""Gauss–Newton on the joint (w, f): :func:`lap` (linearise and project, Herring, Nagy & Ruthotto
2018: δw eliminated frame by frame, the projected system in δf by CG or LSQR, optional bounds
on f) and :func:`full_gauss_newton` (the joint normal equations by block-Jacobi preconditioned
CG, or LSQR on the column-scaled stacked system).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from multireg import _checks
from multireg.optimize import Record, Status
from multireg.problems.separable.inner import (
    _lsqr,
    _pcg,
    check_tolerances,
    solve_linear,
)
from multireg.problems.separable.problem import (
    INNER_SOLVERS,
    SeparableProblem,
    SeparableResult,
    _host,
)
from multireg.problems.separable.projection import _loop_result
from multireg.problems.separable.reduced import cholesky_solve

Array = Any


# ------------------------------------------------------------- joint (w, f) Gauss–Newton


def _tri_lower(L: Array, b: Array) -> Array:
    """x with L[k] x[k] = b[k] (L lower triangular, (K, p, p); b (K, p)): forward substitution."""
    xp = array_api_compat.array_namespace(L, b)
    x = []
    for i in range(L.shape[-1]):
        s = b[:, i] - sum((L[:, i, j] * x[j] for j in range(i)), start=xp.zeros_like(b[:, i]))
        x.append(s / L[:, i, i])
    return xp.stack(x, axis=1)


def _tri_upper_t(L: Array, b: Array) -> Array:
    """x with L[k]ᵀ x[k] = b[k] (L lower triangular): back substitution."""
    xp = array_api_compat.array_namespace(L, b)
    p = L.shape[-1]
    x = [None] * p
    for i in reversed(range(p)):
        s = b[:, i] - sum(
            (L[:, j, i] * x[j] for j in range(i + 1, p)), start=xp.zeros_like(b[:, i])
        )
        x[i] = s / L[:, i, i]
    return xp.stack(x, axis=1)


def _fixed_mask(problem: SeparableProblem, like: Array) -> Array:
    xp = problem.bk.xp
    return xp.asarray(
        [k in problem.fixed for k in range(problem.n_frames)],
        dtype=xp.bool,
        device=array_api_compat.device(like),
    )


def _frame_factors(problem: SeparableProblem, Jb: Array) -> tuple[Array, Array, Array]:
    """The frame blocks J_k of J_w with the fixed frames' set to 0, G_k = J_kᵀJ_k (+ 1e-12 of
    its largest diagonal entry, so that a frame that sees nothing stays solvable; I for fixed
    frames) and the lower Cholesky factor L_k of G_k."""
    xp = problem.bk.xp
    fixed = _fixed_mask(problem, Jb)
    Jb = xp.where(fixed[:, None, None], 0.0, Jb)
    p = Jb.shape[2]
    eye = xp.eye(p, dtype=Jb.dtype, device=array_api_compat.device(Jb))
    G = xp.sum(Jb[:, :, :, None] * Jb[:, :, None, :], axis=1)
    scale = xp.max(xp.abs(xp.linalg.diagonal(G)), axis=1)
    G = G + (1e-12 * scale + xp.where(scale > 0, 0.0, 1.0))[:, None, None] * eye
    G = xp.where(fixed[:, None, None], eye, G)
    return Jb, G, xp.linalg.cholesky(G)


def _frame_basis(Jb: Array, L: Array) -> Array:
    """Q_k = J_k L_k⁻ᵀ (N, q, p): orthonormal columns spanning each frame's J_w block, so that
    P⊥ = I − Q_k Q_kᵀ = I − J_k G_k⁻¹ J_kᵀ (forward substitution over the p columns)."""
    xp = array_api_compat.array_namespace(Jb, L)
    Q = []
    for i in range(Jb.shape[2]):
        s = Jb[:, :, i] - sum(
            (L[:, i, j, None] * Q[j] for j in range(i)), start=xp.zeros_like(Jb[:, :, i])
        )
        Q.append(s / L[:, i, i, None])
    return xp.stack(Q, axis=2)


def check_bounds(bounds: Any) -> tuple[float, float] | None:
    """``bounds`` on f as a checked pair (lo, hi) with lo < hi, or None (no bounds): the
    argument of :func:`lap`, checked before any work (also by
    :func:`multireg.problems.superres.solve`)."""
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"bounds must be None or a pair (lo, hi) of numbers, got {bounds!r}"
        ) from None
    if not lo < hi:
        raise ValueError(f"bounds must have lo < hi, got {bounds!r}")
    return lo, hi


def _lap_step(problem, w, f, lin, mask, solver, rtol, max_iter):
    """LAP's step (Herring, Nagy & Ruthotto 2018, §3): with r + J_w δw + A δf linearised at
    (w, f), δw_k = −G_k⁻¹ J_kᵀ (r_k + (A δf)_k) minimises over δw for any δf; substituted,
    δf solves min ‖P⊥(r + A δf)‖² + ‖L(f + δf)‖² (on the free image variables), by CG on its
    normal equations or by LSQR on the stacked projected system."""
    bk, xp, k, data = problem.bk, problem.bk.xp, problem.kernels, problem.data
    F, F0, Jb, _, _ = lin
    Jb, G, Lc = _frame_factors(problem, Jb)
    Q = _frame_basis(Jb, Lc)
    if solver == "cg":
        b = -k["op_t"](w, f, F, Q, mask, *data)
        df, it, _ = _pcg(
            bk,
            lambda u: k["normal_op"](w, u, Q, mask, *data),
            b,
            rtol=rtol,
            max_iter=max_iter,
        )
    else:

        def At(v):
            return k["op_t"](w, f, v, Q, mask, *data)

        b = -k["project"](F, Q)
        (scale,) = _host(bk, xp.linalg.vector_norm(At(b)))
        df, it, _ = _lsqr(
            bk,
            lambda u: k["op"](w, u, F0, Q, mask, *data),
            At,
            b,
            rtol=rtol,
            max_iter=max_iter,
            scale=scale,
        )
    if mask is not None:
        df = mask * df
    nd = Jb.shape[0] * Jb.shape[1]
    r_lin = xp.reshape(F[:nd] + k["op"](w, df, F0, None, None, *data)[:nd], Jb.shape[:2])
    dw = -cholesky_solve(G, xp.sum(Jb * r_lin[:, :, None], axis=1))
    return dw, df, it


def _full_step(problem, w, f, lin, mask, solver, rtol, max_iter, f_scale):
    """The joint Gauss–Newton step: JᵀJ [δw; δf] = −JᵀF with J = [J_w J_f], by CG
    preconditioned with the block diagonal diag(G_1 … G_N, s·I) (the exact p×p frame blocks
    of J_wᵀJ_w, Cholesky; s ≈ mean diagonal of J_fᵀJ_f), or by LSQR on J M⁻¹ with
    M = diag(L_1ᵀ … L_Nᵀ, √s·I) (the same scaling, applied to the columns)."""
    bk, xp, k, data = problem.bk, problem.bk.xp, problem.kernels, problem.data
    F, F0, Jb, gw, gf = lin
    Jb, G, Lc = _frame_factors(problem, Jb)
    gw = xp.where(_fixed_mask(problem, gw)[:, None], 0.0, gw)
    N, p = Jb.shape[0], Jb.shape[2]
    nw = N * p

    def split(z):
        return xp.reshape(z[:nw], (N, p)), z[nw:]

    if solver == "cg":

        def precond(z):
            zw, zf = split(z)
            return xp.concat([xp.reshape(cholesky_solve(G, zw), (-1,)), zf / f_scale])

        rhs = -xp.concat([xp.reshape(gw, (-1,)), gf if mask is None else mask * gf])
        z, it, _ = _pcg(
            bk,
            lambda z: k["joint_normal"](w, z, Jb, mask, *data),
            rhs,
            rtol=rtol,
            max_iter=max_iter,
            precond=precond,
        )
    else:
        root = math.sqrt(f_scale)

        def Minv(y):
            yw, yf = split(y)
            return xp.concat([xp.reshape(_tri_upper_t(Lc, yw), (-1,)), yf / root])

        def Minv_t(x):
            xw, xf = split(x)
            return xp.concat([xp.reshape(_tri_lower(Lc, xw), (-1,)), xf / root])

        def At(v):
            return Minv_t(k["joint_adjoint"](w, f, v, Jb, mask, *data))

        (scale,) = _host(bk, xp.linalg.vector_norm(At(F)))
        y, it, _ = _lsqr(
            bk,
            lambda y: k["joint_forward"](w, Minv(y), F0, Jb, mask, *data),
            At,
            -F,
            rtol=rtol,
            max_iter=max_iter,
            scale=scale,
        )
        z = Minv(y)
    dw, df = split(z)
    return dw, (df if mask is None else mask * df), it


def _mean_diagonal(problem: SeparableProblem, w: Array, f: Array, probes: int = 4) -> float:
    """trace(J_fᵀJ_f)/n_f by Hutchinson's estimator with fixed Rademacher probes (the same on
    every backend): the scale of the image block in :func:`full_gauss_newton`'s
    preconditioner (M. F. Hutchinson, Commun. Stat. Simul. Comput. 18 (1989) 1059–1076)."""
    bk, k = problem.bk, problem.kernels
    Z = np.random.default_rng(0).choice([-1.0, 1.0], size=(probes, problem.n_f))
    total = 0.0
    for z in Z:
        zb = bk.asarray(z, dtype=f.dtype, device=array_api_compat.device(f))
        total += _host(bk, bk.xp.sum(zb * k["normal_op"](w, zb, None, None, *problem.data)))[0]
    return max(total / (probes * problem.n_f), 1e-300)


def _joint(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None,
    name: str,
    step: Callable,
    *,
    bounds: Any,
    inner_solver: str,
    inner_rtol: float,
    inner_max_iter: int,
    max_iter: int,
    tol_j: float,
    tol_y: float,
    tol_g: float,
    ls_max_trials: int,
    callback: Callable | None,
    verbose: bool,
    setup: Callable | None = None,
) -> SeparableResult:
    """The outer loop of :func:`lap` and :func:`full_gauss_newton`: (projected) Gauss–Newton
    on (w, f) with Armijo backtracking, stopping rules as in :func:`bcd`."""
    check_tolerances(inner_rtol, inner_max_iter, "inner_rtol", "inner_max_iter")
    check_tolerances(tol_j, max_iter, "tol_j", "max_iter")
    check_tolerances(tol_y, 0, "tol_y", "max_iter")
    check_tolerances(tol_g, 0, "tol_g", "max_iter")
    if isinstance(ls_max_trials, bool) or not isinstance(ls_max_trials, int) or ls_max_trials < 1:
        raise ValueError(f"ls_max_trials must be an integer >= 1, got {ls_max_trials!r}")
    _checks.choice("inner_solver", inner_solver, INNER_SOLVERS)
    box = check_bounds(bounds)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None")
    w = problem.check_w(w0)
    bk, xp, k, data = problem.bk, problem.bk.xp, problem.kernels, problem.data
    start = time.perf_counter()
    inner_total = 0
    if f0 is None:
        s = solve_linear(
            problem, w, None, rtol=inner_rtol, max_iter=inner_max_iter, solver=inner_solver
        )
        f, inner_total = s.f, s.iterations
    else:
        f = problem.check_f(f0, w)
    if box is not None:
        f = xp.clip(f, min=box[0], max=box[1])
    fixed = _fixed_mask(problem, w)
    if box is not None:
        width = box[1] - box[0]
        eps0 = 1e-3 * width if math.isfinite(width) else 1e-3
    context = None if setup is None else setup(w, f)
    fun = problem.value(w, f)
    j_stop = fun
    w_norm, f_norm = _host(
        bk, xp.stack([xp.linalg.vector_norm(xp.reshape(w, (-1,))), xp.linalg.vector_norm(f)])
    )
    history: list[Record] = []
    status, message, it, nfev = Status.MAX_ITERATIONS, "", 0, 1
    dw_norm = df_norm = t = 0.0
    fun_old, cg_its = fun, 0
    while True:
        F, F0, Jb, gw, gf = k["linearise"](w, f, *data)
        gw = xp.where(fixed[:, None], 0.0, gw)
        mask = None
        if box is not None:
            # Bertsekas' ε-active set: within ε of a bound, ε = min(ε0, ‖f − P(f − ∇_f Φ)‖∞),
            # so that variables about to hit a bound are frozen before the step is clipped
            eps = xp.minimum(xp.max(xp.abs(f - xp.clip(f - gf, min=box[0], max=box[1]))), eps0)
            active = ((f <= box[0] + eps) & (gf > 0)) | ((f >= box[1] - eps) & (gf < 0))
            mask = xp.where(active, 0.0, 1.0)
        g_free = gf if mask is None else mask * gf
        (grad_norm,) = _host(bk, xp.sqrt(xp.sum(gw * gw) + xp.sum(g_free * g_free)))
        rec = Record(
            it,
            fun,
            grad_norm,
            math.hypot(dw_norm, df_norm),
            t,
            cg_its,
            time.perf_counter() - start,
        )
        history.append(rec)
        if verbose:
            print(
                f"{name} it={it:3d} J={fun:.6e} |dJ|={grad_norm:.3e} "
                f"|dw|={dw_norm:.2e} |df|={df_norm:.2e} t={t:.3g} inner={cg_its}"
            )
        if callback is not None:
            callback(rec)
        if not (math.isfinite(fun) and math.isfinite(grad_norm)):
            status, message = (
                Status.NOT_FINITE,
                f"Φ or its gradient is not finite at iteration {it}",
            )
            break
        if grad_norm <= 1e6 * float(np.finfo(np.float64).eps):
            status, message = Status.CONVERGED, "gradient vanishes"
            break
        if (
            it > 0
            and abs(fun_old - fun) <= tol_j * (1 + abs(j_stop))
            and dw_norm <= tol_y * (1 + w_norm)
            and df_norm <= tol_y * (1 + f_norm)
            and grad_norm <= tol_g * (1 + abs(j_stop))
        ):
            status, message = Status.CONVERGED, "stopping rules hold"
            break
        if it >= max_iter:
            message = f"stopped at max_iter = {max_iter}"
            break
        lin = (F, F0, Jb, gw, gf)
        dw, df, cg_its = step(w, f, lin, mask, context)
        dw = xp.where(fixed[:, None], 0.0, dw)
        inner_total += cg_its
        t, accepted = 1.0, False
        for _ in range(ls_max_trials):
            w_t = w + t * dw
            f_t = f + t * df
            if box is not None:
                f_t = xp.clip(f_t, min=box[0], max=box[1])
            # projected Armijo (Bertsekas 1982): the slope along the projected path
            slope = xp.sum(gw * (w_t - w)) + xp.sum(gf * (f_t - f))
            trial_fun, trial_slope = _host(bk, xp.stack([k["value"](w_t, f_t, *data)[0], slope]))
            nfev += 1
            if (
                math.isfinite(trial_fun)
                and trial_slope < 0
                and trial_fun <= fun + 1e-4 * trial_slope
            ):
                accepted = True
                break
            t /= 2
        if not accepted:
            status = Status.LINE_SEARCH_FAILED
            message = f"no sufficient decrease along the step of iteration {it + 1}"
            t = 0.0
            break
        dw_norm, df_norm = _host(
            bk,
            xp.stack(
                [xp.linalg.vector_norm(xp.reshape(w_t - w, (-1,))), xp.linalg.vector_norm(f_t - f)]
            ),
        )
        w, f, fun_old, fun = w_t, f_t, fun, trial_fun
        it += 1
    return _loop_result(
        problem, w, f, fun, history, it, nfev, status, f"{name}: {message}", inner_total, start
    )


def lap(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None = None,
    *,
    bounds: tuple[float, float] | None = None,
    inner_solver: str = "cg",
    inner_rtol: float = 1e-3,
    inner_max_iter: int = 200,
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
    ls_max_trials: int = 10,
    callback: Callable | None = None,
    verbose: bool = False,
) -> SeparableResult:
    """LAP, linearise and project (J. L. Herring, J. G. Nagy and L. Ruthotto,
    arXiv:1705.09992, §3): Gauss–Newton on the joint (w, f) where each step eliminates δw.

    At (w, f) the residual is linearised, F + J_w δw + J_f δf. For any δf the best δw is, frame
    by frame, δw_k = −G_k⁻¹J_kᵀ(r_k + (A δf)_k) with G_k = J_kᵀJ_k (p×p, batched Cholesky);
    substituted, δf solves the projected regularised least squares
    min ‖P⊥(r + A δf)‖² + ‖L(f + δf)‖², P⊥ = I − J_k G_k⁻¹ J_kᵀ applied blockwise, matrix-free
    by CG on its normal equations or LSQR (``inner_solver``) from δf = 0 to the relative
    normal-equation residual ``inner_rtol`` (at most ``inner_max_iter`` steps: an inexact
    Gauss–Newton step); then δw is recovered and an Armijo search (c = 1e-4, halving,
    ``ls_max_trials``) runs on the joint step. The step is the exact joint Gauss–Newton step
    (the Schur complement of the block-diagonal w part), computed on a smaller, better
    conditioned system than :func:`full_gauss_newton`'s.

    ``bounds=(lo, hi)`` on f: projected Gauss–Newton as LAP does for f ∈ [0, 1]: f0 is
    projected onto the box; image variables at a bound whose gradient points out of the box
    are frozen (the active set) and the step is computed on the rest; trial points are
    projected onto the box and the Armijo test uses the slope along the projected path
    (Bertsekas, SIAM J. Control Optim. 20 (1982) 221–246).

    ``f0=None``: the inner solution at ``w0`` (:func:`solve_linear`). Stopping as in
    :func:`bcd`: |ΔΦ| ≤ ``tol_j``(1 + Φ0), ‖Δw‖ ≤ ``tol_y``(1 + ‖w0‖) and ‖Δf‖ ≤
    ``tol_y``(1 + ‖f0‖) (each block against its own scale, not LAP's joint one that the image
    dominates), ‖(∇_w Φ, ∇_f Φ)‖ (projected) ≤ ``tol_g``(1 + Φ0); statuses ``MAX_ITERATIONS``,
    ``LINE_SEARCH_FAILED``, ``NOT_FINITE`` are reported, never raised. ``inner_iterations`` of
    the result counts every CG/LSQR step (the first inner solve included).
    """

    def step(w, f, lin, mask, context):
        return _lap_step(problem, w, f, lin, mask, inner_solver, inner_rtol, inner_max_iter)

    return _joint(
        problem,
        w0,
        f0,
        "lap",
        step,
        bounds=bounds,
        inner_solver=inner_solver,
        inner_rtol=inner_rtol,
        inner_max_iter=inner_max_iter,
        max_iter=max_iter,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        ls_max_trials=ls_max_trials,
        callback=callback,
        verbose=verbose,
    )


def full_gauss_newton(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None = None,
    *,
    bounds: tuple[float, float] | None = None,
    inner_solver: str = "cg",
    inner_rtol: float = 1e-3,
    inner_max_iter: int = 500,
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
    ls_max_trials: int = 10,
    callback: Callable | None = None,
    verbose: bool = False,
) -> SeparableResult:
    """Gauss–Newton on the joint (w, f) (LAP's FULL, arXiv:1705.09992 §3; Nocedal & Wright,
    2nd ed., §10.3): each step solves [J_w J_f]ᵀ[J_w J_f] [δw; δf] = −[J_w J_f]ᵀF matrix-free.

    The joint system is solved as a whole, by CG (``inner_solver="cg"``) preconditioned with
    its block diagonal diag(G_1 … G_N, s·I) — the exact p×p frame blocks G_k = J_kᵀJ_k of the
    w part (batched Cholesky) and s·I for the image part, s = trace(J_fᵀJ_f)/n_f estimated
    once at the start by Hutchinson's estimator — or by LSQR on the stacked system with the
    same scaling on the columns (``"lsqr"``). The Schur complement, eliminating the w blocks
    exactly, is deliberately not used: it gives LAP's projected system, so :func:`lap` is that
    variant; here the coupled system is kept, which is the comparison LAP's paper makes (the
    joint system is the worse conditioned one). ``bounds``, Armijo, stopping rules, statuses
    and ``f0=None`` as in :func:`lap`; ``inner_rtol`` is the relative residual of the joint
    (preconditioned, for LSQR) normal equations.
    """

    def setup(w, f):
        return _mean_diagonal(problem, w, f)

    def step(w, f, lin, mask, f_scale):
        return _full_step(
            problem, w, f, lin, mask, inner_solver, inner_rtol, inner_max_iter, f_scale
        )

    return _joint(
        problem,
        w0,
        f0,
        "full",
        step,
        bounds=bounds,
        inner_solver=inner_solver,
        inner_rtol=inner_rtol,
        inner_max_iter=inner_max_iter,
        max_iter=max_iter,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        ls_max_trials=ls_max_trials,
        callback=callback,
        verbose=verbose,
        setup=setup,
    )
