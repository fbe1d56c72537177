"""Continuous image models built from data on a cell-centred grid: d-linear and cubic B-spline.

An image array ``data`` of shape ``domain.m`` holds samples at the cell centres. A point ``x``
(physical units, one row of an ``(n, d)`` array) has the index coordinates
``xi = (x - a) / h - 1/2``, so cell centres sit at the integers ``0 .. m_k - 1`` (FAIR maps to
``1 .. m_k``; the shift is the 0-based convention of DESIGN.md §4). Both models are zero outside
the data: the samples are extended by zeros before they are interpolated.

- ``linear``: d-linear interpolation (FAIR's ``linearInter``); continuous, piecewise smooth.
- ``spline``: cubic B-spline with coefficients from :func:`spline_coefficients` (FAIR's
  ``getSplineCoefficients`` and ``splineInter``); C² everywhere. The smoothing weight ``theta``
  (0 interpolates) is the scale parameter of multiscale registration and of the homotopy.

Derivatives with respect to the points, the data and ``theta`` come from the backend's automatic
differentiation; every kernel uses array-API operations only.

Reference: J. Modersitzki, *FAIR: Flexible Algorithms for Image Registration*, SIAM 2009, ch. 3
(image interpolation; §3.6 for the regularised spline coefficients).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from multireg import _bspline, _cache
from multireg.grid import Domain

__all__ = [
    "ImageModel",
    "image_model",
    "linear_interpolate",
    "spline_coefficients",
    "spline_interpolate",
]

KINDS = ("spline", "linear")
REGULARIZERS = ("moments", "gradient", "identity")


# ---------------------------------------------------------------------------------- checks


def _check_domain(domain: Any) -> None:
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a Domain, not {type(domain).__name__}")


def _check_image(xp: Any, data: Any, name: str, domain: Domain | None = None) -> None:
    """Static checks (shape and dtype only), so they also hold under ``jax.jit`` tracing."""
    if not xp.isdtype(data.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, not {data.dtype}")
    if domain is None:
        if data.ndim not in (1, 2, 3):
            raise ValueError(f"{name} must have 1, 2 or 3 dimensions, got shape {data.shape}")
    elif tuple(data.shape) != domain.m:
        raise ValueError(f"{name} has shape {tuple(data.shape)}, but domain.m = {domain.m}")


def _check_points(xp: Any, x: Any, domain: Domain) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"x must have a real floating dtype, not {x.dtype}")
    if x.ndim != 2 or x.shape[1] != domain.dim:
        raise ValueError(f"x must have shape (n, {domain.dim}) for this domain, got {x.shape}")


def _check_regularizer(regularizer: Any) -> None:
    if regularizer not in REGULARIZERS:
        raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}")


def _check_theta(theta: Any) -> None:
    """A Python number must be finite and >= 0; an array must be 0-d and floating."""
    if isinstance(theta, bool):
        raise TypeError("theta must be a real number or a 0-d floating array, not bool")
    if isinstance(theta, numbers.Real):
        if not math.isfinite(theta) or theta < 0:
            raise ValueError(f"theta must be finite and >= 0, got {theta!r}")
        return
    if not array_api_compat.is_array_api_obj(theta):
        raise TypeError(f"theta must be a real number or a 0-d array, not {type(theta).__name__}")
    if theta.ndim != 0:
        raise ValueError(f"theta must be a 0-d array, got shape {theta.shape}")
    if not array_api_compat.array_namespace(theta).isdtype(theta.dtype, "real floating"):
        raise TypeError(f"theta must have a real floating dtype, not {theta.dtype}")


def _namespace(**arrays: Any) -> Any:
    for name, a in arrays.items():
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"{name} must be an array, not {type(a).__name__}")
    return array_api_compat.array_namespace(*arrays.values())


def _index_coordinates(xp: Any, domain: Domain, x: Any, origin: float = 0.0) -> Any:
    """``xi + origin``, shape ``(n, d)``, where ``xi = (x - a) / h - 1/2`` (centres at 0..m_k-1)."""
    device = array_api_compat.device(x)
    h = xp.asarray(domain.h, dtype=x.dtype, device=device)
    shift = [a / hk + 0.5 - origin for a, hk in zip(domain.lower, domain.h, strict=True)]
    return x / h - xp.asarray(shift, dtype=x.dtype, device=device)


# ----------------------------------------------------------------------------------- linear


def linear_interpolate(data: Any, domain: Domain, x: Any) -> Any:
    """d-linear interpolation of ``data`` (shape ``domain.m``) at points ``x`` (shape ``(n, d)``).

    Returns shape ``(n,)``. The samples are extended by zeros and interpolated d-linearly
    (FAIR's ``linearInter``, ch. 3): inside the hull of the cell centres this is the usual
    d-linear interpolant; beyond the outer centres the value falls linearly to 0 over one cell,
    reaching 0 half a cell outside the domain (``xi_k = -1`` or ``m_k``), and is 0 further out.
    The model is therefore continuous everywhere, which an optimisation needs. It equals
    ``scipy.ndimage.map_coordinates(data, xi.T, order=1, mode="grid-constant")`` everywhere;
    ``mode="constant"`` agrees only inside the hull and jumps to 0 outside it, a discontinuity
    this model avoids.

    The derivative with respect to ``x`` (from AD) is the piecewise-constant slope; it jumps where
    a point crosses a cell centre along an axis (the model is C⁰ only).
    """
    xp = _namespace(data=data, x=x)
    _check_domain(domain)
    _check_image(xp, data, "data", domain)
    _check_points(xp, x, domain)
    return _cache.whole(functools.partial(_linear, domain), ("linear", domain), data, x)


def _linear(domain: Domain, data: Any, x: Any) -> Any:
    xp = array_api_compat.array_namespace(data, x)
    m, d = domain.m, domain.dim
    # One layer of zeros below and two above each axis: the upper corner of a point clipped to
    # the top of the band then still lies inside the array.
    padded = data
    for k in range(d):
        shape = [*padded.shape[:k], 1, *padded.shape[k + 1 :]]
        below = xp.zeros(shape, dtype=data.dtype, device=array_api_compat.device(data))
        shape[k] = 2
        above = xp.zeros(shape, dtype=data.dtype, device=array_api_compat.device(data))
        padded = xp.concat([below, padded, above], axis=k)
    strides = [math.prod(padded.shape[k + 1 :]) for k in range(d)]
    flat = xp.reshape(padded, (-1,))
    itype = _bspline.index_dtype(xp, x)
    u = _index_coordinates(xp, domain, x, origin=1.0)  # index into `padded`
    base, ts = 0, []
    for k in range(d):
        # Beyond [0, m_k + 1] the model is 0 with zero slope, which clipping keeps.
        s = xp.clip(u[:, k], 0.0, float(m[k] + 1))
        q = xp.floor(s)
        ts.append(s - q)
        base = base + xp.astype(q, itype) * strides[k]
    # corner values in C order of the corner bits (the last axis varies fastest) ...
    values = [
        xp.take(flat, base + sum(b * stride for b, stride in zip(bits, strides, strict=True)))
        for bits in itertools.product((0, 1), repeat=d)
    ]
    # ... then one linear interpolation per axis, last axis first
    for k in range(d - 1, -1, -1):
        pairs = zip(values[0::2], values[1::2], strict=True)
        values = [v0 + ts[k] * (v1 - v0) for v0, v1 in pairs]
    return values[0]


# ----------------------------------------------------------------------------------- spline


def _regularizer_matrix(regularizer: str, m: int) -> np.ndarray:
    """The ``m x m`` penalty matrix of one axis (host-side; depends on the size only).

    ``moments``: symmetric Toeplitz, first row ``[96, -54, 0, 6, 0, ...]``, the Gram matrix
    ``∫ b_i'' b_j''`` of the spline basis (= 36 × that of the cardinal B3), so ``cᵀ R c`` is the
    bending energy ``∫ (s'')²`` in index units. ``gradient``: ``DᵀD`` with ``D`` the
    ``(m-1) x m`` forward difference. ``identity``: ``I``.
    """
    if regularizer == "moments":
        row = np.zeros(m)
        row[: min(m, 4)] = [96.0, -54.0, 0.0, 6.0][:m]
        i = np.arange(m)
        return row[np.abs(i[:, None] - i[None, :])]
    if regularizer == "gradient":
        D = np.diff(np.eye(m), axis=0)
        return D.T @ D
    return np.eye(m)


def _normal_matrices(regularizer: str, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``BᵀB``, ``Bᵀ`` and the penalty ``R`` for ``B = tridiag(1, 4, 1)`` of size ``m``."""
    B = 4.0 * np.eye(m) + np.eye(m, k=1) + np.eye(m, k=-1)
    return B.T @ B, B.T, _regularizer_matrix(regularizer, m)


def spline_coefficients(data: Any, theta: Any = 0.0, *, regularizer: str = "moments") -> Any:
    """Cubic B-spline coefficients of ``data`` with smoothing weight ``theta`` (FAIR §3.6).

    Per axis k (size m_k), with ``B = tridiag(1, 4, 1)`` (the spline basis at the cell centres)
    and the penalty ``R`` of ``regularizer`` (see below), the coefficients solve
    ``(BᵀB + θ R) c = Bᵀ d`` along axis k, one axis after the other (tensor-product separable,
    as FAIR's ``getSplineCoefficients``). In 1D this minimises ``|B c - d|² + θ cᵀ R c``; in 2D
    and 3D it is the tensor product of these 1D smoothers.

    - ``"moments"``: ``cᵀ R c = ∫ (s'')²`` in index units (h is not included, so θ's effect
      depends on m); R is symmetric Toeplitz with first row ``[96, -54, 0, 6, 0, ...]``.
    - ``"gradient"``: ``R = DᵀD``, D the forward difference; ``"identity"``: ``R = I``.

    ``theta = 0`` interpolates: the spline through ``c`` reproduces ``data`` at the cell centres.
    ``theta`` may be a Python number (checked: finite, >= 0) or a 0-d floating array of ``data``'s
    namespace, in which case the result is differentiable with respect to it; an array's sign is
    not checked (that would need its value, which is unavailable under tracing).

    Returns an array of ``data``'s shape and dtype. Cost per axis: one ``m_k x m_k`` solve and one
    ``m_k x m_k`` matrix applied along the axis, ``O(m_k³ + N m_k)`` for N samples.
    """
    xp = _namespace(data=data)
    _check_image(xp, data, "data")
    _check_theta(theta)
    _check_regularizer(regularizer)
    dtype, device = data.dtype, array_api_compat.device(data)
    if not isinstance(theta, numbers.Real):
        if array_api_compat.array_namespace(theta) is not xp:
            raise TypeError("theta must be a Python number or an array of data's namespace")
        theta = xp.astype(theta, dtype)
    else:  # as data: another theta is not another program
        theta = xp.asarray(float(theta), dtype=dtype, device=device)
    return _cache.whole(
        functools.partial(_coefficients, regularizer), ("coefficients", regularizer), data, theta
    )


def _coefficients(regularizer: str, data: Any, theta: Any) -> Any:
    xp = array_api_compat.array_namespace(data, theta)
    dtype, device = data.dtype, array_api_compat.device(data)
    solves = {}  # axes of equal size share their solution operator
    coef = data
    for k, m_k in enumerate(data.shape):
        if m_k not in solves:
            BtB, Bt, R = (
                xp.asarray(a, dtype=dtype, device=device)
                for a in _normal_matrices(regularizer, m_k)
            )
            solves[m_k] = xp.linalg.solve(BtB + theta * R, Bt)
        coef = xp.moveaxis(xp.tensordot(solves[m_k], coef, axes=([1], [k])), 0, k)
    return coef


def spline_interpolate(coef: Any, domain: Domain, x: Any) -> Any:
    """Cubic B-spline ``s(x) = Σ_j coef[j] Π_k b(xi_k - j_k)`` at points ``x`` (shape ``(n, d)``).

    ``coef`` has shape ``domain.m`` (from :func:`spline_coefficients`) and is zero outside its
    index range; ``b`` is FAIR's cubic B-spline with ``b(0) = 4``, ``b(±1) = 1`` (FAIR §3.4,
    ``splineInter``). Returns shape ``(n,)``. C² everywhere, exactly 0 once a coordinate leaves
    ``-2 < xi_k < m_k + 1`` (1.5 cells beyond the domain's boundary).
    """
    xp = _namespace(coef=coef, x=x)
    _check_domain(domain)
    _check_image(xp, coef, "coef", domain)
    _check_points(xp, x, domain)
    return _cache.whole(functools.partial(_spline, domain), ("spline", domain), coef, x)


def _spline(domain: Domain, coef: Any, x: Any) -> Any:
    xp = array_api_compat.array_namespace(coef, x)
    return _bspline.evaluate(coef, _index_coordinates(xp, domain, x))


# ------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class ImageModel:
    """How data become a continuous image: ``kind`` ``"spline"`` or ``"linear"``.

    ``theta`` (a Python number >= 0) and ``regularizer`` are the spline's smoothing weight and
    penalty (:func:`spline_coefficients`); FAIR's linear model has no smoothing, so a linear model
    with ``theta != 0`` is an error. Use :meth:`coefficients` once per image (or per ``theta``) and
    :meth:`evaluate` at every set of points.
    """

    kind: str = "spline"
    theta: float = 0.0
    regularizer: str = "moments"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.theta, numbers.Real):
            raise TypeError(
                f"theta must be a Python number, not {type(self.theta).__name__} "
                "(pass an array theta to coefficients() to differentiate with respect to it)"
            )
        _check_theta(self.theta)
        _check_regularizer(self.regularizer)
        if self.kind == "linear" and self.theta != 0:
            raise ValueError(
                f"the linear model has no smoothing: theta must be 0, got {self.theta}"
            )
        object.__setattr__(self, "theta", float(self.theta))

    def coefficients(self, data: Any, theta: Any = None) -> Any:
        """Coefficients of ``data``: ``data`` itself (linear) or spline coefficients.

        ``theta`` overrides ``self.theta`` for a spline (a 0-d array makes the result
        differentiable with respect to it); a linear model accepts only ``None`` or 0.
        """
        xp = _namespace(data=data)
        _check_image(xp, data, "data")
        if self.kind == "linear":
            if theta is not None and not (isinstance(theta, numbers.Real) and theta == 0):
                raise ValueError("the linear model has no smoothing: theta must be None or 0")
            return data
        return spline_coefficients(
            data, self.theta if theta is None else theta, regularizer=self.regularizer
        )

    def evaluate(self, coef: Any, domain: Domain, x: Any) -> Any:
        """The image at points ``x`` (shape ``(n, d)``) from ``coef`` (shape ``domain.m``)."""
        if self.kind == "linear":
            return linear_interpolate(coef, domain, x)
        return spline_interpolate(coef, domain, x)


def image_model(kind: str = "spline", **options: Any) -> ImageModel:
    """An :class:`ImageModel` of ``kind`` with ``options`` (``theta``, ``regularizer``).

    A misspelt option is an error, never ignored.
    """
    unknown = sorted(set(options) - {"theta", "regularizer"})
    if unknown:
        raise TypeError(f"unknown image model option(s) {unknown}; valid: ['regularizer', 'theta']")
    return ImageModel(kind, **options)
