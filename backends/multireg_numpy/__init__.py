"""NumPy backend for multireg: the forward-only reference.

It runs the core's kernels on NumPy (through ``array_api_compat.numpy``) or on any other
array-API namespace passed as ``xp`` (the tests use ``array_api_strict`` to prove that the core uses
only the standard). It has no automatic differentiation: the derivative transforms raise
``NotImplementedError`` naming the backends that have them.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from multireg._dtypes import float_dtype_name

__all__ = ["NumpyBackend"]


class NumpyBackend:
    name = "numpy"
    requires: tuple[str, ...] = ("numpy",)
    extra = "numpy"
    differentiable = False

    @staticmethod
    def owns(x: Any) -> bool:
        # NumPy arrays are the neutral input format: they never select a backend by themselves.
        return False

    def __init__(self, xp: ModuleType | None = None) -> None:
        if xp is None:
            import array_api_compat.numpy as xp
        else:
            self.name = getattr(xp, "__name__", "numpy").rpartition(".")[2]
        self.xp = xp

    def __repr__(self) -> str:
        return f"NumpyBackend(xp={self.xp.__name__})"

    def asarray(self, x: Any, *, dtype: Any = None, device: Any = None) -> Any:
        name = float_dtype_name(dtype, x)
        if not isinstance(x, np.ndarray) and not np.isscalar(x) and hasattr(x, "__dlpack__"):
            x = np.from_dlpack(x)
        a = np.asarray(x, dtype=name)
        return self.xp.asarray(a, dtype=getattr(self.xp, name), device=device)

    def to_numpy(self, x: Any) -> np.ndarray:
        try:
            return np.asarray(x)
        except (TypeError, ValueError, RuntimeError):
            return np.from_dlpack(x)

    def _no_ad(self, what: str):
        raise NotImplementedError(
            f"the {self.name!r} backend is forward-only and has no {what}; "
            "use backend='torch' or backend='jax' for derivatives"
        )

    def value_and_grad(self, f):
        self._no_ad("gradient")

    def jvp(self, f, x, v):
        self._no_ad("Jacobian-vector product")

    def vjp(self, f, x):
        self._no_ad("vector-Jacobian product")

    def hvp(self, f, x, v):
        self._no_ad("Hessian-vector product")

    def jacobian(self, f):
        self._no_ad("Jacobian")

    def hessian(self, f):
        self._no_ad("Hessian")

    def vmap(self, f, in_axes: Any = 0):
        """Map ``f`` over an axis by a Python loop (same semantics as jax.vmap for arrays)."""
        xp = self.xp

        def mapped(*args):
            axes = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
            if len(axes) != len(args):
                raise ValueError(f"in_axes has {len(axes)} entries for {len(args)} arguments")
            sizes = {a.shape[ax] for a, ax in zip(args, axes) if ax is not None}
            if len(sizes) != 1:
                raise ValueError(f"mapped axes must have one size, got {sorted(sizes)}")
            (size,) = sizes
            outs = []
            for i in range(size):
                sliced = [
                    a if ax is None else a[(slice(None),) * ax + (i,)] for a, ax in zip(args, axes)
                ]
                outs.append(f(*sliced))
            if isinstance(outs[0], tuple):
                return tuple(xp.stack(list(o)) for o in zip(*outs))
            return xp.stack(outs)

        return mapped

    def jit(self, f):
        return f

    def sync(self, x):
        return x
