"""The map of a registration, ``y(x) = P(x) + u(x)``, evaluated anywhere: :class:`Map`, and
the conversions between world coordinates and voxel indices.

A registration finds ``y`` that maps reference points ``x`` to template points ``y(x)`` (FAIR's
convention, book §2). :class:`Map` holds ``y`` as the composition (by addition of displacements)
of a parametric part ``P`` (translation, rigid, affine, B-spline; the identity if absent) and a
displacement ``u`` sampled at the cell centres of a domain (the nonparametric part, relative to
``P``), d-linearly interpolated between the centres and held constant beyond the outer centres
(clamped; the convention of ITK's displacement fields inside their image). All coordinates are
world coordinates, in the units of ``omega``; :func:`index_to_world` and :func:`world_to_index`
convert to and from 0-based voxel indices (cell centres at ``a + (i + ½) h``).

This module reads no file format but multireg's own result folder (:meth:`Map.load`): the ITK
formats (:mod:`multireg.workflow.itk`) build Maps from here, and
:func:`multireg.workflow.apply.as_map` hands them to :func:`as_map` as its ``read_file``, so the
imports point one way (apply → itk → maps).

References: J. Modersitzki, *FAIR*, SIAM 2009, §2 (y maps reference to template) and ch. 3
(image models); the inverse by fixed-point iteration ``x ← x − A⁻¹ (y(x) − z)`` is the
classical one for displacement fields (M. Chen et al., "A simple fixed-point approach to invert
a deformation field", Med. Phys. 35(1), 2008), preconditioned by the linear part ``A`` of ``P``.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multireg import _checks
from multireg.grid import Domain
from multireg.transforms import (
    Affine,
    BSpline,
    MatrixTransform,
    Rigid,
    Transform,
    Translation,
)

__all__ = [
    "Map",
    "TransformedPoints",
    "as_domain",
    "as_map",
    "check_points",
    "index_to_world",
    "world_to_index",
]


# ---------------------------------------------------------------------------- coordinates


def as_domain(omega: Any, m: Any, name: str = "omega") -> Domain:
    """``omega`` as a Domain of ``m`` cells (a Domain is returned as it is); a bad ``omega``
    raises the Domain's error, prefixed by ``name``."""
    if isinstance(omega, Domain):
        return omega
    try:
        return Domain(tuple(float(v) for v in np.ravel(omega)), tuple(m))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from None


def check_points(name: str, points: Any, dim: int | None) -> np.ndarray:
    """``points`` on the host as float64 of shape ``(n, dim)`` (one point of shape ``(dim,)``
    becomes ``(1, dim)``; ``dim=None`` takes any d), finite; else a ValueError naming ``name``."""
    p = np.asarray(_checks.to_host(points), dtype=np.float64)
    if p.ndim == 1 and dim is not None and p.shape[0] == dim:
        p = p[None, :]
    if p.ndim != 2 or (dim is not None and p.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, d)"
        raise ValueError(f"{name} must have shape {want}, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains NaN or Inf")
    return p


def index_to_world(points: Any, domain: Domain) -> np.ndarray:
    """World coordinates ``a + (i + ½) h`` of 0-based (possibly fractional) voxel indices ``i``.

    ``points`` has shape ``(n, d)``; the cell centre of voxel ``i`` is at ``i`` (multireg's
    0-based convention, DESIGN.md §4; FAIR's 1-based index is ``i + 1``).
    """
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a Domain, not {type(domain).__name__}")
    p = check_points("points", points, domain.dim)
    return np.asarray(domain.lower) + (p + 0.5) * np.asarray(domain.h)


def world_to_index(points: Any, domain: Domain) -> np.ndarray:
    """The inverse of :func:`index_to_world`: ``(x − a) / h − ½``."""
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a Domain, not {type(domain).__name__}")
    p = check_points("points", points, domain.dim)
    return (p - np.asarray(domain.lower)) / np.asarray(domain.h) - 0.5


# -------------------------------------------------------------------------------------- map


def _clamped_linear(field: np.ndarray, domain: Domain, x: np.ndarray) -> np.ndarray:
    """d-linear interpolation of ``field`` (shape ``(*m, d)``, cell-centred) at ``x``, constant
    beyond the outer cell centres (ITK's and scipy's ``mode="nearest"``)."""
    from scipy.ndimage import map_coordinates

    xi = world_to_index(x, domain).T
    return np.stack(
        [
            map_coordinates(field[..., k], xi, order=1, mode="nearest")
            for k in range(field.shape[-1])
        ],
        axis=1,
    )


def _pre_transform(w: np.ndarray, dim: int) -> Transform:
    """The pre-registration's transformation from its parameter count (register() stores the
    parameters only; the counts differ: 2D 2/3/6, 3D 3/6/12)."""
    n = w.shape[0]
    if n == dim:
        return Translation(dim)
    if n == dim * (dim + 1):
        return Affine(dim)
    if (dim, n) in ((2, 3), (3, 6)):
        return Rigid(dim)
    raise ValueError(f"cannot tell the pre-registration of {n} parameters in {dim}D")


@dataclass(frozen=True, eq=False)
class Map:
    """A transformation ``y(x) = P(x) + u(x)`` in world coordinates (see the module docstring).

    ``transform``, ``w``: the parametric part ``P`` (a :class:`~multireg.transforms.Transform`
    and its parameters in multireg's layout), or None for the identity. ``domain``: the
    reference grid, on which :func:`multireg.workflow.apply.apply` writes by default and at
    whose cell centres ``displacement`` (shape ``(*domain.m, d)``, world units,
    ``u = y − P(x)``) is sampled, or None. Build one with :meth:`from_result`, :meth:`load` (a
    ``multireg register`` output folder) or :mod:`multireg.workflow.itk` (ITK transform files
    and displacement fields).
    """

    domain: Domain | None = None
    transform: Transform | None = None
    w: np.ndarray | None = None
    displacement: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.domain is not None and not isinstance(self.domain, Domain):
            raise TypeError(f"domain must be a Domain or None, not {type(self.domain).__name__}")
        if (self.transform is None) != (self.w is None):
            raise ValueError("transform and w must be given together")
        if self.transform is not None:
            if not isinstance(self.transform, Transform):
                raise TypeError(
                    f"transform must be a Transform, not {type(self.transform).__name__}"
                )
            w = np.asarray(_checks.to_host(self.w), dtype=np.float64).copy()
            if w.shape != (self.transform.n_params,):
                raise ValueError(
                    f"w must have shape ({self.transform.n_params},) for {self.transform!r}, "
                    f"got {w.shape}"
                )
            if not np.all(np.isfinite(w)):
                raise ValueError("w contains NaN or Inf")
            w.setflags(write=False)
            object.__setattr__(self, "w", w)
        if self.displacement is not None:
            if self.domain is None:
                raise ValueError("a displacement needs the domain of its grid")
            u = np.asarray(_checks.to_host(self.displacement), dtype=np.float64).copy()
            want = (*self.domain.m, self.domain.dim)
            if u.shape != want:
                raise ValueError(f"displacement must have shape {want}, got {u.shape}")
            if not np.all(np.isfinite(u)):
                raise ValueError("displacement contains NaN or Inf")
            u.setflags(write=False)
            object.__setattr__(self, "displacement", u)
        dims = {
            d
            for d in (
                None if self.domain is None else self.domain.dim,
                None if self.transform is None else self.transform.dim,
            )
            if d is not None
        }
        if len(dims) > 1:
            raise ValueError(
                f"the transform is {self.transform.dim}D but the domain is {self.domain.dim}D"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_result(cls, result: Any) -> Map:
        """The map of a :class:`~multireg.RegistrationResult` (finest level): ``P(x) = y(w, x)``
        for a parametric registration; for a nonparametric one, ``P`` the pre-registration (if
        any) and ``u = y − P(x)`` at the cell centres (``result.y``)."""
        from multireg.problems.registration import RegistrationResult

        if not isinstance(result, RegistrationResult):
            raise TypeError(f"result must be a RegistrationResult, not {type(result).__name__}")
        domain = result.levels[-1].domain
        if isinstance(result.transform, Transform):
            return cls(domain, result.transform, _checks.to_host(result.w))
        trafo = w = None
        x = domain.cell_centers()
        base = x
        if result.w is not None:
            w = np.asarray(_checks.to_host(result.w), dtype=np.float64)
            trafo = _pre_transform(w, domain.dim)
            base = np.asarray(trafo(w, x))
        y = np.asarray(_checks.to_host(result.y), dtype=np.float64)
        return cls(domain, trafo, w, (y - base).reshape(*domain.m, domain.dim))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Map:
        """The map of a ``multireg register`` run: its output folder or its ``result.json``
        (parameters in FAIR's layout; ``displacement.npz`` beside it for a nonparametric run)."""
        path = Path(path)
        file = path / "result.json" if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"{file}: no such file")
        try:
            info = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{file}: not a multireg result.json ({err})") from None
        if not isinstance(info, dict) or info.get("command") != "register":
            raise ValueError(f"{file}: not the result.json of 'multireg register'")
        try:
            domain = Domain(tuple(info["omega"]), tuple(info["m"]))
            settings = info["settings"]
            name = settings["transform"]
            params = info.get("parameters")
        except (KeyError, TypeError) as err:
            raise ValueError(f"{file}: result.json lacks {err}") from None
        w = None if params is None else np.asarray(params, dtype=np.float64)
        if name != "nonparametric":
            if w is None:
                raise ValueError(f"{file}: result.json has no parameters")
            if name == "bspline":
                trafo = BSpline(domain.omega, tuple(settings["p"]))
                w = np.asarray(trafo.from_fair(w))
            elif name in ("translation", "rigid", "affine"):
                trafo = {"translation": Translation, "rigid": Rigid, "affine": Affine}[name](
                    domain.dim
                )
            else:
                raise ValueError(f"{file}: unknown transform {name!r}")
            return cls(domain, trafo, w)
        npz = file.parent / "displacement.npz"
        if not npz.exists():
            raise FileNotFoundError(f"{npz}: no such file (the nonparametric displacement)")
        with np.load(npz) as data:
            total = np.asarray(data["displacement"], dtype=np.float64)  # y − x
        trafo = None
        if w is not None:
            pre = settings.get("pre_registration")
            trafo = (
                _pre_transform(w, domain.dim)
                if pre in (None, "none")
                else {"translation": Translation, "rigid": Rigid, "affine": Affine}[pre](domain.dim)
            )
        x = domain.cell_centers()
        shift = np.zeros_like(x) if trafo is None else np.asarray(trafo(w, x)) - x
        return cls(domain, trafo, w, total - shift.reshape(total.shape))

    # ------------------------------------------------------------------ evaluation
    @property
    def dim(self) -> int:
        return self.domain.dim if self.domain is not None else self.transform.dim

    @property
    def is_linear(self) -> bool:
        """``y = A x + b`` exactly (no displacement, a matrix transform or none)."""
        return self.displacement is None and (
            self.transform is None or isinstance(self.transform, MatrixTransform)
        )

    def linear_part(self) -> tuple[np.ndarray, np.ndarray]:
        """``(A, b)`` of the matrix transform ``P`` (the identity if there is none); for a
        B-spline ``P`` the identity (its linear part near the identity)."""
        if isinstance(self.transform, MatrixTransform):
            A, b = self.transform.matrix(self.w)
            return np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return np.eye(self.dim), np.zeros(self.dim)

    def __call__(self, x: Any) -> np.ndarray:
        """``y(x)`` for world points ``x`` of shape ``(n, d)``; returns shape ``(n, d)``."""
        x = check_points("x", x, self.dim)
        y = x if self.transform is None else np.asarray(self.transform(self.w, x))
        if self.displacement is not None:
            y = y + _clamped_linear(self.displacement, self.domain, x)
        return y

    def inverse(
        self, z: Any, *, tol: float | None = None, max_iter: int = 100
    ) -> TransformedPoints:
        """Points ``x`` with ``y(x) = z``.

        A linear map is inverted exactly, ``x = A⁻¹ (z − b)``. Otherwise by the fixed-point
        iteration ``x ← x − A⁻¹ (y(x) − z)`` from ``x = A⁻¹ (z − b)`` (Chen et al. 2008), which
        converges where the displacement's Lipschitz constant (relative to ``A``) is below 1,
        i.e. where the map does not fold. It stops when every residual ``|y(x) − z|`` is below
        ``tol`` (default ``1e-6`` of the smallest cell size, or of the map's scale) or after
        ``max_iter`` iterations; the result's ``converged`` says which.
        """
        z = check_points("points", z, self.dim)
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral):
            raise TypeError(f"max_iter must be an integer, not {type(max_iter).__name__}")
        if max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {max_iter}")
        if tol is None:
            scale = min(self.domain.h) if self.domain is not None else 1.0
            tol = 1e-6 * scale
        tol = _checks.positive("tol", tol)
        A, b = self.linear_part()
        try:
            A_inv = np.linalg.inv(A)
        except np.linalg.LinAlgError:
            raise ValueError("the map's linear part is singular: it has no inverse") from None
        x = (z - b) @ A_inv.T
        r = self(x) - z
        it = 0
        if not self.is_linear:
            while it < max_iter and np.max(np.linalg.norm(r, axis=1), initial=0.0) > tol:
                x = x - r @ A_inv.T
                r = self(x) - z
                it += 1
        residual = np.linalg.norm(r, axis=1)
        # a linear map's inverse is exact: its residual is round-off, reported all the same
        converged = bool(self.is_linear or np.all(residual <= tol))
        return TransformedPoints(x, residual, it, converged)


@dataclass(frozen=True)
class TransformedPoints:
    """Points mapped by :func:`multireg.workflow.apply.transform_points`; ``np.asarray(...)``
    gives ``points``.

    ``points``: shape ``(n, d)``, world units. ``residual``: per point ``|y(x) − z|`` for an
    inverse (0 for a forward map, which is evaluated directly). ``iterations``: fixed-point
    iterations of the inverse (0 when exact). ``converged``: every residual within tolerance.
    """

    points: np.ndarray
    residual: np.ndarray
    iterations: int
    converged: bool

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.points if dtype is None else self.points.astype(dtype)

    @property
    def max_residual(self) -> float:
        return float(np.max(self.residual, initial=0.0))


def as_map(transform_or_result: Any, *, read_file: Callable[[Path], Map] | None = None) -> Map:
    """A :class:`Map` from a Map, a RegistrationResult, a ``(Transform, w)`` pair, or a path:
    a ``multireg register`` folder or ``result.json`` (:meth:`Map.load`), any other file by
    ``read_file(path)`` (:func:`multireg.workflow.apply.as_map` passes the ITK reader,
    :func:`multireg.workflow.itk.read_map`); without ``read_file`` such a path is a ValueError."""
    from multireg.problems.registration import RegistrationResult

    obj = transform_or_result
    if isinstance(obj, Map):
        return obj
    if isinstance(obj, RegistrationResult):
        return Map.from_result(obj)
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], Transform):
        return Map(None, obj[0], obj[1])
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.is_dir() or path.name.lower().endswith(".json"):
            return Map.load(path)
        if read_file is None:
            raise ValueError(
                f"transform_or_result: {path} is not a multireg result folder or result.json"
            )
        return read_file(path)
    raise TypeError(
        "transform_or_result must be a Map, a RegistrationResult, a (Transform, w) pair or a "
        f"path, not {type(obj).__name__}"
    )
