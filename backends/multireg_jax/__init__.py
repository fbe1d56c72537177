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
        self._user_cache = jax.config.jax_compilation_cache_dir
        self.configure_cache()

    def configure_cache(self) -> None:
        """Point JAX's persistent compilation cache at multireg's folder (``multireg._cache``).

        Every program is cached (no minimum compile time): a registration runs tens of small
        programs, each cheap to store and to load. A folder the user gave JAX themselves wins
        unless ``MULTIREG_CACHE_DIR`` or ``multireg.set_cache_dir`` chose one.
        """
        from jax.experimental.compilation_cache import compilation_cache

        from multireg import _cache

        if self._user_cache and not _cache.explicitly_set():
            return
        folder = _cache.cache_dir("jax")
        config = self._jax.config
        if folder is None:
            config.update("jax_enable_compilation_cache", False)
        else:
            config.update("jax_enable_compilation_cache", True)
            config.update("jax_compilation_cache_dir", str(folder))
            config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            config.update("jax_compilation_cache_max_size", _cache.MAX_BYTES)
        compilation_cache.reset_cache()  # the next compilation opens the folder now in force

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
