"""Dtype conventions shared by the adapters (host-side, framework-free)."""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT_DTYPES = ("float32", "float64")


def float_dtype_name(dtype: Any, x: Any = None) -> str:
    """The name of the floating dtype an input is converted to.

    ``dtype=None`` keeps the precision of floating input (float32 stays float32) and makes
    everything else (integers, booleans, Python numbers, lists) float64, the solving default.
    ``dtype`` may be a name (``"float32"``), a NumPy dtype, or a framework dtype.
    """
    if dtype is None:
        kind = getattr(x, "dtype", None)
        name = _name(kind) if kind is not None else None
        return name if name in FLOAT_DTYPES else "float64"
    name = _name(dtype)
    if name not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, not {dtype!r}")
    return name


def _name(dtype: Any) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:
        # torch.float64 and similar: str() is "torch.float64"
        return str(dtype).rpartition(".")[2]
