"""Argument checks for public entry points: fail before any work, naming the argument.

These read array values (NaN, constant images), so they run once at the boundary, never inside
functions that a backend traces or differentiates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np


def to_host(x: Any) -> np.ndarray:
    """A NumPy view of an array of any framework (for checks only)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        return np.from_dlpack(x)


CONTRAST_STEPS = 256
"""An image must span more than this many steps of its precision's resolution (eps·max|x|):
below that its intensity differences are at the level of the round-off of interpolating it."""


def detached(x: Any) -> Any:
    """``x`` without an autograd graph: a torch tensor that requires grad is detached (the
    solvers differentiate their own functions of the data, never through the caller's graph);
    every other array is returned as it is."""
    if getattr(x, "requires_grad", False) and hasattr(x, "detach"):
        return x.detach()
    return x


def image(
    name: str, x: Any, *, dims: Iterable[int] = (2, 3), dtype: str | None = None
) -> tuple[int, ...]:
    """Check an image array: real numbers (bool counts as 0/1), 2D or 3D, non-empty, finite,
    with contrast.

    Contrast: a float image must vary by more than ``CONTRAST_STEPS`` steps of its resolution,
    eps·max|x|, with eps that of its own dtype or of the working ``dtype``, whichever is
    coarser; a constant one, or one like 1 + 1e-15·noise, has nothing to register.
    """
    dims = tuple(dims)
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be an array, not {type(x).__name__}")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in dims:
        raise ValueError(
            f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {shape}"
        )
    if min(shape) < 2:
        raise ValueError(f"{name} must have at least 2 cells along every axis, got shape {shape}")
    host = to_host(x)
    if host.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, not {host.dtype}")
    if host.dtype.kind == "b":
        host = host.view(np.uint8)
    if host.dtype.kind == "f" and not np.all(np.isfinite(host)):
        raise ValueError(f"{name} contains NaN or Inf")
    lo, hi = host.min(), host.max()
    if lo == hi:
        raise ValueError(f"{name} is constant: there is nothing to register")
    if host.dtype.kind == "f":
        eps = float(np.finfo(host.dtype).eps)
        if dtype is not None:
            eps = max(eps, float(np.finfo(dtype).eps))
        magnitude = max(abs(float(lo)), abs(float(hi)))
        spread = float(hi) - float(lo)
        if spread <= CONTRAST_STEPS * eps * magnitude:
            raise ValueError(
                f"{name} has no contrast at this precision: its values span {spread:.3g} "
                f"around {magnitude:.3g}, fewer than {CONTRAST_STEPS} steps of its resolution "
                f"({eps:.2g} × {magnitude:.3g}); there is nothing to register"
            )
    return shape


def intensity_exponent(dtype: str, *arrays: Any) -> int:
    """0, or the k for which 2^k brings max|x| over ``arrays`` into [1/2, 1) when it lies
    outside [2^-L, 2^L], L = (the largest binary exponent of ``dtype``) / 8.

    Distances and their derivatives are products of up to about four intensity factors with
    sums over many cells (SSD's Gauss–Newton system is squared again in CG), so intensities
    near 1e300 overflow float64 and near 1e-310 lose their precision or vanish. Multiplying by
    a power of two is exact in binary floating point, so the scaled problem is the same
    problem in other units.
    """
    limit = np.finfo(dtype).maxexp // 8
    top = max(float(np.max(np.abs(to_host(a).astype(np.float64)))) for a in arrays)
    if 2.0**-limit <= top <= 2.0**limit:
        return 0
    return -math.frexp(top)[1]


def times_power_of_two(x: Any, k: int) -> Any:
    """x · 2^k in two factors, each representable even where 2^k is not (k up to ±2046)."""
    half = k // 2
    return (x * 2.0**half) * 2.0 ** (k - half)


def host_image(name: str, x: Any) -> np.ndarray:
    """A 2D or 3D array of real numbers (bool, integer or float) as NumPy, values unchecked: for
    label maps and images to show, which may be constant or hold any values."""
    if getattr(x, "shape", None) is None:
        raise TypeError(f"{name} must be an array, not {type(x).__name__}")
    a = np.asarray(to_host(x))
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D image, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, not {a.dtype}")
    return a


def same_shape(names: tuple[str, str], a: tuple[int, ...], b: tuple[int, ...]) -> None:
    if a != b:
        raise ValueError(f"{names[0]} has shape {a} but {names[1]} has shape {b}; they must match")


def choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v
