"""PyTorch backend for multireg (``torch.func`` transforms).

Derivatives are functional transforms from ``torch.func`` (``grad_and_value``, ``vjp``,
``jacrev``, ``vmap``), in reverse mode only. torch's forward mode is avoided: in torch 2.13 an
operation between a dual tensor and a plain one (a constant image, a weight) is run through
Python reference decompositions (the plain tensor's tangent is an efficient zero tensor), about
250 µs per operation instead of 2–5 µs; a forward-mode Hessian of the homotopy's 32² objective took
70 ms against 5–10 ms in reverse-over-reverse. Hence:

* ``jvp`` by the double-vjp identity: u ↦ Jᵀu is linear, and its own vjp at any u applied to v
  is J v (one forward, one reverse pass, and the reverse pass of that);
* ``hvp`` reverse-over-reverse (the vjp of the gradient; the Hessian is symmetric);
* ``jacobian`` the double-vjp jvp vmapped over the p input directions (for few parameters and
  many outputs, as the parametric Gauss–Newton matrices need), ``hessian`` ``jacrev(grad)``.

``jit`` is the identity unless the backend is created with ``TorchBackend(compile=True)``, which
wraps functions in ``torch.compile``. Arrays stay on the device they came on.

Threads: torch sizes its CPU intra-op pool by the machine's cores, which oversubscribes a shared
machine (a 3-D elastic registration took 215 s with torch's default and 9.4 s with one thread).
Creating this backend therefore sets ``torch.set_num_threads`` (process-wide) to, in this order:
the ``threads=`` argument; ``MULTIREG_THREADS`` (the command line's ``--threads N`` sets it);
nothing when ``OMP_NUM_THREADS`` is set (torch follows it); else half the CPUs this process may
use, at most 4 (:func:`multireg._threads.default_threads`, with the measurements behind it).
``torch.set_num_threads`` called after the backend was created wins. Interop threads and GPU
work are not affected.

NumPy input of any layout is accepted (negative strides as in FAIR's ``flipud(img).T``,
non-native byte order, read-only or non-contiguous memory); where torch cannot view it, the
adapter copies it, and it never writes to the user's array.
"""

from __future__ import annotations

import os
from typing import Any

import array_api_compat
import numpy as np

from multireg import _threads
from multireg._dtypes import float_dtype_name

__all__ = ["TorchBackend"]

# Read once, before this adapter may set it to multireg's cache folder.
_USER_INDUCTOR_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


class TorchBackend:
    name = "torch"
    requires: tuple[str, ...] = ("torch",)
    extra = "torch"
    differentiable = True

    @staticmethod
    def owns(x: Any) -> bool:
        return array_api_compat.is_torch_array(x)

    def __init__(self, *, compile: bool = False, threads: int | None = None) -> None:
        n = _threads.resolve(threads)  # a bad MULTIREG_THREADS fails before torch is imported
        import array_api_compat.torch as xp
        import torch
        import torch.func

        self._torch = torch
        self._func = torch.func
        self.xp = xp
        self.compile = compile
        if n is not None:
            torch.set_num_threads(n)
        self.threads = torch.get_num_threads()

    def __repr__(self) -> str:
        return f"TorchBackend(compile={self.compile})"

    def asarray(self, x: Any, *, dtype: Any = None, device: Any = None) -> Any:
        torch = self._torch
        dt = getattr(torch, float_dtype_name(dtype, x))
        if isinstance(x, torch.Tensor):
            return x.to(dtype=dt, device=device if device is not None else x.device)
        if not isinstance(x, np.ndarray) and not np.isscalar(x) and hasattr(x, "__dlpack__"):
            x = np.from_dlpack(x)  # another framework's array, e.g. JAX
        a = np.asarray(x, dtype=float_dtype_name(dtype, x))  # native byte order, as torch needs
        if any(s < 0 for s in a.strides) or not a.flags.writeable:
            # torch takes neither negative strides (FAIR's flipud(img).T) nor read-only memory;
            # a copy of our own, so that the user's array is never written to
            a = a.copy()
        return torch.as_tensor(a, dtype=dt, device=device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def value_and_grad(self, f):
        grad_and_value = self._func.grad_and_value(f)

        def value_and_grad(x):
            g, v = grad_and_value(x)
            return v, g

        return value_and_grad

    def jvp(self, f, x, v):
        out, pull_back = self._transpose(f, x)
        return out, pull_back(v)

    def _transpose(self, f, x):
        """f(x) and v ↦ J v, as the vjp of u ↦ Jᵀu (linear in u, so taken at u = 0)."""
        func = self._func
        out, pullback = func.vjp(f, x)
        _, transpose = func.vjp(lambda u: pullback(u)[0], self._torch.zeros_like(out))
        return out, lambda v: transpose(v)[0]

    def vjp(self, f, x):
        out, pullback = self._func.vjp(f, x)
        return out, lambda u: pullback(u)[0]

    def hvp(self, f, x, v):
        _, pullback = self._func.vjp(self._func.grad(f), x)
        return pullback(v)[0]

    def jacobian(self, f):
        torch = self._torch

        def jacobian(x):
            out, jv = self._transpose(f, x)
            n = x.numel()
            basis = torch.eye(n, dtype=x.dtype, device=x.device).reshape((n, *x.shape))
            columns = self._func.vmap(jv, out_dims=-1)(basis)  # out.shape + (n,)
            return columns.reshape((*out.shape, *x.shape))

        return jacobian

    def hessian(self, f):
        return self._func.jacrev(self._func.grad(f))

    def vmap(self, f, in_axes: Any = 0):
        return self._func.vmap(f, in_dims=in_axes)

    def jit(self, f):
        if not self.compile:
            return f
        self._configure_compile_cache()
        return self._torch.compile(f, dynamic=False)

    def _configure_compile_cache(self) -> None:
        """torch.compile's on-disk caches (Inductor's FX-graph and kernel caches) in multireg's
        folder (``multireg._cache``), read when a function is compiled. A
        ``TORCHINDUCTOR_CACHE_DIR`` the user set wins unless multireg's folder was chosen
        explicitly; with the cache off, the FX-graph cache is turned off."""
        from torch._inductor import config

        from multireg import _cache

        if _USER_INDUCTOR_DIR is not None and not _cache.explicitly_set():
            return
        folder = _cache.cache_dir("torch")
        config.fx_graph_cache = folder is not None
        if folder is not None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)

    def sync(self, x):
        if isinstance(x, self._torch.Tensor) and x.device.type == "cuda":
            self._torch.cuda.synchronize(x.device)
        return x
