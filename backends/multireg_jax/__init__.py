"""JAX backend for multireg.

Derivatives come from ``jax.value_and_grad``, ``jax.jvp``, ``jax.vjp``, ``jax.jacfwd`` and
``jax.hessian``; the Hessian-vector product is forward-over-reverse (``jvp`` of ``grad``); ``jit``
is ``jax.jit`` and ``vmap`` is ``jax.vmap``.

Double precision: JAX computes in float32 unless 64-bit mode is on. multireg solves in float64 by
default, so creating this backend turns 64-bit mode on (``jax.config.update("jax_enable_x64",
True)``, process-wide: JAX's own defaults then become 64-bit too). float32 arrays passed in, or
asked for with ``dtype="float32"``, stay float32.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from multireg._dtypes import float_dtype_name

__all__ = ["JaxBackend"]


class JaxBackend:
    name = "jax"
    requires: tuple[str, ...] = ("jax",)
    extra = "jax"
    differentiable = True

    @staticmethod
    def owns(x: Any) -> bool:
        return array_api_compat.is_jax_array(x)

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp

        if not jax.config.read("jax_enable_x64"):
            jax.config.update("jax_enable_x64", True)
        self._jax = jax
        self.xp = jnp  # jax.numpy implements the array API standard itself

    def __repr__(self) -> str:
        return "JaxBackend()"

    def asarray(self, x: Any, *, dtype: Any = None, device: Any = None) -> Any:
        jax = self._jax
        name = float_dtype_name(dtype, x)
        if not isinstance(x, (np.ndarray, jax.Array)) and not np.isscalar(x):
            if hasattr(x, "__dlpack__"):
                x = np.from_dlpack(x.detach() if hasattr(x, "detach") else x)
        out = self.xp.asarray(x, dtype=getattr(self.xp, name))
        return jax.device_put(out, device) if device is not None else out

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def value_and_grad(self, f):
        return self._jax.value_and_grad(f)

    def jvp(self, f, x, v):
        return self._jax.jvp(f, (x,), (v,))

    def vjp(self, f, x):
        out, pullback = self._jax.vjp(f, x)
        return out, lambda u: pullback(u)[0]

    def hvp(self, f, x, v):
        return self._jax.jvp(self._jax.grad(f), (x,), (v,))[1]

    def jacobian(self, f):
        return self._jax.jacfwd(f)

    def hessian(self, f):
        return self._jax.hessian(f)

    def vmap(self, f, in_axes: Any = 0):
        return self._jax.vmap(f, in_axes=in_axes)

    def jit(self, f):
        return self._jax.jit(f)

    def sync(self, x):
        return self._jax.block_until_ready(x)
