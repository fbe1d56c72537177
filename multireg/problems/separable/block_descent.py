"""Block coordinate descent for separable problems: one inner solve in f, then one Gauss–Newton
step in w with the per-frame p×p blocks solved by batched Cholesky.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from multireg import _checks
from multireg.optimize import Record, Status
from multireg.problems.separable.inner import (
    _ROUNDING,
    _eps,
    _solve_linear,
    check_tolerances,
)
from multireg.problems.separable.problem import (
    INNER_SOLVERS,
    SeparableProblem,
    SeparableResult,
    _host,
    free_parameters,
)
from multireg.problems.separable.projection import _loop_result
from multireg.problems.separable.reduced import _block_step

Array = Any


def bcd(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None = None,
    *,
    inner_rtol: float = 1e-8,
    inner_max_iter: int = 500,
    inner_solver: str = "cg",
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
    ls_max_trials: int = 10,
    callback: Callable | None = None,
    verbose: bool = False,
) -> SeparableResult:
    """Block coordinate descent (LAP's CoordDescent, arXiv:1705.09992 §3): per iteration, f by
    the inner solve (``inner_solver``) at the current w (warm-started), then one Gauss–Newton
    step in w at frozen f, frame by frame (p×p blocks, batched Cholesky) with Armijo
    backtracking on Φ.

    Inner tolerance. Each f-update reduces ‖∇_f Φ‖ to ``inner_rtol``·s with
    s = max(‖∇_f Φ(w, f_warm)‖, ``tol_g``(1 + |Φ_ref|)): relative to the residual that the
    w-step left at the warm start, which is what this block step has to remove, so that
    ∇_f Φ → 0 as the w-steps vanish (an inexact block method converges when each block step
    removes a fixed fraction of its block's gradient). A tolerance relative to ‖Aᵀr(w, 0)‖
    (the cold start's residual, the scale of the whole image) let a good f0 pass every test
    with 0 inner steps, so f never moved; the residual at the warm start alone collapses at
    a good start (it would ask for rounding noise), hence the second term, a fraction
    ``inner_rtol`` of what the outer gradient test accepts (Φ_ref = Jstop below; Φ at the start
    for the first solve), and a floor at the rounding level.

    Stops (``CONVERGED``) when the joint optimality rules hold: |ΔΦ| ≤ ``tol_j``(1 + |Jstop|),
    ‖Δw‖ ≤ ``tol_y``(1 + ‖w0‖), ‖Δf‖ ≤ ``tol_y``(1 + ‖f₁‖) and
    ‖(∇_w Φ, ∇_f Φ)‖ ≤ ``tol_g``(1 + |Jstop|) (Jstop, f₁: Φ and f after the first inner
    solve; the recorded gradient norm is the joint one), or after ``max_iter`` iterations (status
    ``MAX_ITERATIONS``); a failed line search gives ``LINE_SEARCH_FAILED``. Nothing is raised
    on non-convergence.
    """
    check_tolerances(inner_rtol, inner_max_iter, "inner_rtol", "inner_max_iter")
    for name, value in (("tol_j", tol_j), ("tol_y", tol_y), ("tol_g", tol_g)):
        check_tolerances(value, max_iter, name, "max_iter")
    if isinstance(ls_max_trials, bool) or not isinstance(ls_max_trials, int) or ls_max_trials < 1:
        raise ValueError(f"ls_max_trials must be an integer >= 1, got {ls_max_trials!r}")
    _checks.choice("inner_solver", inner_solver, INNER_SOLVERS)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None")
    w = problem.check_w(w0)
    f = problem.check_f(f0, w)
    bk, xp, k, data = problem.bk, problem.bk.xp, problem.kernels, problem.data
    eps = _eps(f)
    start = time.perf_counter()

    def solve_f(w, f, phi_ref):
        (r_warm,) = _host(bk, xp.linalg.vector_norm(k["grad_f"](w, f, *data)))
        scale = max(r_warm, tol_g * (1 + abs(phi_ref)))
        return _solve_linear(
            problem,
            w,
            f,
            target=lambda b_norm: max(inner_rtol * scale, _ROUNDING * eps * b_norm),
            max_iter=inner_max_iter,
            solver=inner_solver,
        )

    def norms(w, f):
        """The joint gradient norm ‖(∇_w Φ (free frames), ∇_f Φ)‖."""
        gw = free_parameters(problem, k["grad_w"](w, f, *data))
        gf = k["grad_f"](w, f, *data)
        return _host(bk, xp.sqrt(xp.sum(gw * gw) + xp.sum(gf * gf)))[0]

    s = solve_f(w, f, problem.value(w, f))
    f, inner_total = s.f, s.iterations
    f_norm = _host(bk, xp.linalg.vector_norm(f))[0]
    fun = problem.value(w, f)
    j_stop = fun
    w_norm = float(np.linalg.norm(bk.to_numpy(w)))
    history = []
    status, message, it, nfev = Status.MAX_ITERATIONS, "", 0, 2

    def report(rec):
        history.append(rec)
        if verbose:
            print(
                f"bcd it={rec.iteration:3d} J={rec.fun:.6e} |dJ|={rec.grad_norm:.3e} "
                f"inner={rec.cg_iterations}"
            )
        if callback is not None:
            callback(rec)

    report(Record(0, fun, norms(w, f), 0.0, 0.0, s.iterations, 0.0))
    while it < max_iter:
        d = _block_step(problem, w, f, 0.0)
        g = k["grad_w"](w, f, *data)
        slope = _host(bk, xp.sum(g * d))[0]
        t, accepted = 1.0, False
        for _ in range(ls_max_trials):
            trial = w + t * d
            nfev += 1
            trial_fun = problem.value(trial, f)
            if trial_fun < fun + 1e-4 * t * slope:
                accepted = True
                break
            t /= 2
        if not accepted or not math.isfinite(slope):
            status, message = Status.LINE_SEARCH_FAILED, f"no decrease in w at iteration {it + 1}"
            break
        step_norm = t * _host(bk, xp.linalg.vector_norm(xp.reshape(d, (-1,))))[0]
        w = trial
        s = solve_f(w, f, j_stop)
        df_norm = _host(bk, xp.linalg.vector_norm(s.f - f))[0]
        f, inner_total = s.f, inner_total + s.iterations
        fun_old, fun = fun, problem.value(w, f)
        nfev += 1
        it += 1
        gn = norms(w, f)
        report(Record(it, fun, gn, step_norm, t, s.iterations, time.perf_counter() - start))
        if not (math.isfinite(fun) and math.isfinite(gn)):
            status = Status.NOT_FINITE
            message = f"Φ or its gradient is not finite at iteration {it}"
            break
        if (
            abs(fun_old - fun) <= tol_j * (1 + abs(j_stop))
            and step_norm <= tol_y * (1 + w_norm)
            and df_norm <= tol_y * (1 + f_norm)
            and gn <= tol_g * (1 + abs(j_stop))
        ):
            status, message = Status.CONVERGED, "stopping rules hold"
            break
    else:
        message = f"stopped at max_iter = {max_iter}"
    return _loop_result(
        problem, w, f, fun, history, it, nfev, status, f"bcd: {message}", inner_total, start
    )
