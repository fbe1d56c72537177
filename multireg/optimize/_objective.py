"""Objectives: J(x) with its gradient and a curvature model, built from backend derivatives.

An :class:`Objective` bundles what the optimisers call: ``value(x)``, ``value_and_grad(x)``,
``hessian(x)`` (the curvature model: Gauss–Newton or exact) and ``exact_hessian(x)``. Curvatures
are :class:`LinearOperator` objects: a product v ↦ Hv, plus the dense matrix when it was formed
and the diagonal when it is known (for Jacobi preconditioning). One type for both cases spares
every consumer the type switching that FAIR's matrix / struct / cell derivatives need.

Two constructors cover FAIR's objective functions (FAIR book §6; PIRobjFctn.m, NPIRobjFctn.m):

* :func:`least_squares`: J(x) = ψ(r(x)) + P(x) with Gauss–Newton curvature J_rᵀ W J_r + P''.
* :func:`general`: J(x) = f(x) with the exact Hessian or a user-supplied model.

Kernels are wrapped once with ``bk.jit`` (``jax.jit`` traces them once per shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat

__all__ = ["DENSE_MAX", "LinearOperator", "Objective", "general", "least_squares"]

Array = Any

DENSE_MAX = 64
"""With ``dense=None`` curvatures are formed as matrices up to this many parameters."""


@dataclass(frozen=True)
class LinearOperator:
    """A symmetric p×p curvature: ``matvec(v) = H v``.

    ``matrix`` is H itself when it was formed (optimisers then solve with it directly);
    ``diagonal`` is diag(H) when known (optimisers then use it as a Jacobi preconditioner).
    """

    matvec: Callable[[Array], Array]
    diagonal: Array | None = None
    matrix: Array | None = None

    def __call__(self, v: Array) -> Array:
        return self.matvec(v)

    @classmethod
    def from_matrix(cls, H: Array) -> LinearOperator:
        """The operator of a dense symmetric matrix (with its diagonal)."""
        xp = array_api_compat.array_namespace(H)
        return cls(matvec=lambda v: H @ v, diagonal=xp.linalg.diagonal(H), matrix=H)


@dataclass(frozen=True)
class Objective:
    """What the optimisers consume. Build one with :func:`least_squares` or :func:`general`.

    ``hessian(x)`` is the curvature model (Gauss–Newton for least squares), used by
    :func:`gauss_newton` and :func:`trust_region`; ``exact_hessian(x)`` is ∇²J(x), used by
    :func:`newton`. ``curvature`` names the model: ``"gauss-newton"``, ``"exact"`` or ``"user"``.

    ``value_grad_norm(x)``, optional, returns (J, ∇J, [J, ‖∇J‖]) from one compiled program;
    without it the optimisers stack [J, ‖∇J‖] in a program of their own, one more per shape
    (which a new JAX process loads or compiles: issue 13).
    """

    bk: Any
    value: Callable[[Array], Array]
    value_and_grad: Callable[[Array], tuple[Array, Array]]
    hessian: Callable[[Array], LinearOperator]
    exact_hessian: Callable[[Array], LinearOperator]
    curvature: str
    value_grad_norm: Callable[[Array], tuple[Array, Array, Array]] | None = None


def least_squares(
    bk: Any,
    residual: Callable[[Array], Array],
    *,
    weight: float | Array | Callable[[Array], Array] | None = None,
    outer: Callable[[Array], Array] | None = None,
    penalty: Callable[[Array], Array] | None = None,
    penalty_hessian: LinearOperator | Callable[[Array], LinearOperator] | None = None,
    gn_diagonal: Callable[[Array], Array] | None = None,
    dense: bool | None = None,
) -> Objective:
    """A (generalised) least-squares objective with Gauss–Newton curvature.

    J(x) = ψ(r(x)) + P(x), where r = ``residual(x)`` (an array of any shape), ψ = ``outer``
    (default ψ(r) = ½ Σ W r², the weighted sum of squares) and P = ``penalty`` (default 0),
    for instance a regulariser. The gradient is exact (automatic differentiation of J). The
    Gauss–Newton curvature is

        H_GN = J_rᵀ W J_r + P''        (FAIR book §6.3: drᵀ d2ψ dr + d2S)

    with W = ``weight``: a number or an array shaped like r (default 1); with a custom
    ``outer`` it is required and may also be a callable r ↦ W (a distance's ``d2ψ``). For
    ψ = ½ rᵀ W r, H_GN is exactly the Hessian of J without the second-order residual terms
    (no factor 2).

    P'' is ``penalty_hessian`` when given (a :class:`LinearOperator`, e.g. a regulariser's
    stencil operator with its diagonal, or a callable x ↦ LinearOperator); otherwise the exact
    Hessian of ``penalty``. ``gn_diagonal(x)``, when given, returns diag(J_rᵀ W J_r) so that the
    matrix-free operator has a diagonal (for Jacobi preconditioning) whenever P'' has one.

    ``dense=True`` forms the p×p matrices (``bk.jacobian`` / ``bk.hessian``), ``False`` gives
    matrix-free operators (v ↦ J_rᵀ W J_r v through ``bk.jvp``/``bk.vjp``, and ``bk.hvp``),
    ``None`` chooses dense up to :data:`DENSE_MAX` parameters.
    """
    _check_backend(bk)
    _check_callable("residual", residual, required=True)
    _check_callable("outer", outer)
    _check_callable("penalty", penalty)
    _check_callable("gn_diagonal", gn_diagonal)
    _check_dense(dense)
    if penalty_hessian is not None and penalty is None:
        raise ValueError("penalty_hessian is given but penalty is not")
    if penalty_hessian is not None and not (
        isinstance(penalty_hessian, LinearOperator) or callable(penalty_hessian)
    ):
        raise TypeError(
            "penalty_hessian must be a LinearOperator or a callable x -> LinearOperator, "
            f"not {type(penalty_hessian).__name__}"
        )
    if outer is not None and weight is None:
        raise ValueError("weight is required with outer: pass the Gauss–Newton weight ψ''(r)")
    if outer is None and callable(weight):
        raise ValueError(
            "a callable weight needs outer: without it J = ½ Σ W r² must have a fixed W"
        )
    if weight is None:
        weight = 1.0
    elif isinstance(weight, bool) or not (
        isinstance(weight, (int, float)) or callable(weight) or hasattr(weight, "shape")
    ):
        raise TypeError(
            f"weight must be a number, an array or a callable r -> W, not {type(weight).__name__}"
        )
    if hasattr(weight, "shape"):
        weight = bk.asarray(weight)
    xp = bk.xp

    if outer is None:

        def data(x):
            r = residual(x)
            return 0.5 * xp.sum(weight * r * r)
    else:

        def data(x):
            return outer(residual(x))

    fun = data if penalty is None else (lambda x: data(x) + penalty(x))

    def gn_matvec(x, v, W):
        _, jv = bk.jvp(residual, x, v)
        _, pullback = bk.vjp(residual, x)
        return pullback(W * jv)

    def gn_matrix(x, W):
        jac = bk.jacobian(residual)(x)  # shape r.shape + (p,)
        w = xp.reshape(W * xp.ones_like(jac[..., 0]), (-1, 1))
        jac = xp.reshape(jac, (-1, x.shape[0]))
        return jac.T @ (w * jac)

    gn_matvec, gn_matrix, residual_jit = bk.jit(gn_matvec), bk.jit(gn_matrix), bk.jit(residual)
    data_exact = _exact_curvature(bk, data, dense)
    if penalty is None:
        penalty_curvature = None
    elif penalty_hessian is None:
        penalty_curvature = _exact_curvature(bk, penalty, dense)
    elif isinstance(penalty_hessian, LinearOperator):
        penalty_curvature = lambda x: penalty_hessian  # noqa: E731
    else:
        penalty_curvature = penalty_hessian

    def hessian(x):
        W = weight(residual_jit(x)) if callable(weight) else weight
        if _use_dense(dense, x):
            H = LinearOperator.from_matrix(gn_matrix(x, W))
        else:
            diagonal = gn_diagonal(x) if gn_diagonal is not None else None
            H = LinearOperator(matvec=lambda v: gn_matvec(x, v, W), diagonal=diagonal)
        return _plus(bk, x, H, penalty_curvature)

    def exact_hessian(x):
        return _plus(bk, x, data_exact(x), penalty_curvature)

    return Objective(
        bk=bk,
        value=bk.jit(fun),
        value_and_grad=bk.jit(bk.value_and_grad(fun)),
        hessian=hessian,
        exact_hessian=exact_hessian,
        curvature="gauss-newton",
    )


def general(
    bk: Any,
    fun: Callable[[Array], Array],
    *,
    gauss_newton: Callable[[Array], LinearOperator | Array] | None = None,
    dense: bool | None = None,
) -> Objective:
    """A scalar objective J(x) = ``fun(x)`` with its exact Hessian as curvature model.

    ``gauss_newton(x)``, when given, replaces the model: it returns a :class:`LinearOperator`
    or a dense p×p matrix (the exact Hessian stays available to :func:`newton`). ``dense``
    selects how the exact Hessian is formed: ``bk.hessian`` (True), ``bk.hvp`` (False), or
    dense up to :data:`DENSE_MAX` parameters (None).
    """
    _check_backend(bk)
    _check_callable("fun", fun, required=True)
    _check_callable("gauss_newton", gauss_newton)
    _check_dense(dense)
    exact = _exact_curvature(bk, fun, dense)
    if gauss_newton is None:
        model, curvature = exact, "exact"
    else:
        model, curvature = (lambda x: _as_operator(gauss_newton(x))), "user"
    return Objective(
        bk=bk,
        value=bk.jit(fun),
        value_and_grad=bk.jit(bk.value_and_grad(fun)),
        hessian=model,
        exact_hessian=exact,
        curvature=curvature,
    )


# --------------------------------------------------------------------------------- helpers


def _exact_curvature(bk: Any, f: Callable, dense: bool | None) -> Callable[[Array], LinearOperator]:
    """x ↦ ∇²f(x): the matrix from ``bk.hessian``, or the operator v ↦ ``bk.hvp(f, x, v)``."""
    matrix = bk.jit(bk.hessian(f))
    hvp = bk.jit(lambda x, v: bk.hvp(f, x, v))

    def curvature(x):
        if _use_dense(dense, x):
            return LinearOperator.from_matrix(matrix(x))
        return LinearOperator(matvec=lambda v: hvp(x, v))

    return curvature


def _plus(
    bk: Any,
    x: Array,
    H: LinearOperator,
    penalty_curvature: Callable[[Array], LinearOperator] | None,
) -> LinearOperator:
    """H + P''(x); a matrix-free P'' is formed column by column when H is dense."""
    if penalty_curvature is None:
        return H
    P = penalty_curvature(x)
    if H.matrix is not None:
        return LinearOperator.from_matrix(H.matrix + _matrix(bk, P, x))
    diagonal = None if H.diagonal is None or P.diagonal is None else H.diagonal + P.diagonal
    return LinearOperator(matvec=lambda v: H.matvec(v) + P.matvec(v), diagonal=diagonal)


def _matrix(bk: Any, op: LinearOperator, x: Array) -> Array:
    """The matrix of ``op``: its own, or its columns op(e_i) (few parameters only)."""
    if op.matrix is not None:
        return op.matrix
    xp = bk.xp
    eye = xp.eye(x.shape[0], dtype=x.dtype, device=array_api_compat.device(x))
    return xp.stack([op.matvec(eye[:, i]) for i in range(x.shape[0])], axis=1)


def _as_operator(H: LinearOperator | Array) -> LinearOperator:
    if isinstance(H, LinearOperator):
        return H
    if getattr(H, "ndim", None) != 2:
        raise TypeError(
            "gauss_newton(x) must return a LinearOperator or a p×p matrix, "
            f"not {type(H).__name__} with shape {getattr(H, 'shape', None)}"
        )
    return LinearOperator.from_matrix(H)


def _use_dense(dense: bool | None, x: Array) -> bool:
    return dense if dense is not None else x.shape[0] <= DENSE_MAX


def _check_backend(bk: Any) -> None:
    if not getattr(bk, "differentiable", False):
        name = getattr(bk, "name", type(bk).__name__)
        raise TypeError(f"bk must be a differentiating backend (torch or jax), not {name!r}")


def _check_callable(name: str, f: Any, *, required: bool = False) -> None:
    if (f is not None or required) and not callable(f):
        raise TypeError(f"{name} must be callable, not {type(f).__name__}")


def _check_dense(dense: Any) -> None:
    if dense is not None and not isinstance(dense, bool):
        raise TypeError(f"dense must be True, False or None, not {dense!r}")
