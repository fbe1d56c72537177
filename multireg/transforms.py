"""Parametric transformations y(w, x): translation, rigid, affine and cubic B-spline (FFD).

A transformation maps reference points ``x`` (shape ``(n, d)``, physical units) to template
points ``y(w, x)`` (shape ``(n, d)``) given a parameter vector ``w`` (shape ``(n_params,)``).
Parameter layouts are FAIR's, so that parameters compare number by number with FAIR
(DESIGN.md §4); the B-spline coefficients are the one exception (C order instead of FAIR's
Fortran order, converted by :meth:`BSpline.to_fair` / :meth:`BSpline.from_fair`).

=============  =====  ==========================================  ==========================
name           dim    w                                           identity
=============  =====  ==========================================  ==========================
translation    1–3    ``[t1, ..., td]``                           zeros
rigid          2, 3   2D ``[φ, t1, t2]``; 3D ``[w1, w2, w3, t]``  zeros
affine         1–3    ``[A(1,:) b1, ..., A(d,:) bd]``             ``A = I``, ``b = 0``
bspline        2, 3   ``[W_1.ravel(), ..., W_d.ravel()]``         zeros
=============  =====  ==========================================  ==========================

Translation, rigid and affine maps are ``y = A x + b``; :meth:`MatrixTransform.matrix` returns
``(A, b)``. Every transformation is a frozen dataclass (hashable, so it can be a static argument
of ``jax.jit``); calling it checks the shapes and dtypes of ``w`` and ``x`` (static properties,
so the checks also hold under tracing) and then evaluates a few vectorised array-API operations.
Derivatives with respect to ``w`` and ``x`` come from the backend's automatic differentiation.

Reference: J. Modersitzki, *FAIR: Flexible Algorithms for Image Registration*, SIAM 2009, ch. 3
(parametric transformations; FAIR's ``translation2D/3D``, ``rigid2D/3D``, ``affine2D/3D``,
``splineTransformation2D/3Dsparse``).
"""

from __future__ import annotations

import abc
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import array_api_compat

from multireg import _bspline
from multireg.grid import Domain

__all__ = [
    "TRANSFORMS",
    "Affine",
    "BSpline",
    "MatrixTransform",
    "Rigid",
    "Transform",
    "Translation",
    "transform",
]


# ---------------------------------------------------------------------------------- checks


def _check_dim(dim: Any, allowed: tuple[int, ...], name: str) -> int:
    if isinstance(dim, bool):
        raise TypeError("dim must be an integer, not bool")
    try:
        dim = operator.index(dim)
    except TypeError:
        raise TypeError(f"dim must be an integer, not {type(dim).__name__}") from None
    if dim not in allowed:
        raise ValueError(f"dim must be one of {allowed} for {name}, got {dim}")
    return dim


def _check_center(center: Any, dim: int) -> tuple[float, ...] | None:
    if center is None:
        return None
    try:
        c = tuple(float(v) for v in center)
    except (TypeError, ValueError):
        raise TypeError(f"center must be a sequence of {dim} numbers, got {center!r}") from None
    if len(c) != dim:
        raise ValueError(f"center must have dim = {dim} entries, got {len(c)}")
    if not all(math.isfinite(v) for v in c):
        raise ValueError(f"center must be finite, got {c}")
    return c


def _integers(values: Any, name: str) -> tuple[int, ...]:
    message = f"{name} must be a sequence of integers, got {values!r}"
    if isinstance(values, (str, bytes)):
        raise TypeError(message)
    try:
        items = tuple(values)
    except TypeError:
        raise TypeError(message) from None
    if any(isinstance(v, bool) for v in items):
        raise TypeError(message)
    try:
        return tuple(operator.index(v) for v in items)
    except TypeError:
        raise TypeError(message) from None


def _check_array(a: Any, name: str) -> Any:
    """The array-API namespace of ``a`` after checking that it is a real floating array."""
    if not array_api_compat.is_array_api_obj(a):
        raise TypeError(f"{name} must be an array, not {type(a).__name__}")
    xp = array_api_compat.array_namespace(a)
    if not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, not {a.dtype}")
    return xp


# ------------------------------------------------------------------------------ interface


class Transform(abc.ABC):
    """A parametric transformation ``y(w, x)``.

    Attributes: ``name`` (the factory name), ``dim`` (d), ``n_params`` (length of ``w``).
    ``t(w, x)`` evaluates ``y`` for ``w`` of shape ``(n_params,)`` and ``x`` of shape ``(n, d)``
    (same namespace and dtype) and returns shape ``(n, d)``.
    """

    name: ClassVar[str]
    dim: int

    @property
    @abc.abstractmethod
    def n_params(self) -> int: ...

    @abc.abstractmethod
    def _identity_values(self) -> tuple[float, ...]: ...

    @abc.abstractmethod
    def _apply(self, xp: Any, w: Any, x: Any) -> Any: ...

    def identity(self, xp: Any = None, *, dtype: Any = None, device: Any = None) -> Any:
        """The parameters of the identity map, shape ``(n_params,)``.

        In namespace ``xp`` (default NumPy through array-api-compat) with ``dtype`` (default
        ``xp.float64``) on ``device``.
        """
        if xp is None:
            import array_api_compat.numpy as xp
        dtype = xp.float64 if dtype is None else dtype
        if not xp.isdtype(dtype, "real floating"):
            raise TypeError(f"dtype must be a real floating dtype, not {dtype}")
        return xp.asarray(self._identity_values(), dtype=dtype, device=device)

    def _check_w(self, w: Any) -> Any:
        xp = _check_array(w, "w")
        if tuple(w.shape) != (self.n_params,):
            raise ValueError(
                f"w must have shape ({self.n_params},) for {self!r}, got {tuple(w.shape)}"
            )
        return xp

    def __call__(self, w: Any, x: Any) -> Any:
        self._check_w(w)
        _check_array(x, "x")
        try:
            xp = array_api_compat.array_namespace(w, x)
        except TypeError:
            raise TypeError(
                f"w and x must come from one array library, got {type(w).__name__} and "
                f"{type(x).__name__}"
            ) from None
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        if w.dtype != x.dtype:
            raise TypeError(f"w has dtype {w.dtype} but x has dtype {x.dtype}; they must match")
        return self._apply(xp, w, x)


class MatrixTransform(Transform):
    """A transformation ``y = A(w) x + b(w)``: translation, rigid, affine."""

    @abc.abstractmethod
    def _matrix(self, xp: Any, w: Any) -> tuple[Any, Any]: ...

    def matrix(self, w: Any) -> tuple[Any, Any]:
        """``(A, b)`` with ``y = A x + b``; shapes ``(d, d)`` and ``(d,)``, in ``w``'s namespace."""
        return self._matrix(self._check_w(w), w)

    def _apply(self, xp: Any, w: Any, x: Any) -> Any:
        A, b = self._matrix(xp, w)
        return x @ A.T + b


def _centered(xp: Any, A: Any, b: Any, center: tuple[float, ...] | None) -> tuple[Any, Any]:
    """``A (x - c) + c + b = A x + (b + c - A c)``."""
    if center is None:
        return A, b
    c = xp.asarray(center, dtype=A.dtype, device=array_api_compat.device(A))
    return A, b + c - A @ c


# ------------------------------------------------------------------------ transformations


@dataclass(frozen=True)
class Translation(MatrixTransform):
    """``y = x + t``, ``w = [t1, ..., td]``; identity zeros (FAIR ``translation2D/3D``).

    ``dim`` is 1, 2 or 3 (1D is the same formula; FAIR has 2D and 3D only).
    """

    dim: int
    name: ClassVar[str] = "translation"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim", _check_dim(self.dim, (1, 2, 3), "translation"))

    @property
    def n_params(self) -> int:
        return self.dim

    def _identity_values(self) -> tuple[float, ...]:
        return (0.0,) * self.dim

    def _matrix(self, xp: Any, w: Any) -> tuple[Any, Any]:
        return xp.eye(self.dim, dtype=w.dtype, device=array_api_compat.device(w)), w

    def _apply(self, xp: Any, w: Any, x: Any) -> Any:
        return x + w


def _rotation_2d(xp: Any, phi: Any) -> Any:
    c, s = xp.cos(phi), xp.sin(phi)
    return xp.stack([xp.stack([c, -s]), xp.stack([s, c])])


def _rotation_about(xp: Any, axis: int, angle: Any) -> Any:
    """The 3 x 3 rotation by ``angle`` about coordinate axis ``axis`` (0-based), FAIR's signs."""
    c, s = xp.cos(angle), xp.sin(angle)
    one, zero = xp.ones_like(c), xp.zeros_like(c)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return xp.stack([xp.stack(r) for r in rows])


@dataclass(frozen=True)
class Rigid(MatrixTransform):
    """Rotation about the origin (or ``center``) followed by a translation (FAIR ``rigid2D/3D``).

    2D, ``w = [φ, t1, t2]``: ``y = R(φ) x + t``, ``R(φ) = [[cos φ, −sin φ], [sin φ, cos φ]]``
    (counter-clockwise by φ: φ = π/2 maps e1 to e2).

    3D, ``w = [w1, w2, w3, t1, t2, t3]``: ``y = Qᵀ x + t`` with ``Q = R3(w1) R2(w2) R1(w3)``::

                [cos a  −sin a  0]           [ cos a  0  sin a]           [1    0       0  ]
        R3(a) = [sin a   cos a  0]   R2(a) = [   0    1    0  ]   R1(a) = [0  cos a  −sin a]
                [  0       0    1]           [−sin a  0  cos a]           [0  sin a   cos a]

    ``Rk`` rotates about axis ``x_k``. This is exactly what FAIR's ``rigid3D.m`` computes: it
    forms ``f = [R3*R2*R1; t']`` with ``R3`` from ``w(1)`` and ``R1`` from ``w(3)`` and returns
    ``kron(I3, [x 1]) * f(:)``, whose k-th component is ``Σ_j Q(j, k) x_j + t_k``, i.e. the
    transpose. Consequently ``w = [φ, 0, 0, 0, 0, 0]`` rotates the (x1, x2) plane by −φ, the
    opposite sense of ``rigid2D``; the convention is kept so that parameters match FAIR's.

    With ``center = c`` (a tuple of d numbers): ``y = R (x − c) + c + t``. Identity: zeros.
    """

    dim: int
    center: tuple[float, ...] | None = None
    name: ClassVar[str] = "rigid"

    def __post_init__(self) -> None:
        dim = _check_dim(self.dim, (2, 3), "rigid")
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "center", _check_center(self.center, dim))

    @property
    def n_params(self) -> int:
        return 3 if self.dim == 2 else 6

    def _identity_values(self) -> tuple[float, ...]:
        return (0.0,) * self.n_params

    def _matrix(self, xp: Any, w: Any) -> tuple[Any, Any]:
        if self.dim == 2:
            A, t = _rotation_2d(xp, w[0]), w[1:]
        else:
            Q = _rotation_about(xp, 2, w[0]) @ _rotation_about(xp, 1, w[1])
            A, t = (Q @ _rotation_about(xp, 0, w[2])).T, w[3:]
        return _centered(xp, A, t, self.center)


@dataclass(frozen=True)
class Affine(MatrixTransform):
    """``y = A x + b`` with ``w = [A(1,:) b1, ..., A(d,:) bd]`` row by row (FAIR ``affine2D/3D``).

    2D: ``y1 = w1 x1 + w2 x2 + w3``, ``y2 = w4 x1 + w5 x2 + w6``; 3D: 12 parameters likewise.
    ``dim`` is 1, 2 or 3 (1D, ``y = w1 x + w2``, is the same formula). With ``center = c``:
    ``y = A (x − c) + c + b``. Identity: ``A = I``, ``b = 0`` (2D: ``[1, 0, 0, 0, 1, 0]``).
    """

    dim: int
    center: tuple[float, ...] | None = None
    name: ClassVar[str] = "affine"

    def __post_init__(self) -> None:
        dim = _check_dim(self.dim, (1, 2, 3), "affine")
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "center", _check_center(self.center, dim))

    @property
    def n_params(self) -> int:
        return self.dim * (self.dim + 1)

    def _identity_values(self) -> tuple[float, ...]:
        d = self.dim
        return tuple(float(j == i) for i in range(d) for j in range(d + 1))

    def _matrix(self, xp: Any, w: Any) -> tuple[Any, Any]:
        Ab = xp.reshape(w, (self.dim, self.dim + 1))
        return _centered(xp, Ab[:, : self.dim], Ab[:, self.dim], self.center)


@dataclass(frozen=True)
class BSpline(Transform):
    """Cubic B-spline free-form deformation ``y = x + u(x)`` (FAIR ``splineTransformation2D``).

    The control grid has ``p = (p1, ..., pd)`` cells over ``omega`` (d = 2 or 3), control point
    ``j`` (0-based) at its cell centre ``a + (j + 1/2) h_p``, ``h_p = (b − a) / p``. Component k::

        u_k(x) = Σ_j W_k[j] Π_i b(ξ_i − j_i),   ξ = (x − a) / h_p − 1/2,

    with FAIR's unnormalised cubic B-spline ``b(t) = (2 − |t|)³ − 4 (1 − |t|)³`` for
    ``|t| < 1``, ``(2 − |t|)³`` for ``1 ≤ |t| < 2``, else 0 (``b(0) = 4``, ``b(±1) = 1``,
    ``Σ_j b(t − j) = 6``). ``u`` is C² and vanishes beyond 1.5 control cells outside omega.

    Layout: ``w = [W_1.ravel(), ..., W_d.ravel()]``, component blocks stacked, each block in C
    order over shape ``p``; ``n_params = d · prod(p)``; identity zeros. FAIR stacks the blocks
    too but flattens each in Fortran order: :meth:`to_fair` and :meth:`from_fair` convert.
    """

    omega: tuple[float, ...]
    p: tuple[int, ...]
    name: ClassVar[str] = "bspline"

    def __post_init__(self) -> None:
        p = _integers(self.p, "p")
        if len(p) not in (2, 3):
            raise ValueError(f"p must have 2 or 3 entries (the dimension), got {len(p)}")
        if any(v < 1 for v in p):
            raise ValueError(f"p must be positive in every dimension, got {p}")
        try:
            n_omega = len(self.omega)
        except TypeError:
            raise TypeError(f"omega must be a sequence of numbers, got {self.omega!r}") from None
        if n_omega != 2 * len(p):
            raise ValueError(
                f"omega must have 2*len(p) = {2 * len(p)} entries (a1, b1, a2, b2, ...), "
                f"got {n_omega}"
            )
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "omega", Domain(self.omega, p).omega)

    @property
    def dim(self) -> int:
        return len(self.p)

    @property
    def grid(self) -> Domain:
        """The control grid: ``omega`` divided into ``p`` cells (control points at centres)."""
        return Domain(self.omega, self.p)

    @property
    def n_params(self) -> int:
        return self.dim * math.prod(self.p)

    def _identity_values(self) -> tuple[float, ...]:
        return (0.0,) * self.n_params

    def _blocks(self, xp: Any, w: Any, shape: Sequence[int]) -> list[Any]:
        size = math.prod(self.p)
        return [xp.reshape(w[k * size : (k + 1) * size], tuple(shape)) for k in range(self.dim)]

    def _apply(self, xp: Any, w: Any, x: Any) -> Any:
        grid, device = self.grid, array_api_compat.device(x)
        a = xp.asarray(grid.lower, dtype=x.dtype, device=device)
        h = xp.asarray(grid.h, dtype=x.dtype, device=device)
        xi = (x - a) / h - 0.5
        u = [_bspline.evaluate(W, xi) for W in self._blocks(xp, w, self.p)]
        return x + xp.stack(u, axis=1)

    def to_fair(self, w: Any) -> Any:
        """FAIR's layout of ``w``: each component block flattened in Fortran order.

        For p = (2, 3) and ``W_1 = [[0, 1, 2], [3, 4, 5]]`` the first block becomes
        ``[0, 3, 1, 4, 2, 5]`` (the first index varies fastest, MATLAB's ``W(:)``).
        """
        xp = self._check_w(w)
        reverse = tuple(range(self.dim - 1, -1, -1))
        blocks = self._blocks(xp, w, self.p)
        return xp.concat([xp.reshape(xp.permute_dims(W, reverse), (-1,)) for W in blocks])

    def from_fair(self, w: Any) -> Any:
        """The inverse of :meth:`to_fair`: FAIR's Fortran-order blocks to C order."""
        xp = self._check_w(w)
        reverse = tuple(range(self.dim - 1, -1, -1))
        blocks = self._blocks(xp, w, self.p[::-1])
        return xp.concat([xp.reshape(xp.permute_dims(W, reverse), (-1,)) for W in blocks])


# --------------------------------------------------------------------------------- factory

TRANSFORMS: dict[str, type[Transform]] = {
    "translation": Translation,
    "rigid": Rigid,
    "affine": Affine,
    "bspline": BSpline,
}
_OPTIONS = {
    "translation": (),
    "rigid": ("center",),
    "affine": ("center",),
    "bspline": ("omega", "p"),
}


def transform(name: str, dim: int | None = None, **options: Any) -> Transform:
    """The transformation called ``name`` with keyword ``options``.

    ``translation(dim)``, ``rigid(dim, center=None)``, ``affine(dim, center=None)``,
    ``bspline(omega=..., p=...)`` (its dimension comes from ``p``; a ``dim`` given must agree).
    Unknown names and options are errors.
    """
    if not isinstance(name, str) or name not in TRANSFORMS:
        raise ValueError(f"name must be one of {', '.join(map(repr, TRANSFORMS))}; got {name!r}")
    allowed = _OPTIONS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for transform {name!r}; "
            f"allowed: {', '.join(map(repr, allowed)) or 'none'}"
        )
    if name == "bspline":
        missing = [k for k in allowed if k not in options]
        if missing:
            raise TypeError(f"transform 'bspline' needs option(s) {', '.join(map(repr, missing))}")
        t = BSpline(**options)
        if dim is not None and dim != t.dim:
            raise ValueError(f"dim = {dim} disagrees with p = {t.p} (dimension {t.dim})")
        return t
    if dim is None:
        raise TypeError(f"transform {name!r} needs dim")
    return TRANSFORMS[name](dim, **options)
