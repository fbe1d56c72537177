"""Argument checks for public entry points: fail before any work, naming the argument.

These read array values (NaN, constant images), so they run once at the boundary, never inside
functions that a backend traces or differentiates.
"""

from __future__ import annotations

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


def image(name: str, x: Any, *, dims: Iterable[int] = (2, 3)) -> tuple[int, ...]:
    """Check an image array: real numbers, 2D or 3D, non-empty, finite, not constant."""
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
    if host.dtype.kind == "f" and not np.all(np.isfinite(host)):
        raise ValueError(f"{name} contains NaN or Inf")
    if np.ptp(host) == 0:
        raise ValueError(f"{name} is constant: there is nothing to register")
    return shape


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
