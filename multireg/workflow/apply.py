"""Applying a registration: warp any image onto the reference grid, transform point sets.

A registration finds ``y`` that maps reference points ``x`` to template points ``y(x)`` (FAIR's
convention, book §2): the template ``T`` warped onto the reference grid is ``T(y(x))`` at the
reference's cell centres, and a landmark ``x`` of the reference corresponds to the template
landmark ``y(x)``. Both are computed here on the host (NumPy), after the registration, for any
image that lives on the template's grid (a label map, another modality, a mask) and any points.

:class:`Map` (:mod:`multireg.workflow.maps`, re-exported here) holds ``y`` in a form that can
be evaluated anywhere:
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

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from multireg import _checks
from multireg.grid import Domain
from multireg.interpolation import linear_interpolate, spline_coefficients, spline_interpolate
from multireg.workflow import itk, maps
from multireg.workflow.maps import (
    Map,
    TransformedPoints,
    as_domain,
    check_points,
    index_to_world,
    world_to_index,
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


# ---------------------------------------------------------------------------------- points


def read_points(path: str | os.PathLike, dim: int | None = None) -> np.ndarray:
    """A point list, shape ``(n, d)``: ``.npy``, or text (``.csv``, ``.txt``, ``.pts``): one point
    per line, numbers separated by commas or white space; ``#`` comments and a header line of
    names are skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            return check_points(str(path), np.load(path, allow_pickle=False), dim)
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
    return check_points(str(path), np.asarray(rows), dim)


def write_points(path: str | os.PathLike, points: Any, *, overwrite: bool = False) -> Path:
    """Write points (shape ``(n, d)``) as CSV with a header ``x1,x2[,x3]``, atomically."""
    from multireg import io

    p = check_points("points", points, None)
    header = ",".join(f"x{k + 1}" for k in range(p.shape[1]))
    lines = [header, *(",".join(repr(float(v)) for v in row) for row in p)]
    with io.atomic_path(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def as_map(transform_or_result: Any) -> Map:
    """A :class:`Map` from a Map, a RegistrationResult, a ``(Transform, w)`` pair, or a path
    (a ``multireg register`` folder or ``result.json``; an ITK ``.tfm``/``.txt``/``.h5``
    transform or a NIfTI displacement field, read by :mod:`multireg.workflow.itk`)."""
    return maps.as_map(transform_or_result, read_file=itk.read_map)


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
    y = mp(check_points("points", points, mp.dim))
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
    return data, as_domain(omega, data.shape)


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
    y = check_points("y", y, domain.dim)
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
