"""The checks of :func:`multireg.problems.homotopy.homotopy`'s options: the transformation, the
schedule of θ, counts, and the starting parameters of several paths.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from multireg import _checks
from multireg.grid import Domain
from multireg.transforms import Transform
from multireg.transforms import transform as make_transform

TRANSFORMS = ("translation", "rigid", "affine", "bspline")


def _starts(starts: Any, trafo: Transform, domain: Domain) -> list[Any]:
    """The starting parameters of ``starts`` (validated; NumPy or the caller's arrays)."""
    if isinstance(starts, bool):
        raise TypeError("starts must be an int or a sequence of parameter vectors, not bool")
    if isinstance(starts, (int, np.integer)):
        n = _count("starts", starts, 1)
        if domain.dim != 2 or trafo.name not in ("rigid", "affine"):
            raise ValueError(
                "starts=n (rotations about the centre) needs a 2D rigid or affine transform; "
                "give a sequence of parameter vectors instead"
            )
        return [_rotation(trafo, domain, 360.0 * k / n) for k in range(n)]
    if isinstance(starts, str) or not isinstance(starts, Sequence | np.ndarray):
        raise TypeError(
            f"starts must be an int or a sequence of parameter vectors, not {type(starts).__name__}"
        )
    if len(starts) == 0:
        raise ValueError("starts must hold at least one parameter vector")
    return list(starts)


def _rotation(trafo: Transform, domain: Domain, degrees: float) -> np.ndarray:
    """Parameters of the map y = Q(x − c) + c (rotation by ``degrees`` about the domain's centre c)
    for a 2D rigid or affine transform, found by least squares on the grid (exact for both)."""
    c = np.array(domain.lower) + np.array(domain.extent) / 2
    a = math.radians(degrees)
    Q = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    x = domain.cell_centers()
    target = (x - c) @ Q.T + c
    if trafo.name == "affine":
        # FAIR's affine2D: y1 = w1 x1 + w2 x2 + w3, y2 = w4 x1 + w5 x2 + w6
        return np.array([Q[0, 0], Q[0, 1], c[0] - Q[0] @ c, Q[1, 0], Q[1, 1], c[1] - Q[1] @ c])
    w = np.asarray(trafo.identity(np), dtype=float)
    for phi in (a, -a):  # the sign convention of the angle is the transform's own
        b = target[0] - np.asarray(trafo(np.array([phi, 0.0, 0.0]), x[:1]))[0]
        w = np.array([phi, *b])
        if np.allclose(np.asarray(trafo(w, x)), target, atol=1e-9 * (1 + np.abs(target).max())):
            return w
    raise ValueError(f"cannot express a rotation by {degrees}° with the transform {trafo.name}")


# -------------------------------------------------------------------------------- validation


def _make_transform(transform: Any, domain: Domain, p: Any) -> Transform:
    if isinstance(transform, Transform):
        if transform.dim != domain.dim:
            raise ValueError(f"transform is {transform.dim}D but the images are {domain.dim}D")
        if p is not None:
            raise ValueError("p (the control grid) applies to transform='bspline' only")
        return transform
    _checks.choice("transform", transform, TRANSFORMS)
    if transform == "bspline":
        if p is None:
            raise ValueError("transform='bspline' needs p, the control grid size, e.g. p=(8, 8)")
        return make_transform("bspline", omega=domain.omega, p=p)
    if p is not None:
        raise ValueError("p (the control grid) applies to transform='bspline' only")
    return make_transform(transform, dim=domain.dim)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return int(value)


def _schedule(thetas: Any, theta_range: Any, n_steps: Any) -> list[float] | tuple[str, int]:
    """The θ values, strictly decreasing and positive; ``("auto", n)`` when θ_max is to be
    chosen from the data (neither ``thetas`` nor ``theta_range`` given)."""
    if thetas is not None:
        if theta_range is not None or n_steps is not None:
            raise ValueError("give either thetas or theta_range (with n_steps), not both")
        try:
            values = [float(t) for t in np.asarray(thetas, dtype=float).reshape(-1)]
        except (TypeError, ValueError):
            raise TypeError(f"thetas must be a sequence of numbers, got {thetas!r}") from None
        if not values:
            raise ValueError("thetas must hold at least one value")
    else:
        n = 40 if n_steps is None else _count("n_steps", n_steps, 2)
        if theta_range is None:
            return ("auto", n)
        hi, lo = _pair(theta_range)
        if not (math.isfinite(hi) and math.isfinite(lo) and hi > lo > 0):
            raise ValueError(f"theta_range must be (hi, lo) with hi > lo > 0, got {theta_range!r}")
        values = [float(v) for v in np.geomspace(hi, lo, n)]
    if not all(math.isfinite(t) and t > 0 for t in values):
        raise ValueError(f"thetas must be finite and > 0, got {values}")
    if any(b >= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"thetas must be strictly decreasing (large θ first), got {values}")
    return values


def _pair(value: Any) -> tuple[float, float]:
    try:
        hi, lo = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"theta_range must be a pair (hi, lo), got {value!r}") from None
    return hi, lo
