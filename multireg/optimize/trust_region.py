"""Trust-region Newton–CG with Steihaug's truncated CG (FAIR's TrustRegion.m)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import array_api_compat

from multireg.optimize import _loop, _options
from multireg.optimize._objective import Objective
from multireg.optimize._result import Record, Result, Status
from multireg.optimize.cg import steihaug_cg

__all__ = ["trust_region"]

Array = Any
G_TINY = 1e3 * _loop.EPS
"""FAIR's STOP4 threshold (TrustRegion.m)."""


def trust_region(
    objective: Objective,
    x0: Array,
    *,
    curvature: str = "model",
    radius: float | None = None,
    tol_j: float = 1e-3,
    tol_y: float = 1e-2,
    tol_g: float = 1e-2,
    max_iter: int = 10,
    x_stop: Array | None = None,
    j_stop: float | None = None,
    j_scale: float | None = None,
    cg_rtol: float = 0.1,
    cg_max_iter: int = 10,
    max_trials: int = 10,
    callback: Callable[[Record], Any] | None = None,
    verbose: bool = False,
) -> Result:
    """Minimise J with a trust-region method whose steps come from Steihaug's truncated CG.

    FAIR's TrustRegion.m; Nocedal & Wright, 2nd ed., Alg. 4.1 with Alg. 7.2 (Steihaug 1983).
    Each iteration minimises the model m(s) = ∇Jᵀs + ½ sᵀHs over ‖s‖ ≤ radius (H: the objective's
    ``hessian`` for ``curvature="model"``, ``exact_hessian`` for ``"exact"``; CG to relative
    residual ``cg_rtol`` within ``cg_max_iter`` iterations, FAIR's 0.1 and 10) and computes
    ρ = (J(x) − J(x + s)) / (m(0) − m(s)). The step is accepted if ρ > 0.25, and then the radius
    doubles if ρ > 0.75 and s reached the boundary; otherwise the radius becomes
    0.5·min(radius, ‖s‖) and the step is recomputed, at most ``max_trials`` times (then status
    ``STEP_TOO_SMALL``, keeping the last iterate). The initial ``radius`` defaults to
    max(‖x0‖, 1) (FAIR); there is no upper bound on it.

    Stopping rules and the other options are those of :func:`gauss_newton`, except that STOP4 is
    ‖∇J‖ ≤ 1e3·eps (FAIR's value for this solver). In the history, ``step_length`` is the radius
    within which the accepted step was computed.
    ``j_scale``: as for :func:`gauss_newton` (relative STOP4, round-off convergence).
    """
    x, settings = _loop.prepare(
        objective,
        x0,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        max_iter=max_iter,
        x_stop=x_stop,
        j_stop=j_stop,
        j_scale=j_scale,
        callback=callback,
        verbose=verbose,
    )
    _options.choice("curvature", curvature, ("model", "exact"))
    if radius is not None:
        _options.positive("radius", radius)
    _options.nonnegative("cg_rtol", cg_rtol)
    _options.count("cg_max_iter", cg_max_iter, minimum=1)
    _options.count("max_trials", max_trials, minimum=1)
    bk = objective.bk
    axpy, summary = _loop.compiled(bk, _loop.axpy), _loop.compiled(bk, _trial_summary)
    hessian = objective.hessian if curvature == "model" else objective.exact_hessian
    if radius is None:
        (x_norm,) = _loop.host(bk, _loop.compiled(bk, _loop.norm)(x))
        radius = max(x_norm, 1.0)

    def step(x, fun, grad, grad_norm, radius):
        H = hessian(x)
        cg_iterations = 0
        for trial in range(1, max_trials + 1):
            sub = steihaug_cg(bk, H, grad, radius, rtol=cg_rtol, max_iter=cg_max_iter)
            cg_iterations += sub.iterations
            x_trial = axpy(x, 1.0, sub.p)
            scalars = summary(grad, sub.p, H.matvec(sub.p), objective.value(x_trial))
            reduction, s_norm, fun_trial = _loop.host(bk, scalars)
            rho = (fun - fun_trial) / reduction if reduction > 0 else -math.inf
            if rho > 0.25:
                grown = 2 * radius if rho > 0.75 and sub.hit_boundary else radius
                return _loop.Step(
                    x=x_trial,
                    step_norm=s_norm,
                    step_length=radius,
                    cg_iterations=cg_iterations,
                    nfev=trial,
                ), grown
            radius = 0.5 * min(radius, s_norm)
            if not radius > 0:
                break
        return _loop.Step(
            x=None,
            cg_iterations=cg_iterations,
            nfev=trial,
            failure=Status.STEP_TOO_SMALL,
            message=f"trust region rejected {trial} steps",
            predicted_decrease=reduction,
        ), radius

    return _loop.iterate(
        objective, x, step, radius, settings=settings, g_tiny=G_TINY, name="trust_region"
    )


def _trial_summary(grad: Array, s: Array, Hs: Array, fun_trial: Array) -> Array:
    """[m(0) − m(s), ‖s‖, J(x + s)] with m(s) = ∇Jᵀs + ½ sᵀHs (a kernel)."""
    xp = array_api_compat.array_namespace(grad)
    reduction = -(xp.vecdot(grad, s) + 0.5 * xp.vecdot(s, Hs))
    return xp.stack([reduction, xp.linalg.vector_norm(s), fun_trial])
