"""Registration quality: label overlap (Dice), surface distance (HD95), landmark error (TRE)
and the regularity of the map (Jacobian determinant statistics), with stated conventions.

The reference is the Learn2Reg challenge's evaluation (A. Hering et al., "Learn2Reg: comprehensive
multi-task medical image registration challenge, dataset and evaluation in the era of deep
learning", IEEE TMI 42(3), 2023; its 2021 evaluation scripts): Dice and HD95 per label, averaged
over the labels present in both images; TRE in world units (mm); SDlogJ, the standard deviation
of log det ∇y with the determinant clipped to [1e-9, 1e9] and central differences cropped by two
voxels at the border; folding as the share of voxels with det ∇y ≤ 0. Where multireg differs
from that script, the function says so.

Coordinates: world units are those of ``omega`` (mm for NIfTI images read in their world frame);
index coordinates are 0-based voxel indices, cell centres at ``a + (i + ½) h``
(:func:`multireg.workflow.apply.index_to_world`). A *map* ``y`` gives template points ``y(x)``; a
*displacement* is ``u = y(x) − x``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from multireg import _checks, gridops
from multireg.grid import Domain
from multireg.gridops import fair_jacobian_determinant
from multireg.workflow.apply import as_map, index_to_world

__all__ = [
    "JacobianStats",
    "LabelScores",
    "PointErrors",
    "dice",
    "evaluate",
    "fair_jacobian_determinant",
    "hd95",
    "jacobian_stats",
    "tre",
]

SDLOGJ_CLIP = (1e-9, 1e9)


def _labels(name: str, x: Any) -> np.ndarray:
    a = np.asarray(_checks.to_host(x))
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D label map, got shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold integer labels")
        a = a.astype(np.int64)  # labels read from image files come as floats: 1.0 is label 1
    elif a.dtype.kind not in "biu":
        raise TypeError(f"{name} must hold integer labels, not {a.dtype}")
    return a


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _labels("a", a), _labels("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a has shape {a.shape} but b has shape {b.shape}; they must match")
    return a, b


def _which(a: np.ndarray, b: np.ndarray, labels: Any, background: Any) -> list:
    if labels is None:
        found = np.union1d(np.unique(a), np.unique(b))
        return [v.item() for v in found if background is None or v != background]
    return [np.asarray(v).item() for v in np.ravel(labels)]


@dataclass(frozen=True)
class LabelScores:
    """A score per label and their mean.

    ``per_label``: label → score, NaN for a label missing from either map (it has no overlap to
    measure). ``mean``: over the labels present in both maps (NaN if none), Learn2Reg's average.
    """

    per_label: dict
    mean: float

    def as_dict(self) -> dict:
        return {"mean": self.mean, "per_label": {str(k): v for k, v in self.per_label.items()}}


def dice(a: Any, b: Any, *, labels: Any = None, background: Any = 0) -> LabelScores:
    """Dice overlap per label, ``2 |A ∩ B| / (|A| + |B|)``, of label maps ``a`` and ``b``.

    ``a`` and ``b``: integer label maps of one shape (e.g. the warped moving labels and the fixed
    labels; the score is symmetric). ``labels``: the labels to score (default every value in
    either map except ``background``, 0 by default; None scores the background too). A label
    missing from either map gets NaN and is left out of the mean, as in Learn2Reg's evaluation;
    the mean is over the labels present in both.
    """
    a, b = _pair(a, b)
    per = {}
    for v in _which(a, b, labels, background):
        A, B = a == v, b == v
        na, nb = int(A.sum()), int(B.sum())
        per[v] = float("nan") if na == 0 or nb == 0 else 2.0 * int((A & B).sum()) / (na + nb)
    return LabelScores(per, _nanmean(per.values()))


def _nanmean(values) -> float:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    return float(v.mean()) if v.size else float("nan")


def _spacing(spacing: Any, dim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(dim)
    if isinstance(spacing, Domain):
        if spacing.dim != dim:
            raise ValueError(f"spacing is a {spacing.dim}D domain but the maps are {dim}D")
        return np.asarray(spacing.h)
    h = np.asarray(spacing, dtype=np.float64).ravel()
    if h.size == 1:
        h = np.repeat(h, dim)
    if h.size != dim or not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise ValueError(f"spacing must be {dim} positive numbers or a Domain, got {spacing!r}")
    return h


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (or on the image border)."""
    from scipy.ndimage import binary_erosion, generate_binary_structure

    cross = generate_binary_structure(mask.ndim, 1)
    return mask & ~binary_erosion(mask, structure=cross, border_value=0)


def _directed(src: np.ndarray, dst: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Distances from each voxel of ``src`` to the nearest voxel of ``dst`` (world units)."""
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(~dst, sampling=h)[src]


def hd95(
    a: Any,
    b: Any,
    *,
    spacing: Any = None,
    labels: Any = None,
    background: Any = 0,
    percentile: float = 95.0,
) -> LabelScores:
    """The robust (95th-percentile) Hausdorff distance per label, in world units.

    Convention (Learn2Reg's HD95, computed as MONAI's ``compute_hausdorff_distance(...,
    percentile=95)``): the surface of a label is its voxels with a face neighbour outside it;
    ``d(A→B)`` are the distances from each surface voxel centre of A to the nearest surface voxel
    centre of B (Euclidean, scaled by ``spacing``: a Domain, a number or one per axis; default
    1, i.e. index units); HD95 = ``max(P95 d(A→B), P95 d(B→A))`` with NumPy's linear percentile.
    Learn2Reg's script uses DeepMind's ``surface-distance``, which weights surface elements by
    their area; on voxel surfaces the two differ by a fraction of a voxel. A label missing from
    either map gets NaN and is left out of the mean.
    """
    a, b = _pair(a, b)
    h = _spacing(spacing, a.ndim)
    q = _checks.positive("percentile", percentile)
    if q > 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    per = {}
    for v in _which(a, b, labels, background):
        A, B = a == v, b == v
        if not A.any() or not B.any():
            per[v] = float("nan")
            continue
        sa, sb = _surface(A), _surface(B)
        per[v] = float(
            max(np.percentile(_directed(sa, sb, h), q), np.percentile(_directed(sb, sa, h), q))
        )
    return LabelScores(per, _nanmean(per.values()))


@dataclass(frozen=True)
class PointErrors:
    """Landmark errors: ``distances`` per point (world units) and their summary."""

    distances: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.distances))

    @property
    def std(self) -> float:
        return float(np.std(self.distances))

    @property
    def median(self) -> float:
        return float(np.median(self.distances))

    @property
    def max(self) -> float:
        return float(np.max(self.distances))

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "median": self.median,
            "max": self.max,
            "n": int(self.distances.size),
            "per_point": self.distances.tolist(),
        }


def tre(
    fixed: Any,
    moving: Any,
    *,
    transform: Any = None,
    units: str = "world",
    domain: Domain | None = None,
) -> PointErrors:
    """Target registration error ``|y(x_i) − z_i|`` in world units.

    ``fixed``: landmarks ``x_i`` of the reference (fixed) image; ``moving``: the corresponding
    landmarks ``z_i`` of the template (moving) image; shapes ``(n, d)``. ``transform``: the map
    ``y`` (anything :func:`multireg.workflow.apply.as_map` takes; default the identity, which gives
    the initial error). ``units``: ``"world"`` (default) or ``"index"`` (0-based voxel indices of
    ``domain``, converted to world before anything else). As Learn2Reg, the mean over points is
    reported together with the per-point distances.
    """
    _checks.choice("units", units, ("world", "index"))
    x = np.asarray(_checks.to_host(fixed), dtype=np.float64)
    z = np.asarray(_checks.to_host(moving), dtype=np.float64)
    if x.ndim != 2 or z.shape != x.shape or x.shape[0] == 0:
        raise ValueError(
            f"fixed and moving must be non-empty point lists of one shape (n, d), got "
            f"{x.shape} and {z.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(z))):
        raise ValueError("fixed or moving contains NaN or Inf")
    if units == "index":
        if domain is None:
            raise ValueError("units='index' needs the domain of the voxel grid")
        x, z = index_to_world(x, domain), index_to_world(z, domain)
    if transform is not None:
        x = as_map(transform)(x)
    return PointErrors(np.linalg.norm(x - z, axis=1))


@dataclass(frozen=True)
class JacobianStats:
    """Statistics of ``det ∇y`` on the cells (``det``, shape m, cropped by ``crop`` per side).

    ``sdlogj``: std of ``log(clip(det, 1e-9, 1e9))``. ``folded_percent``: 100 × share of cells
    with ``det ≤ 0``. ``det_min``, ``det_max``, ``det_mean``.
    """

    det: np.ndarray = field(repr=False)
    sdlogj: float
    folded_percent: float
    det_min: float
    det_max: float
    det_mean: float

    def as_dict(self) -> dict:
        return {
            "sdlogj": self.sdlogj,
            "folded_percent": self.folded_percent,
            "det_min": self.det_min,
            "det_max": self.det_max,
            "det_mean": self.det_mean,
            "cells": int(self.det.size),
        }


def jacobian_stats(
    transform_or_field: Any,
    *,
    domain: Domain | None = None,
    kind: str = "displacement",
    units: str = "world",
    crop: int = 2,
    det_method: str = "multireg",
) -> JacobianStats:
    """``det ∇y`` at the cell centres and its statistics (SDlogJ, % folded, min, max, mean).

    ``transform_or_field``: a map (a RegistrationResult, :class:`~multireg.Map`, ``(Transform,
    w)``, a path; sampled at the cell centres of ``domain``, default the map's), or an array of
    shape ``(*m, d)`` on ``domain``: with ``kind="displacement"`` (default) ``u = y − x``, with
    ``kind="map"`` ``y`` itself; ``units="index"`` for an array in voxel units (displacement in
    voxels, or a map in 0-based indices). The Jacobian is by central differences of ``y`` (one-sided
    in the outer cells; :func:`multireg.gridops.jacobian_determinant`, FAIR's det ∇y on a
    cell-centred grid); an affine map gives ``det A`` exactly. ``crop`` cells are dropped on each
    side before the statistics (Learn2Reg crops 2: the one-sided or zero-padded differences
    at the border are not the map's). Learn2Reg computes the differences in voxel units, which
    gives the same determinant as world units (both ∇ and u scale by h).

    Some copies of Learn2Reg's 2021 script add 3 to the determinant before the log; that is not
    the log of the Jacobian and is not done here.

    ``det_method="fair"``: FAIR's det ∇y instead (:func:`fair_jacobian_determinant` of the
    cell-centred map: carried to the nodes, then the deformed cells' volumes), FAIR's count of
    folded cells.
    """
    _checks.choice("kind", kind, ("displacement", "map"))
    _checks.choice("det_method", det_method, ("multireg", "fair"))
    _checks.choice("units", units, ("world", "index"))
    if isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 0:
        raise ValueError(f"crop must be a non-negative integer, got {crop!r}")
    if hasattr(transform_or_field, "shape") and not isinstance(transform_or_field, tuple):
        if domain is None:
            raise ValueError("domain is needed for a field given as an array")
        f = np.asarray(_checks.to_host(transform_or_field), dtype=np.float64)
        want = (*domain.m, domain.dim)
        if f.shape != want:
            raise ValueError(f"the field must have shape {want} on this domain, got {f.shape}")
        if not np.all(np.isfinite(f)):
            raise ValueError("the field contains NaN or Inf")
        h, a = np.asarray(domain.h), np.asarray(domain.lower)
        x = domain.cell_centers().reshape(want)
        if kind == "displacement":
            y = x + (f * h if units == "index" else f)
        else:
            y = a + (f + 0.5) * h if units == "index" else f
    else:
        mp = as_map(transform_or_field)
        domain = domain if domain is not None else mp.domain
        if domain is None:
            raise ValueError("domain is needed: the map has no grid of its own")
        y = mp(domain.cell_centers()).reshape(*domain.m, domain.dim)
    if min(domain.m) < 2:
        raise ValueError(f"the grid needs at least 2 cells per axis, got {domain.m}")
    stacked = gridops.merge([y[..., k] for k in range(domain.dim)])
    if det_method == "fair":
        det = fair_jacobian_determinant(stacked, domain, "cell-centered")
    else:
        det = np.asarray(gridops.jacobian_determinant(stacked, domain, "cell-centered"))
    if crop and min(domain.m) > 2 * crop:
        det = det[tuple(slice(crop, -crop) for _ in range(domain.dim))]
    logj = np.log(np.clip(det, *SDLOGJ_CLIP))
    return JacobianStats(
        det=det,
        sdlogj=float(np.std(logj)),
        folded_percent=float(100.0 * np.mean(det <= 0)),
        det_min=float(det.min()),
        det_max=float(det.max()),
        det_mean=float(det.mean()),
    )


def evaluate(
    transform_or_result: Any = None,
    *,
    fixed_labels: Any = None,
    warped_labels: Any = None,
    fixed_points: Any = None,
    moving_points: Any = None,
    domain: Domain | None = None,
    labels: Any = None,
) -> dict:
    """Every metric the inputs allow, as a JSON-able dict.

    ``fixed_labels`` and ``warped_labels`` (the moving labels already warped onto the fixed
    grid, e.g. by :func:`multireg.apply` with ``order="nearest"``): ``dice`` and ``hd95`` (in the
    units of ``domain``, default index units). ``fixed_points`` and ``moving_points`` (world):
    ``tre`` through the map (``tre_initial``: without it). The map: ``jacobian`` (on ``domain``,
    default the map's grid).
    """
    out: dict = {}
    if (fixed_labels is None) != (warped_labels is None):
        raise ValueError("give both fixed_labels and warped_labels, or neither")
    if (fixed_points is None) != (moving_points is None):
        raise ValueError("give both fixed_points and moving_points, or neither")
    mp = None if transform_or_result is None else as_map(transform_or_result)
    if fixed_labels is not None:
        out["dice"] = dice(warped_labels, fixed_labels, labels=labels).as_dict()
        out["hd95"] = hd95(warped_labels, fixed_labels, spacing=domain, labels=labels).as_dict()
        out["hd95"]["units"] = "world" if domain is not None else "index"
    if fixed_points is not None:
        out["tre_initial"] = tre(fixed_points, moving_points).as_dict()
        if mp is not None:
            out["tre"] = tre(fixed_points, moving_points, transform=mp).as_dict()
    if mp is not None and (domain is not None or mp.domain is not None):
        out["jacobian"] = jacobian_stats(mp, domain=domain if mp.domain is None else None).as_dict()
    return out
