"""Variable projection: Gauss–Newton on the reduced function Φ(w, f(w)) (Golub & Pereyra 1973,
2003), its Gauss–Newton matrix formed or applied matrix-free, and the result both
:func:`varpro` and :func:`multireg.problems.separable.bcd` report.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import array_api_compat

from multireg import _checks
from multireg.optimize import Objective, Result, Status, gauss_newton
from multireg.optimize._objective import LinearOperator
from multireg.problems.separable.inner import (
    _ROUNDING,
    _eps,
    _solve_linear,
    batched_cg,
    check_tolerances,
)
from multireg.problems.separable.problem import (
    INNER_SOLVERS,
    JACOBIANS,
    SeparableProblem,
    SeparableResult,
    _host,
    assemble_parameters,
    free_parameters,
)
from multireg.problems.separable.reduced import _reduced_jacobian

Array = Any


class _Inner:
    """The inner solution at the last w asked for, warm-starting the next solve (held by one
    call of :func:`varpro`, never shared). Each solve reaches ‖∇_f Φ‖ ≤ min(rtol·‖Aᵀr(w, 0)‖,
    ``cap``), the cap floored at the rounding level (see :func:`varpro`)."""

    def __init__(self, problem, w0, f0, rtol, max_iter, solver="cg"):
        self.problem, self.w0, self.f, self.rtol, self.max_iter = problem, w0, f0, rtol, max_iter
        self.solver, self.key, self.iterations = solver, None, 0
        self.cap, self.eps, self.converged = math.inf, _eps(f0), True

    def target(self, b_norm: float) -> float:
        return min(self.rtol * b_norm, max(self.cap, _ROUNDING * self.eps * b_norm))

    def at(self, x: Array) -> Array:
        """f(w) at the free parameters x (re-solved only when x is a new array)."""
        if self.key is not x:
            w = assemble_parameters(self.problem, self.w0, x)
            s = _solve_linear(
                self.problem,
                w,
                self.f,
                target=self.target,
                max_iter=self.max_iter,
                solver=self.solver,
            )
            self.f, self.key, self.converged = s.f, x, s.converged
            self.iterations += s.iterations
        return self.f


def varpro(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None = None,
    *,
    jacobian: str = "implicit",
    inner_rtol: float = 1e-8,
    inner_max_iter: int = 500,
    inner_solver: str = "cg",
    jacobian_rtol: float | None = None,
    matrix_free: bool = False,
    unrolled_iterations: int = 50,
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
    callback: Callable | None = None,
    verbose: bool = False,
) -> SeparableResult:
    """Variable projection: Gauss–Newton on Φ(w, f(w)) over the free frames' parameters.

    Golub & Pereyra (1973, 2003); Kaufman (1975); O'Leary & Rust (2013). Each evaluation solves
    the inner problem (:func:`solve_linear` with ``inner_solver``, warm-started from the last
    one, to ``inner_rtol``); the Gauss–Newton matrix is J̃ᵀJ̃ with J̃ from
    :func:`reduced_jacobian` (``jacobian``; the batched CG of ``"implicit"`` and ``"kaufman"``
    runs to ``jacobian_rtol``, default ``inner_rtol``, warm-started at the previous outer
    iteration's df/dw: the Jacobian only shapes the step, the gradient is exact), and the
    gradient is the envelope gradient J_wᵀF.

    ``matrix_free=True`` (``"implicit"`` and ``"kaufman"`` only; the unrolled Jacobian is
    always formed, by P forward-mode columns, and the partial one's J_wᵀJ_w is formed
    block-diagonal from its p×p frame blocks, p forward products): J̃ is never formed; the
    Gauss–Newton system is solved by the outer optimiser's PCG (Jacobi-preconditioned with
    diag J_wᵀJ_w, to its relative residual 0.1) with products J̃ᵀJ̃ v that cost one inner
    solve per Jacobian product, J̃ v = J_w v − J_f N⁻¹ M v and J̃ᵀu = J_wᵀu − Mᵀ N⁻¹ J_fᵀ u
    (M = ∂_w ∇_f Φ, by jvp and vjp of the vjp ∇_f Φ; N = J_fᵀJ_f; Kaufman needs only the
    first, as its J̃ v is orthogonal to the range of J_f). Memory is that of one inner solve;
    the cost per outer iteration is (1 or 2)·(PCG steps) inner solves instead of P.

    The outer loop is :func:`multireg.optimize.gauss_newton` (Armijo, FAIR's stopping rules
    with ``tol_j``, ``tol_y``, ``tol_g``, ``max_iter`` and Jstop = Φ(w0, f(w0))); non-convergence
    is reported, never raised.

    Inner tolerance. f(w) is the inner solution to ‖∇_f Φ‖ ≤ ``inner_rtol``·‖Aᵀr(w, 0)‖ (the
    same definition at every w, whatever the warm start: the Armijo test compares the reduced
    function at different w), but never looser than 0.1·``tol_g``(1 + |Φ0|) (nor tighter than
    the rounding level): the envelope gradient J_wᵀF that the outer rules test is the reduced
    gradient only up to a term proportional to ∇_f Φ, so a loose ``inner_rtol`` would let the
    outer loop stop at a point that is not a joint optimum. ``CONVERGED`` therefore means both
    ‖∇_w Φ‖ (the outer STOP3) and ‖∇_f Φ‖ are at most ``tol_g``(1 + |Φ0|); should the inner
    solve stop at ``inner_max_iter`` short of its target at the end, the status is
    ``MAX_ITERATIONS`` with a message that says why.
    """
    if jacobian not in JACOBIANS:
        raise ValueError(f"jacobian must be one of {JACOBIANS}, got {jacobian!r}")
    check_tolerances(inner_rtol, inner_max_iter, "inner_rtol", "inner_max_iter")
    _checks.choice("inner_solver", inner_solver, INNER_SOLVERS)
    jacobian_rtol = inner_rtol if jacobian_rtol is None else jacobian_rtol
    check_tolerances(jacobian_rtol, inner_max_iter, "jacobian_rtol", "inner_max_iter")
    if isinstance(unrolled_iterations, bool) or not isinstance(unrolled_iterations, int):
        raise ValueError(f"unrolled_iterations must be an integer, got {unrolled_iterations!r}")
    if not isinstance(matrix_free, bool):
        raise TypeError(f"matrix_free must be True or False, not {matrix_free!r}")
    for name, value in (("tol_j", tol_j), ("tol_y", tol_y), ("tol_g", tol_g)):
        check_tolerances(value, max_iter, name, "max_iter")
    w0 = problem.check_w(w0)
    f0 = problem.check_f(f0, w0)
    bk, k, data = problem.bk, problem.kernels, problem.data
    inner = _Inner(problem, w0, f0, inner_rtol, inner_max_iter, inner_solver)
    jac_iterations = [0]
    df_dw = [None]  # the last df/dw: the next Jacobian solve's warm start
    timings = {"jacobian": 0.0}

    def value(x):
        w = assemble_parameters(problem, w0, x)
        return k["value"](w, inner.at(x), *data)[0]

    def value_and_grad(x):
        w = assemble_parameters(problem, w0, x)
        f = inner.at(x)
        return k["value"](w, f, *data)[0], free_parameters(problem, k["grad_w"](w, f, *data))

    def hessian(x):
        t = time.perf_counter()
        w = assemble_parameters(problem, w0, x)
        if matrix_free and jacobian in ("implicit", "kaufman"):
            op = _reduced_gauss_newton(
                problem, w, inner.at(x), jacobian, jacobian_rtol, inner_max_iter, jac_iterations
            )

            def matvec(v):
                t = time.perf_counter()
                out = op.matvec(v)
                timings["jacobian"] += time.perf_counter() - t
                return out

            timings["jacobian"] += time.perf_counter() - t
            return LinearOperator(matvec=matvec, diagonal=op.diagonal)
        if jacobian == "partial":
            H = _block_diagonal(problem, k["w_blocks"](w, inner.at(x), *data)[0])
            timings["jacobian"] += time.perf_counter() - t
            return LinearOperator.from_matrix(H)
        J, it, df_dw[0] = _reduced_jacobian(
            problem,
            w,
            inner.at(x),
            jacobian,
            rtol=jacobian_rtol,
            max_iter=inner_max_iter,
            unrolled_iterations=unrolled_iterations,
            f_start=None,
            df_start=df_dw[0],
        )
        jac_iterations[0] += it
        H = _gram(J)
        timings["jacobian"] += time.perf_counter() - t
        return LinearOperator.from_matrix(H)

    objective = Objective(
        bk=bk,
        value=value,
        value_and_grad=value_and_grad,
        hessian=hessian,
        exact_hessian=hessian,
        curvature="gauss-newton",
    )
    x0 = free_parameters(problem, w0)
    # Φ0 = Φ(w0, f(w0)) is the outer rules' Jstop; only then is the inner cap known
    j_stop = problem.value(w0, inner.at(x0))
    if tol_g > 0:
        inner.cap = 0.1 * tol_g * (1 + abs(j_stop))
    res = gauss_newton(
        objective,
        x0,
        max_iter=max_iter,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        j_stop=j_stop,
        callback=callback,
        verbose=verbose,
    )
    w = assemble_parameters(problem, w0, res.x)
    f = inner.at(res.x)
    res = joint_check(problem, w, f, res, tol_g * (1 + abs(j_stop)), inner.max_iter, "varpro")
    return SeparableResult(
        w=w,
        f=f,
        result=res,
        inner_iterations=inner.iterations,
        jacobian_iterations=jac_iterations[0],
        timings={**res.timings, **timings},
    )


def joint_check(
    problem: SeparableProblem, w: Array, f: Array, res: Result, bound: float, max_iter: int, name
) -> Result:
    """``res``, unless it claims convergence while ‖∇_f Φ(w, f)‖ exceeds ``bound`` (the outer
    gradient tolerance tol_g(1 + |Φ0|), floored at the rounding level): then (w, f) is not a
    joint optimum (the inner solve stopped at its iteration cap before its target, so the
    envelope gradient that the outer rules tested is not the reduced one), and the result
    says so with status ``MAX_ITERATIONS``."""
    if res.status is not Status.CONVERGED:
        return res
    xp, k, data = problem.bk.xp, problem.kernels, problem.data
    gf, b = _host(
        problem.bk,
        xp.stack(
            [
                xp.linalg.vector_norm(k["grad_f"](w, f, *data)),
                xp.linalg.vector_norm(k["grad_f"](w, xp.zeros_like(f), *data)),
            ]
        ),
    )
    bound = max(bound, _ROUNDING * _eps(f) * b)
    if gf <= bound:
        return res
    message = (
        f"{name}: not a joint optimum: the outer rules hold, but ‖∇_f Φ‖ = {gf:.3e} > "
        f"{bound:.3e} (the inner solve stopped at inner_max_iter = {max_iter} before its "
        "tolerance)"
    )
    return dataclasses.replace(res, status=Status.MAX_ITERATIONS, message=message)


def _reduced_gauss_newton(
    problem: SeparableProblem,
    w: Array,
    f: Array,
    jacobian: str,
    rtol: float,
    max_iter: int,
    counter: list[int],
) -> LinearOperator:
    """The reduced Gauss–Newton matrix J̃ᵀJ̃ over the free parameters as a matrix-free operator
    (implicit or Kaufman J̃): each product runs inner solves N⁻¹ (CG to ``rtol``) for
    J̃ v = J_w v − J_f N⁻¹ M v and J̃ᵀu = J_wᵀu − Mᵀ N⁻¹ J_fᵀu, with M = ∂_w ∇_f Φ (implicit:
    two solves) or J_fᵀJ_w (Kaufman: J_fᵀJ̃ v = 0, one solve). Its diagonal attribute is
    diag J_wᵀJ_w (a Jacobi preconditioner; J̃ᵀJ̃ ≤ J_wᵀJ_w). CG steps go to ``counter[0]``."""
    xp, k, data = problem.bk.xp, problem.kernels, problem.data
    mixed = k["mixed"] if jacobian == "implicit" else k["mixed_kaufman"]
    zero_w, zero_f = xp.zeros_like(w), xp.zeros_like(f)[None, :]

    def solve(b):
        X, it, _ = batched_cg(problem, w, b[None, :], zero_f, rtol, max_iter)
        counter[0] += it
        return X[0, :]

    def matvec(x):
        v = assemble_parameters(problem, zero_w, x)
        df = -solve(mixed(w, f, v[None, :, :], *data)[0, :])
        Jv = k["columns"](w, f, v[None, :, :], df[None, :], *data)[0, :]
        g = k["w_pullback"](w, f, Jv, *data)
        if jacobian == "implicit":
            g = g - k["mixed_t"](w, f, solve(k["op_t"](w, f, Jv, None, None, *data)), *data)
        # Kaufman: J̃ v = P⊥J_w v is orthogonal to the range of J_f, so J̃ᵀJ̃ v = J_wᵀJ̃ v
        return free_parameters(problem, g)

    H, _ = k["w_blocks"](w, f, *data)
    return LinearOperator(matvec=matvec, diagonal=free_parameters(problem, xp.linalg.diagonal(H)))


def _block_diagonal(problem: SeparableProblem, H: Array) -> Array:
    """The (P, P) matrix with the free frames' (p, p) blocks of H (N, p, p) on its diagonal:
    J_wᵀJ_w from p forward products, instead of the P columns of J_w (whose vmap over P
    fine-grid forward models needs P times the memory of one)."""
    xp = problem.bk.xp
    blocks = xp.stack([H[k, :, :] for k in problem.free])  # (K, p, p)
    K, p = blocks.shape[0], blocks.shape[1]
    eye = xp.eye(K, dtype=H.dtype, device=array_api_compat.device(H))
    return xp.reshape(blocks[:, :, None, :] * eye[:, None, :, None], (K * p, K * p))


def _gram(J: Array) -> Array:
    """JᵀJ."""
    xp = array_api_compat.array_namespace(J)
    return xp.matrix_transpose(J) @ J


def _loop_result(problem, w, f, fun, history, it, nfev, status, message, inner_total, start):
    """The :class:`SeparableResult` of a hand-written outer loop (BCD, LAP, full GN)."""
    total = time.perf_counter() - start
    res = Result(
        x=free_parameters(problem, w),
        fun=fun,
        grad_norm=history[-1].grad_norm,
        iterations=it,
        nfev=nfev,
        status=status,
        message=message,
        history=tuple(history),
        timings={"total": total},
    )
    return SeparableResult(
        w=w,
        f=f,
        result=res,
        inner_iterations=inner_total,
        jacobian_iterations=0,
        timings={"total": total},
    )
