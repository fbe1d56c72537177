"""Applying a registration: warp any image onto the reference grid, transform point sets.

A registration finds ``y`` that maps reference points ``x`` to template points ``y(x)`` (FAIR's
convention, book §2): the template ``T`` warped onto the reference grid is ``T(y(x))`` at the
reference's cell centres, and a landmark ``x`` of the reference corresponds to the template
landmark ``y(x)``. Both are computed here on the host (NumPy), after the registration, for any
image that lives on the template's grid (a label map, another modality, a mask) and any points.

:class:`Map` holds ``y`` in a form that can be evaluated anywhere:
``y(x) = P(x) + u(x)``, the composition (by addition of displacements) of a parametric part
``P`` (translation, rigid, affine, B-spline; the identity if absent) and a displacement ``u``
sampled at the cell centres of a domain (the nonparametric part, relative to ``P``), d-linearly
interpolated between the centres and held constant beyond the outer centres (clamped; the
convention of ITK's displacement fields inside their image). A nonparametric registration
with a parametric pre-registration gives both parts: ``P`` the pre-registration, ``u`` the rest.
All coordinates are world coordinates, in the units of ``omega`` (mm for a NIfTI image read in
its world frame, :mod:`multireg.io`); :func:`index_to_world` and :func:`world_to_index` convert
to and from 0-based voxel indices (cell centres at ``a + (i + ½) h``).

References: J. Modersitzki, *FAIR*, SIAM 2009, §2 (y maps reference to template) and ch. 3
(image models); the inverse by fixed-point iteration ``x ← x − A⁻¹ (y(x) − z)`` is the
classical one for displacement fields (M. Chen et al., "A simple fixed-point approach to invert
a deformation field", Med. Phys. 35(1), 2008), preconditioned by the linear part ``A`` of ``P``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multireg import _checks
from multireg.grid import Domain
from multireg.interpolation import linear_interpolate, spline_coefficients, spline_interpolate
from multireg.transforms import (
    Affine,
    BSpline,
    MatrixTransform,
    Rigid,
    Transform,
    Translation,
)

__all__ = [
    "ORDERS",
    "Map",
    "TransformedPoints",
    "apply",
    "as_map",
    "index_to_world",
    "read_points",
    "sample",
    "transform_points",
    "world_to_index",
    "write_points",
]

ORDERS = ("nearest", "linear", "cubic")


# ---------------------------------------------------------------------------- coordinates


def _domain(omega: Any, m: Any, name: str = "omega") -> Domain:
    if isinstance(omega, Domain):
        return omega
    try:
        return Domain(tuple(float(v) for v in np.ravel(omega)), tuple(m))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from None


def _points(name: str, points: Any, dim: int | None) -> np.ndarray:
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
    p = _points("points", points, domain.dim)
    return np.asarray(domain.lower) + (p + 0.5) * np.asarray(domain.h)


def world_to_index(points: Any, domain: Domain) -> np.ndarray:
    """The inverse of :func:`index_to_world`: ``(x − a) / h − ½``."""
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a Domain, not {type(domain).__name__}")
    p = _points("points", points, domain.dim)
    return (p - np.asarray(domain.lower)) / np.asarray(domain.h) - 0.5


def read_points(path: str | os.PathLike, dim: int | None = None) -> np.ndarray:
    """A point list, shape ``(n, d)``: ``.npy``, or text (``.csv``, ``.txt``, ``.pts``): one point
    per line, numbers separated by commas or white space; ``#`` comments and a header line of
    names are skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            return _points(str(path), np.load(path, allow_pickle=False), dim)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read points ({err})") from None
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read points ({err})") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.replace(",", " ").split()
        try:
            rows.append([float(v) for v in fields])
        except ValueError:
            if rows:  # only a first line may be a header
                raise ValueError(f"{path}:{number}: not a row of numbers: {line!r}") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError(f"{path}: expected one point per line, all with the same count")
    return _points(str(path), np.asarray(rows), dim)


def write_points(path: str | os.PathLike, points: Any, *, overwrite: bool = False) -> Path:
    """Write points (shape ``(n, d)``) as CSV with a header ``x1,x2[,x3]``, atomically."""
    from multireg import io

    p = _points("points", points, None)
    header = ",".join(f"x{k + 1}" for k in range(p.shape[1]))
    lines = [header, *(",".join(repr(float(v)) for v in row) for row in p)]
    with io.atomic_path(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


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
    reference grid, on which :func:`apply` writes by default and at whose cell centres
    ``displacement`` (shape ``(*domain.m, d)``, world units, ``u = y − P(x)``) is sampled, or
    None. Build one with :meth:`from_result`, :meth:`load` (a ``multireg register`` output
    folder) or :mod:`multireg.itk` (ITK transform files and displacement fields).
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
        x = _points("x", x, self.dim)
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
        z = _points("points", z, self.dim)
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
    """Points mapped by :func:`transform_points`; ``np.asarray(...)`` gives ``points``.

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


def as_map(transform_or_result: Any) -> Map:
    """A :class:`Map` from a Map, a RegistrationResult, a ``(Transform, w)`` pair, or a path
    (a ``multireg register`` folder or ``result.json``; an ITK ``.tfm``/``.txt``/``.h5``
    transform or a NIfTI displacement field, read by :mod:`multireg.itk`)."""
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
        name = path.name.lower()
        if path.is_dir() or name.endswith(".json"):
            return Map.load(path)
        from multireg.workflow import itk

        if name.endswith((".nii", ".nii.gz")):
            return itk.read_displacement(path)
        return itk.read_transform(path)
    raise TypeError(
        "transform_or_result must be a Map, a RegistrationResult, a (Transform, w) pair or a "
        f"path, not {type(obj).__name__}"
    )


# ---------------------------------------------------------------------------------- points


def transform_points(
    transform_or_result: Any,
    points: Any,
    *,
    inverse: bool = False,
    tol: float | None = None,
    max_iter: int = 100,
) -> TransformedPoints:
    """Map world points through ``y`` (reference → template), or back with ``inverse=True``.

    ``points``: shape ``(n, d)`` (or ``(d,)`` for one point), in the units of ``omega``.
    Forward: ``y(x)``, e.g. reference landmarks to where they lie in the template. Inverse:
    ``x`` with ``y(x) = z``, exact for translation, rigid and affine maps, by preconditioned
    fixed-point iteration otherwise (:meth:`Map.inverse`; ``tol``, ``max_iter``), with the
    per-point residual ``|y(x) − z|`` and a ``converged`` flag in the result.
    """
    if not isinstance(inverse, bool):
        raise TypeError(f"inverse must be True or False, not {type(inverse).__name__}")
    mp = as_map(transform_or_result)
    if inverse:
        return mp.inverse(points, tol=tol, max_iter=max_iter)
    y = mp(_points("points", points, mp.dim))
    return TransformedPoints(y, np.zeros(y.shape[0]), 0, True)


# ---------------------------------------------------------------------------------- images


def _image_of(image: Any, omega: Any, fallback: Domain | None) -> tuple[np.ndarray, Domain]:
    from multireg import io

    if isinstance(image, io.Image):
        if omega is not None:
            raise ValueError("omega comes from the Image; do not pass both")
        return np.asarray(image.data), image.domain
    if getattr(image, "shape", None) is None:
        raise TypeError(f"image must be an array or an io.Image, not {type(image).__name__}")
    data = _checks.host_image("image", image)
    if omega is None:
        if fallback is None:
            raise ValueError("omega is needed: the map has no domain to take the image's from")
        omega = fallback.omega
    return data, _domain(omega, data.shape)


def _grid_of(like: Any, fallback: Domain) -> Domain:
    from multireg import io

    if like is None:
        return fallback
    if isinstance(like, Domain):
        return like
    if isinstance(like, io.Image):
        return like.domain
    raise TypeError(f"like must be a Domain, an io.Image or None, not {type(like).__name__}")


def sample(data: Any, domain: Domain, y: Any, *, order: str = "linear", fill: float = 0.0):
    """The image ``data`` (cell-centred on ``domain``) at world points ``y`` (shape ``(n, d)``).

    ``"nearest"``: the value of the voxel whose cell contains the point (ties to the higher
    index), ``fill`` outside the domain; values are copied, never computed, so a label map keeps
    its labels and dtype. ``"linear"``: FAIR's d-linear model (falls linearly to ``fill`` over
    the half cell beyond the outer centres); ``"cubic"``: the interpolating cubic B-spline
    (θ = 0, FAIR §3.4), ``fill`` beyond 1.5 cells outside. Both as
    :mod:`multireg.interpolation`, on ``data − fill``, so they equal the registration's models.
    """
    _checks.choice("order", order, ORDERS)
    data = np.asarray(_checks.to_host(data))
    y = _points("y", y, domain.dim)
    if order == "nearest":
        if data.dtype.kind in "biu" and np.asarray(fill).astype(data.dtype) != fill:
            raise ValueError(f"fill {fill} is not a value of the image's dtype {data.dtype}")
        idx = np.floor(world_to_index(y, domain) + 0.5).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(domain.m)), axis=1)
        flat = data.reshape(-1)[np.ravel_multi_index(tuple(np.where(inside, idx.T, 0)), domain.m)]
        return np.where(inside, flat, np.asarray(fill).astype(data.dtype))
    values = data.astype(np.float64) - fill
    if order == "linear":
        return np.asarray(linear_interpolate(values, domain, y)) + fill
    return np.asarray(spline_interpolate(spline_coefficients(values), domain, y)) + fill


def apply(
    transform_or_result: Any,
    image: Any,
    *,
    order: str = "linear",
    like: Any = None,
    omega: Any = None,
    fill: float = 0.0,
) -> np.ndarray:
    """Warp ``image`` (on the template's grid) onto the reference grid: ``image(y(x))``.

    ``transform_or_result``: a :class:`~multireg.RegistrationResult`, a :class:`Map`, a
    ``(Transform, w)`` pair, or a path (see :func:`as_map`). ``image``: an array of shape
    ``m_T`` (2D or 3D; any real dtype) or an :class:`multireg.io.Image`; it lives on ``omega``
    (default: the Image's, else the map's reference domain, as in :func:`multireg.register`
    where T and R share omega). ``order``: ``"nearest"`` for label maps (labels kept exactly:
    every output value is an input value or ``fill``), ``"linear"`` or ``"cubic"`` for
    intensities (see :func:`sample`). ``like``: the output grid (a Domain or an io.Image),
    default the map's reference domain. Returns a NumPy array of the grid's shape (the image's
    dtype for nearest, float64 otherwise). With ``order="linear"`` and the result of a
    registration run with ``image_model="linear"``, this is ``result.warped``.
    """
    _checks.choice("order", order, ORDERS)
    try:
        fill = float(fill)
    except (TypeError, ValueError):
        raise TypeError(f"fill must be a number, not {type(fill).__name__}") from None
    if not math.isfinite(fill):
        raise ValueError(f"fill must be finite, got {fill}")
    mp = as_map(transform_or_result)
    data, source = _image_of(image, omega, mp.domain)
    if source.dim != mp.dim:
        raise ValueError(f"image is {source.dim}D but the map is {mp.dim}D")
    grid = _grid_of(like, mp.domain if mp.domain is not None else source)
    if grid.dim != mp.dim:
        raise ValueError(f"like is {grid.dim}D but the map is {mp.dim}D")
    y = mp(grid.cell_centers())
    return sample(data, source, y, order=order, fill=fill).reshape(grid.m)
