"""Conjugate gradients: preconditioned CG for A x = b, and Steihaug's truncated CG.

Both run a plain Python loop over the backend's arrays and read one small batch of host floats
per iteration (the step's curvature and the residual norm) for the stopping tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat

from multireg.optimize import _options
from multireg.optimize._loop import axpy, compiled, host
from multireg.optimize._objective import LinearOperator

__all__ = ["CGResult", "SteihaugResult", "cg", "descent_direction", "steihaug_cg"]

Array = Any


@dataclass(frozen=True)
class CGResult:
    """``x`` approximates A⁻¹b. ``residual_norm`` is ‖b − A x‖ / ‖b‖ (as updated by CG).
    ``negative_curvature`` says CG stopped at a direction p with pᵀAp ≤ 0 (A not positive
    definite); x is then the last iterate before it (0 if it was the first)."""

    x: Array
    iterations: int
    residual_norm: float
    converged: bool
    negative_curvature: bool


@dataclass(frozen=True)
class SteihaugResult:
    """``p`` approximately minimises gᵀp + ½ pᵀAp over ‖p‖ ≤ radius. ``hit_boundary`` says
    ‖p‖ = radius (the step was cut by the region or followed negative curvature to it)."""

    p: Array
    iterations: int
    hit_boundary: bool
    negative_curvature: bool
    converged: bool


def cg(
    bk: Any,
    A: LinearOperator | Array | Callable[[Array], Array],
    b: Array,
    *,
    rtol: float = 1e-5,
    max_iter: int | None = None,
    preconditioner: str | Callable[[Array], Array] | None = "jacobi",
) -> CGResult:
    """Preconditioned conjugate gradients from x = 0 (Nocedal & Wright, 2nd ed., Alg. 5.3).

    ``A`` is a symmetric positive (semi)definite :class:`LinearOperator`, p×p matrix, or a
    callable v ↦ Av. Stops when ‖b − A x‖ ≤ ``rtol``·‖b‖, after ``max_iter`` iterations (default
    10·p), or at a direction of non-positive curvature (as Newton–CG needs, N&W Alg. 7.1).
    ``preconditioner``: ``"jacobi"`` (divide by diag(A) when the operator knows it; entries
    ≤ 0 are left unscaled), ``None``, or a callable v ↦ M⁻¹v.
    """
    return _pcg(bk, A, b, rtol=rtol, max_iter=max_iter, preconditioner=preconditioner)


def descent_direction(
    bk: Any, A: LinearOperator, g: Array, *, rtol: float, max_iter: int
) -> CGResult:
    """:func:`cg` for A d = −g with the Jacobi preconditioner, without forming −g apart: the
    sign and the preconditioner's set-up are part of CG's first kernel (each separate
    operation would be one more compiled program per shape, which a new JAX process loads)."""
    return _pcg(bk, A, g, rtol=rtol, max_iter=max_iter, preconditioner="jacobi", negate=True)


def _pcg(
    bk: Any,
    A: Any,
    b: Array,
    *,
    rtol: float,
    max_iter: int | None,
    preconditioner: Any,
    negate: bool = False,
) -> CGResult:
    op = _operator(A)
    _check_vector("b", b)
    _options.nonnegative("rtol", rtol)
    max_iter = 10 * b.shape[0] if max_iter is None else _options.count("max_iter", max_iter)
    update = compiled(bk, _cg_update)
    jacobi = _check_preconditioner(preconditioner) == "jacobi" and op.diagonal is not None
    if jacobi:  # z = b / diag(A): the preconditioner's set-up and the sign in the first kernel
        start = _cg_start_jacobi_negated if negate else _cg_start_jacobi
        x, r, p, rz, bb, inverse = compiled(bk, start)(b, op.diagonal)
        dir_kernel = compiled(bk, _cg_direction_jacobi)

        def direction(r, p, rz):
            return dir_kernel(r, p, rz, inverse)

    else:
        apply_m = _preconditioner(preconditioner)
        if apply_m is None:
            x, r, p, rz, bb = compiled(bk, _cg_start_negated if negate else _cg_start)(b)
        else:
            r = compiled(bk, _negative)(b) if negate else b
            p = apply_m(r)
            x, rz, bb = compiled(bk, _cg_start_preconditioned)(r, p)
        dir_kernel = compiled(bk, _cg_direction)

        def direction(r, p, rz):
            return dir_kernel(r, r if apply_m is None else apply_m(r), p, rz)

    b_norm = r_norm = math.sqrt(host(bk, bb)[0])
    if b_norm == 0:
        return CGResult(
            x=x, iterations=0, residual_norm=0.0, converged=True, negative_curvature=False
        )
    for k in range(max_iter):
        x_new, r_new, scalars = update(x, r, p, op.matvec(p), rz)
        pAp, r_new_norm = host(bk, scalars)
        if not (pAp > 0 and math.isfinite(r_new_norm)):
            return CGResult(
                x=x,
                iterations=k,
                residual_norm=r_norm / b_norm,
                converged=False,
                negative_curvature=not pAp > 0,
            )
        x, r, r_norm = x_new, r_new, r_new_norm
        if r_norm <= rtol * b_norm:
            return CGResult(
                x=x,
                iterations=k + 1,
                residual_norm=r_norm / b_norm,
                converged=True,
                negative_curvature=False,
            )
        p, rz = direction(r, p, rz)
    return CGResult(
        x=x,
        iterations=max_iter,
        residual_norm=r_norm / b_norm,
        converged=False,
        negative_curvature=False,
    )


def steihaug_cg(
    bk: Any,
    A: LinearOperator | Array | Callable[[Array], Array],
    g: Array,
    radius: float,
    *,
    rtol: float = 0.1,
    max_iter: int = 10,
) -> SteihaugResult:
    """Steihaug's truncated CG for the trust-region subproblem (Steihaug 1983; N&W Alg. 7.2).

    Approximately minimises m(p) = gᵀp + ½ pᵀAp subject to ‖p‖ ≤ ``radius``: CG on A p = −g from
    p = 0, stopped when ‖A p + g‖ ≤ ``rtol``·‖g‖, after ``max_iter`` iterations, or, at a
    direction of non-positive curvature or one leaving the region, by following that direction
    to the boundary. FAIR's TrustRegion.m defaults: rtol 0.1, at most 10 iterations.
    Unpreconditioned (the region is a Euclidean ball).
    """
    op = _operator(A)
    _check_vector("g", g)
    _options.positive("radius", radius)
    _options.nonnegative("rtol", rtol)
    _options.count("max_iter", max_iter)
    update, direction = compiled(bk, _steihaug_update), compiled(bk, _steihaug_direction)

    z, d, rr = compiled(bk, _steihaug_start)(g)
    g_norm = math.sqrt(host(bk, rr)[0])
    if g_norm == 0:
        return SteihaugResult(
            p=z, iterations=0, hit_boundary=False, negative_curvature=False, converged=True
        )
    r = g
    for j in range(max_iter):
        z_new, r_new, rr_new, scalars = update(z, r, d, op.matvec(d), rr)
        dAd, zz_new, rr_new_h, zd, dd, zz = host(bk, scalars)
        if not dAd > 0 or not math.sqrt(zz_new) < radius:
            return SteihaugResult(
                p=compiled(bk, axpy)(z, _to_boundary(zz, zd, dd, radius), d),
                iterations=j + 1,
                hit_boundary=True,
                negative_curvature=not dAd > 0,
                converged=False,
            )
        z, r = z_new, r_new
        if math.sqrt(rr_new_h) <= rtol * g_norm:
            return SteihaugResult(
                p=z, iterations=j + 1, hit_boundary=False, negative_curvature=False, converged=True
            )
        d, rr = direction(r, d, rr_new, rr), rr_new
    return SteihaugResult(
        p=z, iterations=max_iter, hit_boundary=False, negative_curvature=False, converged=False
    )


# Kernels: the per-iteration arithmetic, compiled once per backend (see _loop.compiled).


def _cg_update(x, r, p, Ap, rz):
    """CG step along p: x + αp, r − αAp with α = rᵀz / pᵀAp, and [pᵀAp, ‖r − αAp‖]."""
    xp = array_api_compat.array_namespace(x)
    pAp = xp.vecdot(p, Ap)
    alpha = rz / pAp
    r_new = r - alpha * Ap
    return x + alpha * p, r_new, xp.stack([pAp, xp.linalg.vector_norm(r_new)])


def _cg_start_preconditioned(b, z):
    """x = 0, rᵀz and ‖b‖² for r = b."""
    xp = array_api_compat.array_namespace(b)
    return xp.zeros_like(b), xp.vecdot(b, z), xp.vecdot(b, b)


def _cg_start(b):
    """x = 0, r = p = b, rᵀr twice (unpreconditioned)."""
    xp = array_api_compat.array_namespace(b)
    bb = xp.vecdot(b, b)
    return xp.zeros_like(b), b, b, bb, bb


def _cg_start_negated(b):
    return _cg_start(-b)


def _cg_start_jacobi(b, diagonal):
    """x = 0, r = b, p = z = M⁻¹b with M = diag(A) (Jacobi), rᵀz, ‖b‖² and M⁻¹."""
    xp = array_api_compat.array_namespace(b)
    inverse = _jacobi(diagonal)
    z = inverse * b
    return xp.zeros_like(b), b, z, xp.vecdot(b, z), xp.vecdot(b, b), inverse


def _cg_start_jacobi_negated(b, diagonal):
    return _cg_start_jacobi(-b, diagonal)


def _cg_direction(r, z, p, rz):
    """The next direction z + β p with β = rᵀz / rz_old, and rᵀz."""
    rz_new = array_api_compat.array_namespace(r).vecdot(r, z)
    return z + (rz_new / rz) * p, rz_new


def _cg_direction_jacobi(r, p, rz, inverse):
    """:func:`_cg_direction` with z = M⁻¹r (Jacobi) in the same kernel."""
    return _cg_direction(r, inverse * r, p, rz)


def _negative(b):
    return -b


def _steihaug_update(z, r, d, Ad, rr):
    """CG step along d for B p = −g (r = B z + g): z + αd, r + αBd, ‖r_new‖², and the
    scalars [dᵀBd, ‖z_new‖², ‖r_new‖², zᵀd, dᵀd, zᵀz] for the tests."""
    xp = array_api_compat.array_namespace(z)
    dAd = xp.vecdot(d, Ad)
    alpha = rr / dAd
    z_new, r_new = z + alpha * d, r + alpha * Ad
    rr_new = xp.vecdot(r_new, r_new)
    scalars = xp.stack(
        [dAd, xp.vecdot(z_new, z_new), rr_new, xp.vecdot(z, d), xp.vecdot(d, d), xp.vecdot(z, z)]
    )
    return z_new, r_new, rr_new, scalars


def _steihaug_direction(r, d, rr_new, rr):
    return -r + (rr_new / rr) * d


def _steihaug_start(g):
    """z = 0, d = −g and ‖g‖²."""
    xp = array_api_compat.array_namespace(g)
    return xp.zeros_like(g), -g, xp.vecdot(g, g)


def _jacobi(diagonal):
    """1 / diag where diag > 0, else 1."""
    xp = array_api_compat.array_namespace(diagonal)
    positive = diagonal > 0
    return xp.where(positive, 1 / xp.where(positive, diagonal, 1), 1)


def _to_boundary(zz: float, zd: float, dd: float, radius: float) -> float:
    """The root τ ≥ 0 of ‖z + τ d‖ = radius for ‖z‖ < radius (cancellation-free form)."""
    c = zz - radius * radius
    root = math.sqrt(max(zd * zd - dd * c, 0.0))
    return (root - zd) / dd if zd <= 0 else -c / (zd + root)


def _operator(A: Any) -> LinearOperator:
    if isinstance(A, LinearOperator):
        return A
    if getattr(A, "ndim", None) == 2:
        return LinearOperator.from_matrix(A)
    if callable(A):
        return LinearOperator(matvec=A)
    raise TypeError(
        f"A must be a LinearOperator, a square matrix or a callable v -> Av, not {type(A).__name__}"
    )


def _check_preconditioner(preconditioner: Any) -> Any:
    if isinstance(preconditioner, str):
        _options.choice("preconditioner", preconditioner, ("jacobi",))
    elif preconditioner is not None and not callable(preconditioner):
        raise TypeError(
            "preconditioner must be 'jacobi', None or a callable, "
            f"not {type(preconditioner).__name__}"
        )
    return preconditioner


def _preconditioner(preconditioner: Any) -> Callable[[Array], Array] | None:
    """The callable v ↦ M⁻¹v, or None for none ('jacobi' without a known diagonal)."""
    return preconditioner if callable(preconditioner) else None


def _check_vector(name: str, v: Any) -> None:
    if getattr(v, "ndim", None) != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {getattr(v, 'shape', None)}")
