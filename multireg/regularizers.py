"""Quadratic regularisers of nonparametric registration: elastic, diffusive, curvature.

Each one is ``S(y) = ½ · α · hd · ‖B (y − y_ref)‖²`` with a matrix-free difference operator B,
``hd = prod(h)`` the midpoint-quadrature weight (so that α means the same at every resolution)
and ``y`` a stacked grid function (:mod:`multireg.gridops`) on the regulariser's grid
``kind``. Being quadratic, each provides its value, gradient ``α·hd·BᵀB u`` (u = y − y_ref),
Hessian-vector product ``α·hd·BᵀB v``, and the diagonal of ``α·hd·BᵀB`` for Jacobi
preconditioning, all written with array-API operations and differentiable by the backends.

The output of B is a flat vector of stacked blocks, each in C order, listed in each class's
docstring (FAIR's row blocks; FAIR flattens each block in Fortran order).

Reference: J. Modersitzki, *FAIR: Flexible Algorithms for Image Registration*, SIAM 2009, ch. 8
(regularisation: elastic on the staggered grid, FAIR's ``getElasticMatrixStg``/``mfElastic``;
curvature on the cell-centred grid, ``getCurvatureMatrix``/``mfCurvature``).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import array_api_compat

from multireg.grid import Domain
from multireg.gridops import (
    _along,
    _check_domain,
    _diff,
    _diff_adjoint,
    _namespace,
    _split,
    grid_shape,
    identity_grid,
    merge,
)

__all__ = ["Curvature", "Diffusive", "Elastic", "Regularizer", "regularizer"]


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _sqrt(value: Any) -> Any:
    """√value for a Python number or a 0-d array: the registration passes α, μ and λ to its
    compiled kernels as arrays (so that a new value does not recompile), where ``math.sqrt``
    would need the value on the host."""
    if isinstance(value, numbers.Real):
        return math.sqrt(value)
    return array_api_compat.array_namespace(value).sqrt(value)


def _neighbours(xp: Any, n: int, dtype: Any, device: Any) -> Any:
    """How many neighbours each of n points on a line has: ``[1, 2, ..., 2, 1]`` (``[0]`` if n = 1).

    It is the diagonal of ``DᵀD`` for the ``(n-1) x n`` difference ``D = [-1, 1]`` (times h²).
    """
    i = xp.arange(n, device=device)
    return 2.0 - xp.astype(i == 0, dtype) - xp.astype(i == n - 1, dtype)


def _on_axis(xp: Any, v: Any, axis: int, ndim: int) -> Any:
    """A 1-D array reshaped to broadcast along ``axis`` of an ``ndim``-dimensional array."""
    return xp.reshape(v, tuple(-1 if j == axis else 1 for j in range(ndim)))


class Regularizer(ABC):
    """``S(y) = ½ α hd ‖B (y − y_ref)‖²`` on the grid :attr:`kind`; see the module docstring.

    Subclasses define B by its blocks. Every method takes the stacked vector and the
    :class:`~multireg.grid.Domain`; ``y_ref=None`` means the identity grid ``x``. The weights
    (α, μ, λ) are used in arithmetic only, never in a Python branch, so the registration's
    compiled kernels may hold them as 0-d arrays (one compilation for every value).
    """

    alpha: float
    kind: ClassVar[str]

    # -------------------------------------------------------------- what a subclass defines
    @abstractmethod
    def _blocks(self, u: tuple, h: tuple[float, ...]) -> list:
        """B applied to the components ``u``: a list of arrays (the row blocks)."""

    @abstractmethod
    def _blocks_adjoint(self, z: list, h: tuple[float, ...]) -> list:
        """Bᵀ applied to the row blocks ``z``: a list of component arrays."""

    @abstractmethod
    def _block_shapes(self, domain: Domain) -> list[tuple[int, ...]]:
        """Shapes of the row blocks of B."""

    @abstractmethod
    def _normal_diagonal(self, domain: Domain, xp: Any, dtype: Any, device: Any) -> list:
        """Diagonal of BᵀB, one array per component, broadcastable to its grid shape."""

    def _check_alpha(self) -> None:
        object.__setattr__(self, "alpha", _real("alpha", self.alpha))
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")

    # ----------------------------------------------------------------------- the operators
    def B(self, u: Any, domain: Domain) -> Any:
        """``B u`` for a stacked vector ``u`` on the grid :attr:`kind`: the flattened row blocks."""
        return merge(self._blocks(_split(u, domain, self.kind, "u"), domain.h))

    def BT(self, z: Any, domain: Domain) -> Any:
        """``Bᵀ z`` for a flat vector ``z`` of B's row blocks: a stacked vector on :attr:`kind`."""
        xp = _namespace("z", z)
        _check_domain(domain)
        shapes = self._block_shapes(domain)
        size = sum(math.prod(s) for s in shapes)
        if z.ndim != 1 or z.shape[0] != size:
            raise ValueError(f"z must be a 1-D vector of length {size}, got shape {tuple(z.shape)}")
        blocks, start = [], 0
        for shape in shapes:
            stop = start + math.prod(shape)
            blocks.append(xp.reshape(z[start:stop], shape))
            start = stop
        return merge(self._blocks_adjoint(blocks, domain.h))

    def _displacement(self, y: Any, domain: Domain, y_ref: Any) -> tuple:
        components = _split(y, domain, self.kind, "y")
        if y_ref is None:
            xp, device = array_api_compat.array_namespace(y), array_api_compat.device(y)
            y_ref = identity_grid(domain, self.kind, xp, dtype=y.dtype, device=device)
        references = _split(y_ref, domain, self.kind, "y_ref")
        return tuple(a - b for a, b in zip(components, references, strict=True))

    def value(self, y: Any, domain: Domain, y_ref: Any = None) -> Any:
        """``S(y) = ½ α hd ‖B (y − y_ref)‖²``, a 0-d array."""
        u = self._displacement(y, domain, y_ref)
        xp = array_api_compat.array_namespace(y)
        blocks = self._blocks(u, domain.h)
        return (0.5 * self.alpha * domain.cell_volume) * sum(xp.sum(b * b) for b in blocks)

    def gradient(self, y: Any, domain: Domain, y_ref: Any = None) -> Any:
        """``∇S(y) = α hd BᵀB (y − y_ref)``, a stacked vector like ``y``."""
        u = self._displacement(y, domain, y_ref)
        return self._normal(u, domain)

    def hvp(self, v: Any, domain: Domain) -> Any:
        """``∇²S v = α hd BᵀB v`` (the Hessian does not depend on y)."""
        return self._normal(_split(v, domain, self.kind, "v"), domain)

    def _normal(self, u: tuple, domain: Domain) -> Any:
        w = self._blocks_adjoint(self._blocks(u, domain.h), domain.h)
        return (self.alpha * domain.cell_volume) * merge(w)

    def diagonal(
        self, domain: Domain, xp: Any = None, *, dtype: Any = None, device: Any = None
    ) -> Any:
        """``diag(α hd BᵀB)``, a stacked vector on :attr:`kind` (default NumPy, float64)."""
        _check_domain(domain)
        if xp is None:
            import array_api_compat.numpy as xp
        dtype = xp.float64 if dtype is None else dtype
        parts = []
        for k, d in enumerate(self._normal_diagonal(domain, xp, dtype, device)):
            shape = grid_shape(domain, self.kind, k)
            full = xp.zeros(shape, dtype=dtype, device=device) + d
            parts.append((self.alpha * domain.cell_volume) * full)
        return merge(parts)


# --------------------------------------------------------------------- staggered gradients


def _gradient_blocks(u: tuple, h: tuple[float, ...]) -> list:
    """``∂_k u_i`` for every component i and axis k (i slowest): forward differences."""
    return [_diff(ui, k, h[k]) for ui in u for k in range(len(h))]


def _gradient_blocks_adjoint(z: list, h: tuple[float, ...]) -> list:
    d = len(h)
    return [sum(_diff_adjoint(z[i * d + k], k, h[k]) for k in range(d)) for i in range(d)]


def _gradient_block_shapes(domain: Domain) -> list[tuple[int, ...]]:
    m, d = domain.m, domain.dim
    return [
        tuple(v + (j == i) - (j == k) for j, v in enumerate(m)) for i in range(d) for k in range(d)
    ]


def _gradient_diagonal(domain: Domain, xp: Any, dtype: Any, device: Any) -> list:
    """``diag(∇ᵀ∇)`` per staggered component: the sum over axes of the 1-D ``diag(DᵀD)``."""
    d, h = domain.dim, domain.h
    out = []
    for i in range(d):
        shape = tuple(v + (j == i) for j, v in enumerate(domain.m))
        out.append(
            sum(
                _on_axis(xp, _neighbours(xp, shape[k], dtype, device), k, d) / h[k] ** 2
                for k in range(d)
            )
        )
    return out


@dataclass(frozen=True)
class Elastic(Regularizer):
    """Linear elasticity on the staggered grid (FAIR ``mfElastic``, ch. 8).

    ``B = [√μ ∇ (each component); √(λ+μ) div]``, so ``‖Bu‖² = μ Σ_ik ‖∂_k u_i‖² + (λ+μ)‖div u‖²``.
    Row blocks, in order: ``√μ ∂_k u_i`` for i = 1..d (slowest), k = 1..d, then ``√(λ+μ) div u``.
    ``∂_k u_i`` is the forward difference ``(u_i[j+1] - u_i[j]) / h_k`` of the staggered component
    ``u_i`` along axis k over the points it has: along its nodal axis (k = i) that is ``m_i``
    differences, landing on the cell centres; along a cell-centred axis (k ≠ i) ``m_k - 1``
    differences between neighbouring centres, with no boundary rows (FAIR's choice: no ghost
    values, i.e. natural/homogeneous Neumann boundary conditions). ``div u = Σ_k ∂_k u_k`` lies
    on the cell centres (shape m). Parameters: α ≥ 0, Lamé constants μ > 0 and λ ≥ −μ (FAIR's
    defaults μ = 1, λ = 0); λ = −μ removes the divergence term and gives :class:`Diffusive`.
    """

    alpha: float
    mu: float = 1.0
    lam: float = 0.0
    kind: ClassVar[str] = "staggered"

    def __post_init__(self) -> None:
        self._check_alpha()
        mu, lam = _real("mu", self.mu), _real("lam", self.lam)
        if mu <= 0:
            raise ValueError(f"mu must be > 0, got {self.mu!r}")
        if lam < -mu:
            raise ValueError(f"lam must be >= -mu = {-mu!r} (B needs sqrt(lam + mu)), got {lam!r}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "lam", lam)

    def _blocks(self, u: tuple, h: tuple[float, ...]) -> list:
        a, b = _sqrt(self.mu), _sqrt(self.lam + self.mu)
        div = sum(_diff(ui, i, h[i]) for i, ui in enumerate(u))
        return [a * g for g in _gradient_blocks(u, h)] + [b * div]

    def _blocks_adjoint(self, z: list, h: tuple[float, ...]) -> list:
        a, b = _sqrt(self.mu), _sqrt(self.lam + self.mu)
        grad = _gradient_blocks_adjoint(z[:-1], h)
        return [a * g + b * _diff_adjoint(z[-1], i, h[i]) for i, g in enumerate(grad)]

    def _block_shapes(self, domain: Domain) -> list[tuple[int, ...]]:
        return [*_gradient_block_shapes(domain), domain.m]

    def _normal_diagonal(self, domain: Domain, xp: Any, dtype: Any, device: Any) -> list:
        # The divergence adds (λ+μ) diag(D_iᵀD_i) to component i; its cross terms are off-diagonal.
        h, d = domain.h, domain.dim
        own = [
            _on_axis(xp, _neighbours(xp, domain.m[i] + 1, dtype, device), i, d) / h[i] ** 2
            for i in range(d)
        ]
        grad = _gradient_diagonal(domain, xp, dtype, device)
        return [self.mu * g + (self.lam + self.mu) * o for g, o in zip(grad, own, strict=True)]


@dataclass(frozen=True)
class Diffusive(Regularizer):
    """Diffusion on the staggered grid: ``‖Bu‖² = Σ_ik ‖∂_k u_i‖²``, i.e. B = ∇ per component.

    FAIR has no separate diffusive kernel; it uses elastic with μ = 1, λ = −μ, which removes the
    divergence term. This is that operator (the same staggered grid and differences as
    :class:`Elastic`, so the two are interchangeable in a solver) without the zero div rows. Row
    blocks: ``∂_k u_i`` for i = 1..d (slowest), k = 1..d.
    """

    alpha: float
    kind: ClassVar[str] = "staggered"

    def __post_init__(self) -> None:
        self._check_alpha()

    def _blocks(self, u: tuple, h: tuple[float, ...]) -> list:
        return _gradient_blocks(u, h)

    def _blocks_adjoint(self, z: list, h: tuple[float, ...]) -> list:
        return _gradient_blocks_adjoint(z, h)

    def _block_shapes(self, domain: Domain) -> list[tuple[int, ...]]:
        return _gradient_block_shapes(domain)

    def _normal_diagonal(self, domain: Domain, xp: Any, dtype: Any, device: Any) -> list:
        return _gradient_diagonal(domain, xp, dtype, device)


@dataclass(frozen=True)
class Curvature(Regularizer):
    """Curvature on the cell-centred grid (FAIR ``mfCurvature``, ch. 8): ``B = I_d ⊗ Δ_h``.

    ``Δ_h = Σ_k ∂_kk`` with the 3-point Laplacian along each axis: interior rows
    ``[1, -2, 1] / h_k²`` and the Neumann boundary rows ``[-1, 1] / h_k²`` and ``[1, -1] / h_k²``
    (ghost values mirror the outer centre, zero normal derivative), i.e. ``∂_kk = -D_kᵀ D_k``
    with D_k the ``(m_k - 1) x m_k`` forward difference; an axis with one cell contributes 0.
    These are the rows FAIR builds (``getCurvatureMatrix`` and the matrix-free
    ``curvatureOperator`` both set ``D([1,end]) = -D([2,end-1])``); the "soso" comment in that
    source sits beside commented-out alternatives (halved corners, zero boundary rows).
    Constants are in the kernel of Δ_h; an affine displacement is annihilated in the interior
    only (the boundary rows give ``±a/h_k`` for the slope a along axis k). Row blocks:
    ``Δ_h u_i`` for i = 1..d, each of shape m.
    """

    alpha: float
    kind: ClassVar[str] = "cell-centered"

    def __post_init__(self) -> None:
        self._check_alpha()

    @staticmethod
    def _laplacian(v: Any, h: tuple[float, ...]) -> Any:
        return -sum(_diff_adjoint(_diff(v, k, h[k]), k, h[k]) for k in range(len(h)))

    # The registration calls value, gradient and hvp in every iteration (hvp in every CG step):
    # they apply Δ_h to all d components at once, as one (d, *m) array, with the Neumann rows
    # from mirrored ghost cells, instead of two differences per axis and component. On an
    # eager backend (torch) every array operation is dispatched on its own: this is 4x fewer
    # operations in 2-D (6x in 3-D) and fewer passes over the data. B, Bᵀ and diagonal keep
    # the block form above (same numbers up to round-off).
    def _stacked(self, y: Any, domain: Domain, name: str) -> Any:
        """The stacked vector ``y`` as the (d, *m) array of its components (a view)."""
        xp = _namespace(name, y)
        _check_domain(domain)
        size = domain.dim * math.prod(domain.m)
        if y.ndim != 1 or y.shape[0] != size:
            raise ValueError(
                f"{name} must be a 1-D vector of length {size} (a cell-centered grid function "
                f"on m = {domain.m}), got shape {tuple(y.shape)}"
            )
        return xp.reshape(y, (domain.dim, *domain.m))

    @staticmethod
    def _laplacian_stacked(v: Any, h: tuple[float, ...]) -> Any:
        """``Δ_h`` along axes 1..d of ``v`` (shape (d, *m)): per axis, ``(v[j-1] + v[j+1]) / h²``
        with the ghost values ``v[-1] = v[0]``, ``v[m] = v[m-1]`` (the Neumann rows of
        ``-DᵀD / h²``), minus ``Σ_k 2/h_k² · v``; an axis with one cell contributes 0."""
        xp = array_api_compat.array_namespace(v)
        out, centre = None, 0.0
        for k, hk in enumerate(h):
            axis, n = k + 1, v.shape[k + 1]
            if n == 1:
                continue
            first, last = (v[_along(axis, s, v.ndim)] for s in (slice(0, 1), slice(n - 1, n)))
            padded = xp.concat([first, v, last], axis=axis)
            lo, hi = (padded[_along(axis, s, v.ndim)] for s in (slice(None, -2), slice(2, None)))
            term = (lo + hi) * (1.0 / hk**2)
            out = term if out is None else out + term
            centre += 2.0 / hk**2
        return xp.zeros_like(v) if out is None else out - centre * v

    def _stacked_displacement(self, y: Any, domain: Domain, y_ref: Any) -> Any:
        u = self._stacked(y, domain, "y")
        if y_ref is None:
            xp, device = array_api_compat.array_namespace(y), array_api_compat.device(y)
            y_ref = identity_grid(domain, self.kind, xp, dtype=y.dtype, device=device)
        return u - self._stacked(y_ref, domain, "y_ref")

    def value(self, y: Any, domain: Domain, y_ref: Any = None) -> Any:
        """``S(y) = ½ α hd ‖Δ_h (y − y_ref)‖²``, a 0-d array."""
        b = self._laplacian_stacked(self._stacked_displacement(y, domain, y_ref), domain.h)
        xp = array_api_compat.array_namespace(y)
        return (0.5 * self.alpha * domain.cell_volume) * xp.sum(b * b)

    def gradient(self, y: Any, domain: Domain, y_ref: Any = None) -> Any:
        """``∇S(y) = α hd Δ_h² (y − y_ref)``, a stacked vector like ``y``."""
        return self._normal_stacked(self._stacked_displacement(y, domain, y_ref), domain)

    def hvp(self, v: Any, domain: Domain) -> Any:
        """``∇²S v = α hd Δ_h² v`` (Δ_h is symmetric)."""
        return self._normal_stacked(self._stacked(v, domain, "v"), domain)

    def _normal_stacked(self, u: Any, domain: Domain) -> Any:
        xp = array_api_compat.array_namespace(u)
        w = self._laplacian_stacked(self._laplacian_stacked(u, domain.h), domain.h)
        return xp.reshape((self.alpha * domain.cell_volume) * w, (-1,))

    def _blocks(self, u: tuple, h: tuple[float, ...]) -> list:
        return [self._laplacian(ui, h) for ui in u]

    def _blocks_adjoint(self, z: list, h: tuple[float, ...]) -> list:
        return [self._laplacian(zi, h) for zi in z]  # Δ_h is symmetric

    def _block_shapes(self, domain: Domain) -> list[tuple[int, ...]]:
        return [domain.m] * domain.dim

    def _normal_diagonal(self, domain: Domain, xp: Any, dtype: Any, device: Any) -> list:
        # Row j of Δ_h has the diagonal entry -Σ_k c_k/h_k² and, per axis, c_k off-diagonal
        # entries 1/h_k² (c_k = neighbours along axis k), so its squared norm is
        # (Σ_k c_k/h_k²)² + Σ_k c_k/h_k⁴; Δ_h is symmetric, so that is diag(Δ_hᵀΔ_h).
        h, d = domain.h, domain.dim
        c = [_on_axis(xp, _neighbours(xp, domain.m[k], dtype, device), k, d) for k in range(d)]
        diag = sum(ck / h[k] ** 2 for k, ck in enumerate(c)) ** 2
        diag = diag + sum(ck / h[k] ** 4 for k, ck in enumerate(c))
        return [diag] * d


_CLASSES = {"elastic": Elastic, "diffusive": Diffusive, "curvature": Curvature}


def regularizer(name: str, **options: Any) -> Regularizer:
    """A regulariser by name: ``"elastic"`` (alpha, mu, lam), ``"diffusive"`` or ``"curvature"``
    (alpha). ``alpha`` is required; unknown names and options are errors."""
    if not isinstance(name, str) or name not in _CLASSES:
        raise ValueError(f"name must be one of {', '.join(map(repr, _CLASSES))}; got {name!r}")
    cls = _CLASSES[name]
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for regularizer {name!r}; "
            f"it takes {', '.join(allowed)}"
        )
    if "alpha" not in options:
        raise TypeError(f"regularizer {name!r} needs the option alpha")
    return cls(**options)
