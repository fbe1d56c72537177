"""Limited-memory BFGS with an Armijo line search (FAIR's lBFGS.m)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_compat

from multireg.optimize import _loop, _options
from multireg.optimize._objective import Objective
from multireg.optimize._result import Record, Result, Status
from multireg.optimize.linesearch import armijo

__all__ = ["lbfgs"]

Array = Any
G_TINY = 1e3 * _loop.EPS
"""FAIR's STOP4 threshold (lBFGS.m)."""


class _Memory(NamedTuple):
    """The last ``memory`` pairs as rows of S, Y (oldest first) with ρ = 1 / yᵀs. Rows not yet
    filled are zero with ρ = 0, which makes them no-ops in the two-loop recursion, so the
    arrays keep one shape (and the kernels one compilation)."""

    S: Array
    Y: Array
    rho: Array
    count: int  # pairs stored so far
    gamma: float  # sᵀy / yᵀy of the newest pair: the scale of H0 = γI (N&W eq. 7.20)
    x: Array | None  # the previous iterate and its gradient, to form the next pair
    grad: Array | None


def lbfgs(
    objective: Objective,
    x0: Array,
    *,
    memory: int = 5,
    inverse_h0: Callable[[Array], Array] | None = None,
    tol_j: float = 1e-3,
    tol_y: float = 1e-2,
    tol_g: float = 1e-2,
    max_iter: int = 10,
    x_stop: Array | None = None,
    j_stop: float | None = None,
    j_scale: float | None = None,
    ls_reduction: float = 1e-4,
    ls_max_trials: int = 10,
    callback: Callable[[Record], Any] | None = None,
    verbose: bool = False,
) -> Result:
    """Minimise J by L-BFGS: the two-loop recursion over the last ``memory`` pairs.

    Nocedal & Wright, 2nd ed., §7.2, Alg. 7.4 (two-loop recursion); FAIR's lBFGS.m. The
    pair (s, y) = (x_k − x_{k−1}, ∇J_k − ∇J_{k−1}) is skipped when yᵀs ≤ 0, which the Armijo
    line search (not Wolfe; as FAIR) does not rule out. The initial inverse Hessian is
    ``inverse_h0`` (v ↦ H0⁻¹v, e.g. a solve with the regulariser's Hessian as in FAIR) or else
    γI with γ = sᵀy / yᵀy of the newest pair (N&W eq. 7.20). Without a pair and without
    ``inverse_h0`` the first direction is −∇J/‖∇J‖, a unit steepest-descent step.

    Stopping rules and the other options are those of :func:`gauss_newton`, except that STOP4 is
    ‖∇J‖ ≤ 1e3·eps (FAIR's value for this solver). Needs only ``objective.value_and_grad``.
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
    _options.count("memory", memory, minimum=1)
    _options.optional_callable("inverse_h0", inverse_h0)
    _options.fraction("ls_reduction", ls_reduction)
    _options.count("ls_max_trials", ls_max_trials, minimum=1)
    bk, xp = objective.bk, objective.bk.xp
    pair, push = _loop.compiled(bk, _pair), _loop.compiled(bk, _push)
    first_loop, second_loop = _loop.compiled(bk, _first_loop), _loop.compiled(bk, _second_loop)
    slope_and_norm = _loop.compiled(bk, _loop.slope_and_norm)

    def step(x, fun, grad, grad_norm, mem):
        if mem.x is not None:
            s, y, scalars = pair(x, mem.x, grad, mem.grad)
            sy, yy = _loop.host(bk, scalars)
            if sy > 0 and math.isfinite(sy) and math.isfinite(yy):
                S, Y, rho = push(mem.S, mem.Y, mem.rho, s, y)
                mem = mem._replace(S=S, Y=Y, rho=rho, count=mem.count + 1, gamma=sy / yy)
        if mem.count > 0 or inverse_h0 is not None:
            # Two-loop recursion (N&W Alg. 7.4) for d = −H⁻¹∇J, with H0⁻¹ applied in between.
            q, alphas = first_loop(grad, mem.S, mem.Y, mem.rho)
            r = inverse_h0(q) if inverse_h0 is not None else mem.gamma * q
            d = second_loop(r, mem.S, mem.Y, mem.rho, alphas)
        else:
            d = grad * (-1 / grad_norm)
        slope, d_norm = _loop.host(bk, slope_and_norm(grad, d))
        if not (slope < 0 and math.isfinite(d_norm)):
            d, slope, d_norm = -grad, -(grad_norm**2), grad_norm
        ls = armijo(
            bk, objective.value, x, d, fun, slope, reduction=ls_reduction, max_trials=ls_max_trials
        )
        mem = mem._replace(x=x, grad=grad)
        if not ls.success:
            return _loop.Step(
                x=None,
                nfev=ls.trials,
                failure=Status.LINE_SEARCH_FAILED,
                message=f"Armijo line search found no decrease in {ls.trials} trials",
                predicted_decrease=-slope,
            ), mem
        return _loop.Step(x=ls.x, step_norm=ls.t * d_norm, step_length=ls.t, nfev=ls.trials), mem

    device = array_api_compat.device(x)
    zeros = xp.zeros((memory, x.shape[0]), dtype=x.dtype, device=device)
    empty = _Memory(
        zeros, zeros, xp.zeros((memory,), dtype=x.dtype, device=device), 0, 1.0, None, None
    )
    return _loop.iterate(objective, x, step, empty, settings=settings, g_tiny=G_TINY, name="lbfgs")


# Kernels (compiled once per backend, shape and memory).


def _pair(x: Array, x_prev: Array, grad: Array, grad_prev: Array) -> tuple[Array, Array, Array]:
    """s = x − x_prev, y = ∇J − ∇J_prev and [sᵀy, yᵀy]."""
    xp = array_api_compat.array_namespace(x)
    s, y = x - x_prev, grad - grad_prev
    return s, y, xp.stack([xp.vecdot(s, y), xp.vecdot(y, y)])


def _push(S: Array, Y: Array, rho: Array, s: Array, y: Array) -> tuple[Array, Array, Array]:
    """Drop the oldest pair, append (s, y, 1 / yᵀs)."""
    xp = array_api_compat.array_namespace(S)
    rho_new = xp.reshape(1 / xp.vecdot(s, y), (1,))
    return (
        xp.concat([S[1:, :], s[None, :]]),
        xp.concat([Y[1:, :], y[None, :]]),
        xp.concat([rho[1:], rho_new]),
    )


def _first_loop(q: Array, S: Array, Y: Array, rho: Array) -> tuple[Array, Array]:
    """The first loop of N&W Alg. 7.4, newest pair first; returns q and the αᵢ."""
    xp = array_api_compat.array_namespace(q)
    alphas = []
    for i in reversed(range(S.shape[0])):
        alpha = rho[i] * xp.vecdot(S[i, :], q)
        q = q - alpha * Y[i, :]
        alphas.append(alpha)
    return q, xp.stack(alphas[::-1])


def _second_loop(r: Array, S: Array, Y: Array, rho: Array, alphas: Array) -> Array:
    """The second loop of N&W Alg. 7.4, oldest pair first: H0⁻¹q ↦ the direction −H⁻¹∇J."""
    xp = array_api_compat.array_namespace(r)
    for i in range(S.shape[0]):
        r = r + (alphas[i] - rho[i] * xp.vecdot(Y[i, :], r)) * S[i, :]
    return -r
