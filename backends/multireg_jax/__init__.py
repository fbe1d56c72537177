"""JAX backend for multireg.

Derivatives come from ``jax.value_and_grad``, ``jax.jvp``, ``jax.vjp``, ``jax.jacfwd`` and
``jax.hessian``; the Hessian-vector product is forward-over-reverse (``jvp`` of ``grad``); ``jit``
is ``jax.jit`` and ``vmap`` is ``jax.vmap``.

Double precision: JAX computes in float32 unless 64-bit mode is on. multireg solves in float64 by
default, so creating this backend turns 64-bit mode on (``jax.config.update("jax_enable_x64",
True)``, process-wide: JAX's own defaults then become 64-bit too). float32 arrays passed in, or
asked for with ``dtype="float32"``, stay float32.

Threads: XLA's CPU kernels that multireg's programs compile to (fused elementwise loops, gathers)
run on one thread; only its Eigen pool (matrix products, convolutions) is multi-threaded, sized
by the machine, and XLA offers no flag for its size. A 3-D elastic registration (32³) took
11.5 s with XLA's default and 11.7 s single-threaded, so the default is left alone. With
``threads=1`` or ``MULTIREG_THREADS=1`` (the command line's ``--threads 1``) the backend adds
``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS``, which XLA reads once, when it starts
its CPU client: it takes effect only if no JAX computation ran before the backend was created
(``threads`` then reads 1; otherwise None, XLA's own setting). Larger counts change nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import array_api_compat
import numpy as np

from multireg import _threads
from multireg._dtypes import float_dtype_name

__all__ = ["JaxBackend"]

_SINGLE_THREADED = "--xla_cpu_multi_thread_eigen=false"


def _xla_started() -> bool:
    """Has JAX created its backends (after which XLA_FLAGS is no longer read)?"""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge  # no public API tells this

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True  # cannot tell: do not claim a setting that may not take effect


class JaxBackend:
    name = "jax"
    requires: tuple[str, ...] = ("jax",)
    extra = "jax"
    differentiable = True
    nests_jit = True
    """A jitted function called while another is traced keeps its own traced program (JAX
    caches it by argument shapes), so shared sub-computations are traced once."""

    @staticmethod
    def owns(x: Any) -> bool:
        return array_api_compat.is_jax_array(x)

    def __init__(self, *, threads: int | None = None) -> None:
        self.threads = None
        if _threads.resolve(threads, default=False) == 1 and not _xla_started():
            flags = os.environ.get("XLA_FLAGS", "")
            if _SINGLE_THREADED not in flags:
                os.environ["XLA_FLAGS"] = f"{flags} {_SINGLE_THREADED}".strip()
            self.threads = 1
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
