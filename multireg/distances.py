"""Distance measures written as D = ψ(r): a residual r(Tc, Rc) and an outer function ψ.

``Tc`` is the template sampled at the cell centres (after the transformation, an array of shape
``domain.m``) and ``Rc`` the reference there. Every distance offers

- ``residual(Tc, Rc, domain)``: r, a 1-D array of length ``prod(m)``;
- ``outer(r, Rc, domain)``: ψ(r), a 0-d array;
- ``gn_weight(r, Rc, domain)``: the positive outer Gauss–Newton weight W (0-d here), so that
  ``H_GN = J_rᵀ W J_r``; solvers reach ``J_r v`` and ``J_rᵀ u`` by jvp/vjp of ``residual``;
- ``distance(Tc, Rc, domain) = outer(residual(Tc, Rc, domain), Rc, domain)``;
- ``gauss_newton``: False for MI, which has no Gauss–Newton form (use L-BFGS or Newton–CG);
- ``residual_radius``: r_i depends on T in the cells at most this many cells from i along each
  axis (0: pointwise, as SSD and NCC; 1: NGF's central differences), from which the
  registration layer forms the exact diagonal of the Gauss–Newton matrix for preconditioning
  (optional for other distances; without it only the regulariser's diagonal is used).

Everything is written with array-API operations, so torch and JAX differentiate it exactly (in
forward and reverse mode, to any order) and the forward kernels run on any standard namespace.
``hd = prod(h)`` is the midpoint-quadrature weight (:attr:`Domain.cell_volume`).

Reference: J. Modersitzki, *FAIR: Flexible Algorithms for Image Registration*, SIAM 2009, ch. 7
(distance measures, and the ψ(r) split that gives every one of them a Gauss–Newton matrix).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import array_api_compat

from multireg._bspline import OFFSETS, weights
from multireg.grid import Domain

__all__ = ["MI", "NCC", "NGF", "SSD", "Distance", "MIGaussNewton", "distance", "rescaled"]

# NGF with edge=None: ε = _EDGE_FRACTION · max |∇R|. FAIR's examples use edge = 100 on the 0–255
# hands images, where max |∇R| ≈ 610 (intensity per unit length), i.e. a fraction of about 0.16.
_EDGE_FRACTION = 0.1
# MI: tolerance inside the logarithms, added to bin probabilities (FAIR's value, there added to
# densities); it keeps ψ and its derivatives finite at empty bins.
_LOG_TOL = 1e-6
_NGF_BOUNDARIES = ("one-sided", "fair")


@runtime_checkable
class Distance(Protocol):
    """What the registration layer relies on (see the module docstring)."""

    gauss_newton: bool

    def residual(self, Tc: Any, Rc: Any, domain: Domain) -> Any: ...
    def outer(self, r: Any, Rc: Any, domain: Domain) -> Any: ...
    def gn_weight(self, r: Any, Rc: Any, domain: Domain) -> Any: ...
    def __call__(self, Tc: Any, Rc: Any, domain: Domain) -> Any: ...


class _Composed:
    gauss_newton: ClassVar[bool] = True
    residual_radius: ClassVar[int] = 0

    def __call__(self, Tc: Any, Rc: Any, domain: Domain) -> Any:
        """``D = outer(residual(Tc, Rc, domain), Rc, domain)``, a 0-d array."""
        return self.outer(self.residual(Tc, Rc, domain), Rc, domain)


# ------------------------------------------------------------------------------- the distances


@dataclass(frozen=True, kw_only=True)
class SSD(_Composed):
    """Sum of squared differences: ``r = T - R``, ``ψ(r) = ½ hd rᵀr``, ``W = hd``.

    ψ approximates ``½ ∫ (T(y(x)) - R(x))² dx`` (units: intensity² × volume). FAIR ch. 7.
    """

    def residual(self, Tc: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_images(Tc, Rc, domain)
        return xp.reshape(Tc - Rc, (-1,))

    def outer(self, r: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_residual(r, Rc, domain)
        return 0.5 * domain.cell_volume * xp.sum(r * r)

    def gn_weight(self, r: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_residual(r, Rc, domain)
        return _full(xp, domain.cell_volume, r)


@dataclass(frozen=True, kw_only=True)
class NCC(_Composed):
    """Normalised cross-correlation: ``r = T``, ``ψ(r) = 1 - (Rᵀr)² / ((RᵀR)(rᵀr))``.

    Dimensionless, in [0, 1], invariant to scaling T or R by any nonzero factor (not to shifts:
    FAIR's NCC is not mean-centred); 0 when T is a multiple of R. No ``hd``: the quadrature
    weights cancel. The Gauss–Newton weight is FAIR's ``W = 2 / (rᵀr)`` (FAIR ch. 7).

    Guard: where ``(RᵀR)(rᵀr) = 0`` (T or R identically 0) the correlation is undefined; ψ is
    then 1 (no correlation) with zero gradient, and ``W = 0``.
    """

    def residual(self, Tc: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_images(Tc, Rc, domain)
        return xp.reshape(Tc, (-1,))

    def outer(self, r: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_residual(r, Rc, domain)
        R = xp.reshape(Rc, (-1,))
        denom = xp.sum(R * R) * xp.sum(r * r)
        ok = denom > 0
        one = _full(xp, 1.0, r)
        return xp.where(ok, 1.0 - xp.sum(R * r) ** 2 / xp.where(ok, denom, one), one)

    def gn_weight(self, r: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_residual(r, Rc, domain)
        TT = xp.sum(r * r)
        ok = TT > 0
        return xp.where(ok, 2.0 / xp.where(ok, TT, _full(xp, 1.0, r)), _full(xp, 0.0, r))


@dataclass(frozen=True, kw_only=True)
class NGF(_Composed):
    """Normalised gradient fields (Haber & Modersitzki 2006; FAIR ch. 7).

    ``r_i = <∇T_i, ∇R_i> / (|∇T_i|_ε |∇R_i|_ε)`` with ``|g|_ε = sqrt(gᵀg + ε²)``, one entry per
    cell; ``ψ(r) = hd Σ_i (1 - r_i²) = |Ω| - hd rᵀr``. Gradients are central differences inside
    and one-sided differences at the boundary (as ``numpy.gradient`` with ``edge_order=1``), in
    physical units (intensity per unit length), so ``edge`` ε has those units too. ψ only sees
    the alignment of edges: it is unchanged when T's contrast is inverted (T → -T), and under
    ``T → aT + b``, ``R → aR + c`` when ε → |a| ε. It is not minimal at T = R (|∇T|_ε grows
    with contrast, so T = 2R scores lower); it prefers aligned, strong edges.

    ``edge``: ε > 0; ``None`` (default) means ``ε = 0.1 · max_i |∇R_i|``, which makes ψ invariant
    to affine intensity changes of T and R together (FAIR's default 100 assumes 0–255 data and
    FAIR's domains; its hands example has max |∇R| ≈ 610). ε = 1 if R is constant.

    ``boundary``: the derivative in the first and last cell along each axis. ``"one-sided"``
    (default): ``(f[1] - f[0]) / h``, the one-sided difference, which is exact for a linear f.
    ``"fair"``: ``(f[1] - f[0]) / (2h)``, what FAIR's NGFdot.m computes (it keeps the central
    stencil's factor 1/(2h) on the one-sided boundary rows), i.e. half the slope there; use it
    to reproduce FAIR's numbers.

    Gauss–Newton: the exact outer Hessian is ``-2 hd I`` (ψ is concave in r); like FAIR, the
    weight is ``W = +2 hd`` so that the Gauss–Newton matrix is positive semidefinite.
    Needs at least 2 cells per dimension.
    """

    residual_radius: ClassVar[int] = 1

    edge: float | None = None
    boundary: str = "one-sided"

    def __post_init__(self) -> None:
        if self.edge is not None:
            object.__setattr__(self, "edge", _positive("edge", self.edge))
        if not isinstance(self.boundary, str) or self.boundary not in _NGF_BOUNDARIES:
            raise ValueError(
                f"boundary must be one of {', '.join(map(repr, _NGF_BOUNDARIES))}; "
                f"got {self.boundary!r}"
            )

    def residual(self, Tc: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_images(Tc, Rc, domain)
        if min(domain.m) < 2:
            raise ValueError(f"NGF needs at least 2 cells per dimension, got domain.m = {domain.m}")
        ends = 2.0 if self.boundary == "fair" else 1.0
        gT = _gradient(xp, Tc, domain.h, ends)
        gR = _gradient(xp, Rc, domain.h, ends)
        TR = sum(a * b for a, b in zip(gT, gR, strict=True))
        TT = sum(a * a for a in gT)
        RR = sum(b * b for b in gR)
        if self.edge is None:
            eps = _EDGE_FRACTION * xp.sqrt(xp.max(RR))
            eps2 = xp.where(eps > 0, eps, _full(xp, 1.0, eps)) ** 2
        else:
            eps2 = self.edge**2
        return xp.reshape(TR / xp.sqrt((TT + eps2) * (RR + eps2)), (-1,))

    def outer(self, r: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_residual(r, Rc, domain)
        return domain.cell_volume * xp.sum(1.0 - r * r)

    def gn_weight(self, r: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_residual(r, Rc, domain)
        return _full(xp, 2.0 * domain.cell_volume, r)


@dataclass(frozen=True, kw_only=True)
class MI(_Composed):
    """Negative mutual information from a Parzen-window joint histogram (Viola & Wells 1997;
    Mattes et al. 2003; FAIR ch. 7).

    ``r = T``. Each sample v is placed at the bin coordinate ``s = 1 + (v - lo)/(hi - lo) ·
    (bins - 3)`` and spread over the bins ``j = 0..bins-1`` with the cubic B-spline weights
    ``β(s - j)`` (``β = b/6``, b from :mod:`multireg._bspline`), which sum to 1. ``bins`` counts
    every bin: the range [lo, hi] spans ``bins - 3`` bin widths and the bins 0 and ``bins - 1``
    are guards, so a value inside the range never loses mass; values outside lose mass smoothly
    (wholly once ``s`` leaves (-2, bins + 1)). With the n × bins weight matrices ``W_T`` and
    ``W_R``, the joint probabilities are ``p = W_Tᵀ W_R / sum(W_Tᵀ W_R)`` (a matrix product:
    dense, but exact, differentiable and scatter-free), ``p_T``, ``p_R`` its marginals, and

        ψ = Σ p_T log(p_T + τ) + Σ p_R log(p_R + τ) - Σ p log(p + τ)  (= -MI),  τ = 1e-6.

    ψ is dimensionless, ≤ 0 up to τ, and depends on T only through the bin coordinates: it is
    unchanged when T → aT + b (a ≠ 0) and ``range_T`` is mapped the same way.

    ``range_T``, ``range_R``: intensity ranges (lo < hi). ``None`` means [min Rc, max Rc] for
    both (a range taken from T would make ψ non-smooth in T); the registration layer should pass
    explicit ranges when T's intensities differ from R's. A constant R gives a range of width 1.

    Gauss–Newton: none (``gauss_newton = False``; :meth:`gn_weight` raises). Memory is
    O(n · (bins_T + bins_R)) and the product costs n · bins_T · bins_R operations.
    """

    gauss_newton: ClassVar[bool] = False

    bins_T: int = 32
    bins_R: int = 32
    range_T: tuple[float, float] | None = None
    range_R: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check_histogram(self, 4, " (guard bins included)")

    def residual(self, Tc: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_images(Tc, Rc, domain)
        return xp.reshape(Tc, (-1,))

    def outer(self, r: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_residual(r, Rc, domain)
        R = xp.reshape(Rc, (-1,))
        range_T, range_R = _ranges(xp, self, R)
        W_T = _parzen(xp, r, *range_T, self.bins_T)
        W_R = _parzen(xp, R, *range_R, self.bins_R)
        joint = xp.matmul(xp.matrix_transpose(W_T), W_R)
        mass = xp.sum(joint)  # n while every value lies in its range
        p = joint / xp.where(mass > 0, mass, _full(xp, 1.0, r))
        return _plogp(xp, xp.sum(p, axis=1)) + _plogp(xp, xp.sum(p, axis=0)) - _plogp(xp, p)

    def gn_weight(self, r: Any, Rc: Any, domain: Domain) -> Any:
        raise NotImplementedError(
            "MI has no Gauss-Newton form (gauss_newton is False); "
            "minimise it with L-BFGS or Newton-CG (Hessian-vector products)"
        )


@dataclass(frozen=True, kw_only=True)
class MIGaussNewton(_Composed):
    """Negative mutual information in FAIR's Gauss–Newton form (FAIR ch. 7.5; MI.m → MImex.m
    with the Parzen estimator rhoSplineC): the residual is the joint histogram itself.

    ``r = ρ``, the joint density of (T, R) on ``(bins_T + 4) × (bins_R + 4)`` bins, flattened
    (length ``(bins_T + 4)(bins_R + 4)``, not ``prod(m)``). Each range [lo, hi] is cut into
    ``bins`` bins of width ``w = (hi - lo)/bins`` and FAIR adds two guard bins on each side; a
    value v lands at the bin coordinate ``s = (v - lo)/w + 2.5`` and is spread over the bins
    ``j = 0 .. bins + 3`` with the cubic B-spline weights ``β(s - j)`` (``β(0) = 2/3``); weights
    of bins outside that index range are dropped, as rhoSplineC does. The coordinate puts the
    range's first bin centre at index 3 and its last at ``bins + 2`` (FAIR's C estimator is
    shifted by half a bin against its own comment), so a value near ``hi`` loses up to 1/48 of
    its mass. ``ρ = (1/n) Σ_i β(s_T,i - j) β(s_R,i - k)`` (divided by the number of cells, not
    by its mass). Then

        ψ(ρ) = Σ ρ_T log(ρ_T + τ) + Σ ρ_R log(ρ_R + τ) - Σ ρ log(ρ + τ),   τ = 1e-6,

    and the Gauss–Newton weight is FAIR's heuristic scalar
    ``W = log2(n) · sqrt((bins_T + 4)(bins_R + 4))`` (so ``H_GN = W J_ρᵀ J_ρ``; it is not the
    Hessian of ψ, which is indefinite). Defaults are FAIR's: ``bins_T = 32``, ``bins_R = 30``.

    ``range_T``, ``range_R``: intensity ranges (lo < hi); ``None`` means [min Rc, max Rc] for
    both (FAIR assumes [0, 256] for both: pass ``(0, 256)`` to reproduce FAIR on 0–255 data).

    How it differs from :class:`MI` (the default, better for users): MI normalises the histogram
    by its mass and spreads values by a partition of unity over the range, so ψ is exactly the
    MI of the estimated density; it has no Gauss–Newton form and is minimised with L-BFGS or
    Newton–CG. This class gives FAIR's Gauss–Newton iterations (and FAIR's numbers), whose
    curvature is a heuristic. Memory O(n · (bins_T + bins_R)).
    """

    residual_radius: ClassVar[int | None] = None  # r_j mixes every cell: no cheap diagonal

    bins_T: int = 32
    bins_R: int = 30
    range_T: tuple[float, float] | None = None
    range_R: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check_histogram(self, 1, "")

    @property
    def shape(self) -> tuple[int, int]:
        """The joint histogram's shape, guard bins included."""
        return (self.bins_T + 4, self.bins_R + 4)

    def residual(self, Tc: Any, Rc: Any, domain: Domain) -> Any:
        xp = _check_images(Tc, Rc, domain)
        T, R = xp.reshape(Tc, (-1,)), xp.reshape(Rc, (-1,))
        range_T, range_R = _ranges(xp, self, R)
        W_T = _parzen_fair(xp, T, *range_T, self.bins_T)
        W_R = _parzen_fair(xp, R, *range_R, self.bins_R)
        joint = xp.matmul(xp.matrix_transpose(W_T), W_R) / domain.n
        return xp.reshape(joint, (-1,))

    def outer(self, r: Any, Rc: Any, domain: Domain) -> Any:
        xp = self._check_rho(r, Rc, domain)
        p = xp.reshape(r, self.shape)
        return _plogp(xp, xp.sum(p, axis=1)) + _plogp(xp, xp.sum(p, axis=0)) - _plogp(xp, p)

    def gn_weight(self, r: Any, Rc: Any, domain: Domain) -> Any:
        xp = self._check_rho(r, Rc, domain)
        return _full(xp, math.log2(domain.n) * math.sqrt(math.prod(self.shape)), r)

    def _check_rho(self, r: Any, Rc: Any, domain: Domain) -> Any:
        if not isinstance(domain, Domain):
            raise TypeError(f"domain must be a Domain, not {type(domain).__name__}")
        _check_array("r", r, (math.prod(self.shape),))
        _check_array("Rc", Rc, domain.m)
        if r.dtype != Rc.dtype:
            raise TypeError(f"r has dtype {r.dtype}, but Rc has dtype {Rc.dtype}")
        return array_api_compat.array_namespace(r, Rc)


_DISTANCES = {"ssd": SSD, "ncc": NCC, "ngf": NGF, "mi": MI, "mi-gn": MIGaussNewton}


def rescaled(dist: Distance, k: int) -> tuple[Distance, int] | None:
    """The distance ``D_k`` for intensities multiplied by s = 2^k and the power p with
    ``D_k(sT, sR) = s^p D(T, R)``; None for a distance whose scaling is unknown.

    SSD: p = 2. NCC: p = 0. NGF: p = 0 with the edge ε scaled by s (the default ε is a fraction
    of max |∇R| and scales by itself). MI: p = 0 with explicit intensity ranges scaled by s.
    s being a power of two, every floating-point operation of these distances commutes with the
    scaling, so D_k(sT, sR) / s^p equals D(T, R) bit for bit (barring overflow and underflow).
    """
    if type(dist) is SSD:
        return dist, 2
    if type(dist) is NCC:
        return dist, 0
    if type(dist) is NGF:
        if dist.edge is None:
            return dist, 0
        return dataclasses.replace(dist, edge=math.ldexp(dist.edge, k)), 0
    if type(dist) is MIGaussNewton:
        ranges = {
            name: (None if v is None else (math.ldexp(v[0], k), math.ldexp(v[1], k)))
            for name, v in (("range_T", dist.range_T), ("range_R", dist.range_R))
        }
        return dataclasses.replace(dist, **ranges), 0
    if type(dist) is MI:
        ranges = {
            name: (None if v is None else (math.ldexp(v[0], k), math.ldexp(v[1], k)))
            for name, v in (("range_T", dist.range_T), ("range_R", dist.range_R))
        }
        return MI(bins_T=dist.bins_T, bins_R=dist.bins_R, **ranges), 0
    return None


def distance(name: str, **options: Any) -> Distance:
    """The distance called ``name`` ("ssd", "ncc", "ngf", "mi", "mi-gn") with keyword ``options``.

    >>> distance("ngf", edge=0.5)
    NGF(edge=0.5)
    """
    if not isinstance(name, str) or name.lower() not in _DISTANCES:
        raise ValueError(f"name must be one of {sorted(_DISTANCES)}, got {name!r}")
    cls = _DISTANCES[name.lower()]
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for distance {name!r}; it takes "
            f"{allowed if allowed else 'no options'}"
        )
    return cls(**options)


# ------------------------------------------------------------------------------------ helpers


def _check_array(name: str, x: Any, shape: tuple[int, ...]) -> None:
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        raise TypeError(f"{name} must be an array, not {type(x).__name__}") from None
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, not {x.dtype}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, but must have shape {shape}")


def _check_pair(name: str, x: Any, Rc: Any, domain: Domain, *, residual: bool) -> Any:
    """Validate ``x`` (an image of shape ``domain.m``, or a residual of shape ``(prod(m),)``)
    and ``Rc`` (shape ``domain.m``, x's dtype); return their namespace.

    Only shapes and dtypes are read, so the checks also run while JAX traces (jit).
    """
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a Domain, not {type(domain).__name__}")
    _check_array(name, x, (domain.n,) if residual else domain.m)
    _check_array("Rc", Rc, domain.m)
    if x.dtype != Rc.dtype:
        raise TypeError(f"{name} has dtype {x.dtype}, but Rc has dtype {Rc.dtype}")
    return array_api_compat.array_namespace(x, Rc)


def _check_images(Tc: Any, Rc: Any, domain: Domain) -> Any:
    return _check_pair("Tc", Tc, Rc, domain, residual=False)


def _check_residual(r: Any, Rc: Any, domain: Domain) -> Any:
    return _check_pair("r", r, Rc, domain, residual=True)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _interval(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of numbers (lo, hi), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be finite with lo < hi, got {value!r}")
    return (lo, hi)


def _full(xp: Any, value: float, like: Any) -> Any:
    """A 0-d array holding ``value`` with ``like``'s dtype and device."""
    return xp.asarray(value, dtype=like.dtype, device=array_api_compat.device(like))


def _gradient(xp: Any, f: Any, h: tuple[float, ...], ends: float = 1.0) -> list[Any]:
    """∂f/∂x_k for each axis k: ``(f[i+1] - f[i-1]) / (2 h_k)`` inside, one-sided
    ``(f[1] - f[0]) / (ends · h_k)`` at the ends (``ends = 2``: FAIR's NGFdot.m)."""
    grads = []
    for k, hk in enumerate(h):

        def part(start, stop, k=k):
            return f[(slice(None),) * k + (slice(start, stop), ...)]

        pieces = [(part(1, 2) - part(0, 1)) / ends]
        if f.shape[k] > 2:
            pieces.append(0.5 * (part(2, None) - part(None, -2)))
        pieces.append((part(-1, None) - part(-2, -1)) / ends)
        grads.append(xp.concat(pieces, axis=k) / hk)
    return grads


def _check_histogram(dist: Any, minimum: int, note: str) -> None:
    """Validate and normalise the bin counts and ranges of a histogram distance."""
    for name in ("bins_T", "bins_R"):
        value = getattr(dist, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}{note}, got {value}")
        object.__setattr__(dist, name, int(value))
    for name in ("range_T", "range_R"):
        value = getattr(dist, name)
        if value is not None:
            object.__setattr__(dist, name, _interval(name, value))


def _ranges(xp: Any, dist: Any, R: Any) -> tuple[Any, Any]:
    """The intensity ranges of T and R: those given, else [min R, max R] (width 1 if R is
    constant)."""
    lo, hi = xp.min(R), xp.max(R)
    data_range = (lo, xp.where(hi > lo, hi, lo + 1.0))
    range_T = dist.range_T if dist.range_T is not None else data_range
    range_R = dist.range_R if dist.range_R is not None else data_range
    return range_T, range_R


def _parzen(xp: Any, v: Any, lo: Any, hi: Any, bins: int) -> Any:
    """Cubic B-spline Parzen weights ``β(s_i - j)``, shape ``(n, bins)`` (see :class:`MI`)."""
    return _spread(xp, 1.0 + (v - lo) / (hi - lo) * (bins - 3), bins)


def _parzen_fair(xp: Any, v: Any, lo: Any, hi: Any, bins: int) -> Any:
    """FAIR's rhoSplineC weights, shape ``(n, bins + 4)`` (see :class:`MIGaussNewton`)."""
    return _spread(xp, (v - lo) * (bins / (hi - lo)) + 2.5, bins + 4)


def _spread(xp: Any, s: Any, bins: int) -> Any:
    """``β(s_i - j)`` for the bins ``j = 0 .. bins - 1``: the cubic B-spline (``β = b/6``)
    centred at each coordinate ``s_i``; bins outside the range get nothing."""
    base = xp.floor(s)
    # offset of bin j from floor(s); exact small integers, so == is safe
    offset = xp.reshape(xp.arange(bins, dtype=s.dtype, device=array_api_compat.device(s)), (1, -1))
    offset = offset - xp.reshape(base, (-1, 1))
    w = xp.zeros_like(offset)
    for o, b in zip(OFFSETS, weights(s - base), strict=True):
        w = xp.where(offset == o, xp.reshape(b, (-1, 1)) / 6.0, w)
    return w


def _plogp(xp: Any, p: Any) -> Any:
    return xp.sum(p * xp.log(p + _LOG_TOL))


# ----------------------------------------------------------------- field of view (issue 14.1)


def fov_weight(y: Any, domain: Domain, width: float = 1.0) -> Any:
    """q(y) ∈ [0, 1]: how far the points ``y`` (shape ``(..., d)``, physical units) lie inside
    the box ω of ``domain``, the field of view of the image sampled there.

    q = Π_d s((y_d − a_d)/δ_d) s((b_d − y_d)/δ_d), s the C¹ smoothstep 3t² − 2t³ on [0, 1],
    δ_d = ``width`` cells: 0 outside ω, where an image is unknown rather than dark (FAIR's
    image models read 0 there, §3), 1 more than δ inside, C¹ in between so that an objective
    weighted by it stays differentiable in the transformation."""
    if not (isinstance(width, numbers.Real) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number of cells, got {width!r}")
    xp = array_api_compat.array_namespace(y)
    if y.shape[-1] != domain.dim:
        raise ValueError(f"y must have {domain.dim} coordinates in its last axis, got {y.shape}")
    q = None
    for k in range(domain.dim):
        d = width * domain.h[k]
        lo = xp.clip((y[..., k] - domain.lower[k]) / d, 0.0, 1.0)
        hi = xp.clip((domain.upper[k] - y[..., k]) / d, 0.0, 1.0)
        s = lo * lo * (3.0 - 2.0 * lo) * hi * hi * (3.0 - 2.0 * hi)
        q = s if q is None else q * s
    return q


# A floor on the in-view fraction mean(q²): keeps the normalisation defined when (almost)
# nothing is in view; far below any overlap a registration keeps.
FOV_FLOOR = 1e-3


@dataclass(frozen=True, kw_only=True)
class SSDInView(SSD):
    """SSD over the cells where the template is observed: ``r = q (T − R)/√s``,
    ``ψ(r) = ½ hd rᵀr``, ``W = hd``, with ``q = weight`` (e.g. :func:`fov_weight` of the
    transformed points: 0 where the template is sampled outside its own domain) and
    ``s = max(mean q², FOV_FLOOR)``.

    D = |Ω| · Σ hd q² (T − R)² / Σ hd q²: the mean squared difference over the observed cells,
    as ITK's and elastix's mean-squares metrics average over the samples that map inside the
    moving image (S. Klein et al., IEEE TMI 29 (2010) 196–205; The ITK Software Guide,
    "Mean Squares"). Without the normalisation, moving the template out of view would lower D
    just by dropping cells. ``weight=None`` (or q ≡ 1) is :class:`SSD`. The weight depends on
    the transformation, so a caller differentiating D through y passes q computed from y."""

    def residual(self, Tc: Any, Rc: Any, domain: Domain, weight: Any = None) -> Any:
        xp = _check_images(Tc, Rc, domain)
        r = xp.reshape(Tc - Rc, (-1,))
        if weight is None:
            return r
        _check_array("weight", weight, domain.m)
        q = xp.reshape(weight, (-1,))
        s = xp.mean(q * q)
        return r * q / xp.sqrt(xp.where(s > FOV_FLOOR, s, FOV_FLOOR))

    def __call__(self, Tc: Any, Rc: Any, domain: Domain, weight: Any = None) -> Any:
        return self.outer(self.residual(Tc, Rc, domain, weight), Rc, domain)
