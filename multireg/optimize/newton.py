"""Gauss–Newton and Newton: one damped Newton-type loop with an Armijo line search.

Each iteration solves H d = −∇J with the objective's curvature H (the Gauss–Newton model for
:func:`gauss_newton`, the exact Hessian for :func:`newton`): with ``xp.linalg.solve`` when H was
formed as a matrix, else with Jacobi-preconditioned CG (truncated at negative curvature, which
makes :func:`newton` Newton–CG). A direction that is not a descent direction is flipped, as
FAIR's GaussNewton.m does, and a useless one (zero or not finite) is replaced by −∇J. Armijo
backtracking picks the step length and FAIR's stopping rules decide when to stop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import array_api_compat

from multireg.optimize import _loop, _options
from multireg.optimize._objective import LinearOperator, Objective
from multireg.optimize._result import Record, Result, Status
from multireg.optimize.cg import descent_direction
from multireg.optimize.linesearch import armijo

__all__ = ["gauss_newton", "newton"]

Array = Any
G_TINY = 1e6 * _loop.EPS
"""FAIR's STOP4 threshold (GaussNewton.m)."""
LINEAR_SOLVERS = ("pcg", "direct")
DIRECT_MAX = 1024
"""``linear_solver="direct"``: a matrix-free curvature with at most this many unknowns is
formed column by column (one product per unknown) and solved densely; a larger one by PCG to
:data:`DIRECT_RTOL`."""
DIRECT_RTOL = 1e-10


def gauss_newton(
    objective: Objective,
    x0: Array,
    *,
    tol_j: float = 1e-3,
    tol_y: float = 1e-2,
    tol_g: float = 1e-2,
    max_iter: int = 10,
    x_stop: Array | None = None,
    j_stop: float | None = None,
    j_scale: float | None = None,
    cg_rtol: float = 0.1,
    cg_max_iter: int = 500,
    linear_solver: str = "pcg",
    ls_reduction: float = 1e-4,
    ls_max_trials: int = 10,
    callback: Callable[[Record], Any] | None = None,
    verbose: bool = False,
) -> Result:
    """Minimise J by Gauss–Newton: steps from the objective's curvature model ``hessian(x)``.

    FAIR book §6.3 and GaussNewton.m; Nocedal & Wright, 2nd ed., §10.3 with Alg. 3.1.

    Stopping (FAIR's rules and defaults): with Jstop = J(``x_stop``) (default x0; pass
    ``j_stop`` to give it), converged when STOP1 |J_old − J| ≤ ``tol_j``(1 + |Jstop|),
    STOP2 ‖x − x_old‖ ≤ ``tol_y``(1 + ‖x_stop‖) and STOP3 ‖∇J‖ ≤ ``tol_g``(1 + |Jstop|) all
    hold, or STOP4 ‖∇J‖ ≤ 1e6·eps; status ``MAX_ITERATIONS`` after ``max_iter`` iterations.
    ``j_scale`` (optional, the magnitude of J's terms) makes STOP4 relative to it, and a line
    search that fails where the step promised only a round-off decrease of J means x is a
    minimiser to working precision: converged (see :func:`multireg.optimize._loop.iterate`).

    Linear solve: ``xp.linalg.solve`` for a dense curvature, else PCG (Jacobi when the operator
    has a diagonal) to relative residual ``cg_rtol`` within ``cg_max_iter`` iterations (FAIR's
    solveLinearSystem for its matrix-free PCG solvers: 0.1 and 500). ``linear_solver``:
    ``"pcg"`` (default) as just said, or ``"direct"``, FAIR's ``backslash`` (the solver of its
    matrix-based regularisers and of every FAIR parametric registration): the Gauss–Newton
    system is solved exactly, densely up to :data:`DIRECT_MAX` unknowns (a matrix-free operator
    is formed column by column), beyond that by PCG to :data:`DIRECT_RTOL` within
    max(``cg_max_iter``, unknowns) iterations. A truncated solve costs far less per iteration
    and, from FAIR's defaults, ends within the stopping tolerances at the same minimiser;
    ``"direct"`` reproduces FAIR's iterates.

    Armijo: t0 = 1, halving, at most ``ls_max_trials`` trials, sufficient-decrease constant
    ``ls_reduction``; failure gives ``LINE_SEARCH_FAILED`` and keeps the last iterate.

    ``x0``: 1-D array (float64 or float32), converted to the objective's backend.
    ``callback(record)`` receives each :class:`Record` (row 0 is the start); ``verbose`` prints
    them. Failures are reported in the result's ``status``, never raised.
    """
    return _run(
        objective,
        x0,
        "gauss_newton",
        exact=False,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        max_iter=max_iter,
        x_stop=x_stop,
        j_stop=j_stop,
        j_scale=j_scale,
        cg_rtol=cg_rtol,
        cg_max_iter=cg_max_iter,
        linear_solver=linear_solver,
        ls_reduction=ls_reduction,
        ls_max_trials=ls_max_trials,
        callback=callback,
        verbose=verbose,
    )


def newton(
    objective: Objective,
    x0: Array,
    *,
    tol_j: float = 1e-3,
    tol_y: float = 1e-2,
    tol_g: float = 1e-2,
    max_iter: int = 10,
    x_stop: Array | None = None,
    j_stop: float | None = None,
    j_scale: float | None = None,
    cg_rtol: float = 0.1,
    cg_max_iter: int = 500,
    linear_solver: str = "pcg",
    ls_reduction: float = 1e-4,
    ls_max_trials: int = 10,
    callback: Callable[[Record], Any] | None = None,
    verbose: bool = False,
) -> Result:
    """Minimise J by Newton's method: steps from the exact Hessian ``exact_hessian(x)``.

    Line-search Newton (Nocedal & Wright, 2nd ed., §3.3, with Alg. 3.1); with a matrix-free
    Hessian it is Newton–CG (N&W Alg. 7.1: CG stops at negative curvature). The loop, options and
    stopping rules are those of :func:`gauss_newton`.
    """
    return _run(
        objective,
        x0,
        "newton",
        exact=True,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        max_iter=max_iter,
        x_stop=x_stop,
        j_stop=j_stop,
        j_scale=j_scale,
        cg_rtol=cg_rtol,
        cg_max_iter=cg_max_iter,
        linear_solver=linear_solver,
        ls_reduction=ls_reduction,
        ls_max_trials=ls_max_trials,
        callback=callback,
        verbose=verbose,
    )


def _run(
    objective: Objective,
    x0: Array,
    name: str,
    *,
    exact: bool,
    cg_rtol: float,
    cg_max_iter: int,
    linear_solver: str,
    ls_reduction: float,
    ls_max_trials: int,
    **stopping: Any,
) -> Result:
    x, settings = _loop.prepare(objective, x0, **stopping)
    _options.nonnegative("cg_rtol", cg_rtol)
    _options.count("cg_max_iter", cg_max_iter, minimum=1)
    _options.choice("linear_solver", linear_solver, LINEAR_SOLVERS)
    if linear_solver == "direct":
        cg_rtol, cg_max_iter = DIRECT_RTOL, max(cg_max_iter, int(x.shape[0]))
    _options.fraction("ls_reduction", ls_reduction)
    _options.count("ls_max_trials", ls_max_trials, minimum=1)
    bk = objective.bk
    curvature = objective.exact_hessian if exact else objective.hessian

    def step(x, fun, grad, grad_norm, state):
        H = curvature(x)
        if linear_solver == "direct" and H.matrix is None and x.shape[0] <= DIRECT_MAX:
            H = _formed(bk, H, x)
        d, cg_iterations = _solve(bk, H, grad, cg_rtol, cg_max_iter)
        slope, d_norm = _loop.host(bk, _loop.compiled(bk, _loop.slope_and_norm)(grad, d))
        if not (math.isfinite(slope) and math.isfinite(d_norm)) or slope == 0:
            d, slope, d_norm = -grad, -(grad_norm**2), grad_norm
        elif slope > 0:  # not a descent direction (H indefinite): flip it, as FAIR does
            d, slope = -d, -slope
        ls = armijo(
            bk, objective.value, x, d, fun, slope, reduction=ls_reduction, max_trials=ls_max_trials
        )
        if not ls.success:
            return _loop.Step(
                x=None,
                nfev=ls.trials,
                cg_iterations=cg_iterations,
                failure=Status.LINE_SEARCH_FAILED,
                message=f"Armijo line search found no decrease in {ls.trials} trials",
                predicted_decrease=-slope,
            ), state
        return _loop.Step(
            x=ls.x,
            step_norm=ls.t * d_norm,
            step_length=ls.t,
            cg_iterations=cg_iterations,
            nfev=ls.trials,
        ), state

    return _loop.iterate(objective, x, step, None, settings=settings, g_tiny=G_TINY, name=name)


def _solve(
    bk: Any, H: LinearOperator, grad: Array, cg_rtol: float, cg_max_iter: int
) -> tuple[Array, int]:
    """d with H d = −grad, and the CG iterations spent (0 for a dense solve)."""
    if H.matrix is None:
        result = descent_direction(bk, H, grad, rtol=cg_rtol, max_iter=cg_max_iter)
        return result.x, result.iterations
    try:
        return _loop.compiled(bk, _newton_step)(H.matrix, grad), 0
    except (ValueError, RuntimeError):
        # A singular H: NumPy raises LinAlgError (a ValueError) and torch a RuntimeError subclass,
        # while JAX returns non-finite values; all three end in the steepest-descent fallback.
        return bk.xp.full_like(grad, math.nan), 0


def _formed(bk: Any, H: LinearOperator, x: Array) -> LinearOperator:
    """The matrix of a matrix-free symmetric operator: its products with the unit vectors
    (batched with the backend's vmap; one by one where the product cannot be batched)."""
    xp = bk.xp
    eye = xp.eye(x.shape[0], dtype=x.dtype, device=array_api_compat.device(x))
    try:
        rows = bk.vmap(H.matvec)(eye)  # row j is H e_j, column j of the symmetric H
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        # a product the backend cannot batch (e.g. host control flow inside it)
        rows = xp.stack([H.matvec(eye[j, :]) for j in range(x.shape[0])])
    return LinearOperator.from_matrix(0.5 * (rows + xp.matrix_transpose(rows)))


def _newton_step(H: Array, grad: Array) -> Array:
    """The solution d of H d = −grad (a kernel)."""
    xp = array_api_compat.array_namespace(grad)
    return xp.linalg.solve(H, -grad[:, None])[:, 0]
