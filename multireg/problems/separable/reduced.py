"""The reduced (VarPro) Jacobian J̃ = ∂F/∂w + ∂F/∂f · df/dw in its variants (implicit, unrolled,
Kaufman, partial; Golub & Pereyra 1973, Kaufman 1975) and the batched per-frame Gauss–Newton
step in w (p×p blocks, batched Cholesky).
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from multireg.problems.separable.inner import batched_cg
from multireg.problems.separable.problem import JACOBIANS, SeparableProblem

Array = Any


# ---------------------------------------------------------------------- reduced Jacobian


def _directions(problem: SeparableProblem, like: Array) -> Array:
    """Unit tangents of the free parameters, shape (P, N, p) with P = (#free frames)·p."""
    N, p = problem.n_frames, problem.n_params
    E = np.zeros((len(problem.free) * p, N, p))
    for i, (k, j) in enumerate((k, j) for k in problem.free for j in range(p)):
        E[i, k, j] = 1.0
    return problem.bk.asarray(E, dtype=like.dtype, device=array_api_compat.device(like))


def reduced_jacobian(
    problem: SeparableProblem,
    w: Array,
    f: Array,
    jacobian: str = "implicit",
    *,
    rtol: float = 1e-8,
    max_iter: int = 500,
    unrolled_iterations: int = 50,
    f_start: Array | None = None,
    df_start: Array | None = None,
) -> tuple[Array, int]:
    """The reduced Jacobian J̃ of w ↦ F(w, f(w)) over the free parameters, shape (M, P).

    ``f`` must be the inner solution at ``w``. ``jacobian``: ``"implicit"`` (df/dw from the
    normal equations, solved by CG to ``rtol``, warm-started at ``df_start`` (P, n_f) when
    given, e.g. the previous outer iteration's df/dw), ``"kaufman"``, ``"partial"``, or
    ``"unrolled"`` (forward AD through ``unrolled_iterations`` CG steps from the fixed
    ``f_start``, default 0, as Watson, Cherry & Lang do; F is then evaluated at the unrolled
    iterate, which needs enough steps to reach the inner tolerance). Returns J̃ and the CG
    iterations spent (the implicit solve for all P right-hand sides runs as one batched CG).
    Columns follow the free frames in order, p parameters each.
    """
    J, iterations, _ = _reduced_jacobian(
        problem,
        w,
        f,
        jacobian,
        rtol=rtol,
        max_iter=max_iter,
        unrolled_iterations=unrolled_iterations,
        f_start=f_start,
        df_start=df_start,
    )
    return J, iterations


def _reduced_jacobian(
    problem, w, f, jacobian, *, rtol, max_iter, unrolled_iterations, f_start, df_start
):
    """:func:`reduced_jacobian`, also returning df/dw (P, n_f) for the next warm start."""
    if jacobian not in JACOBIANS:
        raise ValueError(f"jacobian must be one of {JACOBIANS}, got {jacobian!r}")
    w = problem.check_w(w)
    f = problem.check_f(f, w)
    xp, k, data = problem.bk.xp, problem.kernels, problem.data
    V = _directions(problem, w)
    iterations = 0
    if jacobian == "unrolled":
        # A fixed start away from the solution: CG started at the solution has r ≈ 0, so its
        # directions are rounding noise and so are their derivatives.
        start = problem.check_f(f_start, w)
        z, Z = k["unrolled_start"](w, start, V, *data)
        for _ in range(unrolled_iterations):
            z, Z = k["unrolled_step"](z, Z, w, *data)
        J = xp.matrix_transpose(k["unrolled_columns"](z, Z, w, *data))
        return J, unrolled_iterations, None
    if jacobian == "partial":
        DF = xp.zeros((V.shape[0], f.shape[0]), dtype=f.dtype, device=array_api_compat.device(f))
    else:
        M = (k["mixed"] if jacobian == "implicit" else k["mixed_kaufman"])(w, f, V, *data)
        if df_start is None:
            df_start = xp.zeros_like(M)
        elif tuple(df_start.shape) != tuple(M.shape):
            raise ValueError(f"df_start must have shape {tuple(M.shape)}, got {df_start.shape}")
        DF, iterations, _ = batched_cg(problem, w, -M, df_start, rtol, max_iter)
    return xp.matrix_transpose(k["columns"](w, f, V, DF, *data)), iterations, DF


# ---------------------------------------------------------------------------- batched GN


def cholesky_solve(H: Array, g: Array) -> Array:
    """x with H[k] x[k] = g[k] for every block k: H (K, p, p) SPD, g (K, p), by a batched
    Cholesky factorisation and forward / back substitution over the p (few) rows."""
    xp = array_api_compat.array_namespace(H)
    L = xp.linalg.cholesky(H)
    p = H.shape[-1]
    y = []
    for i in range(p):
        s = g[:, i] - sum((L[:, i, j] * y[j] for j in range(i)), start=xp.zeros_like(g[:, i]))
        y.append(s / L[:, i, i])
    x = [None] * p
    for i in reversed(range(p)):
        s = y[i] - sum((L[:, j, i] * x[j] for j in range(i + 1, p)), start=xp.zeros_like(g[:, i]))
        x[i] = s / L[:, i, i]
    return xp.stack(x, axis=1)


def _block_step(problem: SeparableProblem, w: Array, f: Array, damping: float) -> Array:
    """The Gauss–Newton step in w at frozen f, solved frame by frame (fixed frames: 0)."""
    xp = problem.bk.xp
    H, g = problem.kernels["w_blocks"](w, f, *problem.data)
    p = problem.n_params
    eye = xp.eye(p, dtype=w.dtype, device=array_api_compat.device(w))
    scale = xp.max(xp.abs(xp.linalg.diagonal(H)), axis=1)
    H = H + (damping * scale + 1e-300)[:, None, None] * eye
    mask = xp.asarray(
        [k in problem.fixed for k in range(problem.n_frames)],
        dtype=xp.bool,
        device=array_api_compat.device(w),
    )
    H = xp.where(mask[:, None, None], eye, H)
    g = xp.where(mask[:, None], 0.0, g)
    return -cholesky_solve(H, g)
