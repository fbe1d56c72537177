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

Kept programs: :meth:`JaxBackend.jit_stored` (what :func:`multireg._cache.jit` calls) keeps each
compiled executable in multireg's cache folder (sub-folder ``jax-programs``) under a name made
of the caller's key, the arguments' shapes and dtypes, and everything else that changes the
program (multireg's source fingerprint, the JAX version, 64-bit mode, the device, XLA_FLAGS). A
new process loads it (``jax.experimental.serialize_executable``) without tracing or lowering,
which JAX's own persistent cache still does in every process before its look-up. The files are
pickles of executables, trusted as JAX's own cache files are: the folder is the user's.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
import threading
from pathlib import Path
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
            # JAX's own bound rescans the folder at every write (O(entries) each); multireg
            # trims it once, when the process ends
            config.update("jax_compilation_cache_max_size", -1)
            _cache.trim_at_exit(folder, _cache.MAX_BYTES)
        compilation_cache.reset_cache()  # the next compilation opens the folder now in force

    def __repr__(self) -> str:
        return "JaxBackend()"

    def asarray(self, x: Any, *, dtype: Any = None, device: Any = None) -> Any:
        jax = self._jax
        name = float_dtype_name(dtype, x)
        if not isinstance(x, (np.ndarray, jax.Array)) and not np.isscalar(x):
            if hasattr(x, "__dlpack__"):
                x = np.from_dlpack(x.detach() if hasattr(x, "detach") else x)
        if isinstance(x, np.ndarray) or np.isscalar(x):
            # a host value: device_put copies it; jnp.asarray is a compiled program per dtype
            # and shape (each one more for a new process to load or compile: issue 13)
            return jax.device_put(np.asarray(x, dtype=name), device)
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

    def jit_stored(self, f, key: str):
        """``jax.jit(f)`` whose executables are kept on disk under ``key`` (a text naming
        what ``f`` computes, given its arguments' shapes and dtypes): see the module's text."""
        return _Stored(self, self._jax.jit(f), key)

    def _program_folder(self) -> Path | None:
        from multireg import _cache

        return _cache.cache_dir("jax-programs")

    def _environment(self) -> str:
        """What changes a program besides its key and arguments (the fixed part once; the
        settings a ``with`` block may change, each time)."""
        fixed = self.__dict__.get("_fixed")
        if fixed is None:
            import jaxlib

            from multireg import _cache

            device = self._jax.devices()[0]
            fixed = self._fixed = (
                _cache.fingerprint(), self._jax.__version__, jaxlib.__version__,
                device.platform, device.device_kind, os.environ.get("XLA_FLAGS", ""),
            )  # fmt: skip
        config = self._jax.config
        settings = (
            "jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_dtype_promotion",
            "jax_disable_most_optimizations", "jax_optimization_level",
            "jax_exec_time_optimization_effort",
        )  # fmt: skip
        return repr((fixed, *(config.values.get(name) for name in settings)))

    def sync(self, x):
        return self._jax.block_until_ready(x)


PROGRAMS_MAX_BYTES = 1024**3
"""Upper bound of the kept programs' folder; the least recently used files go first."""

_programs_bound: Any = None  # multireg._cache.Bounded, made at the first save


class _Stored:
    """A jitted function whose executables are loaded from, and saved to, the programs folder.

    Called with concrete JAX arrays (positional, any pytree), it looks the arguments' shapes and
    dtypes up in its own table, then on disk, and only then compiles (``lower().compile()``,
    itself answered by JAX's persistent cache when that holds the program). Called while
    another function is traced, or with anything but JAX arrays, it is the plain jitted one.
    """

    __slots__ = ("_array", "_bk", "_flatten", "_jitted", "_key", "_programs")

    def __init__(self, bk: JaxBackend, jitted: Any, key: str) -> None:
        self._bk, self._jitted, self._key = bk, jitted, key
        self._programs: dict = {}
        self._array = type(bk._jax.device_put(np.zeros(())))  # device_put compiles nothing
        self._flatten = bk._jax.tree_util.tree_flatten

    def __call__(self, *args):
        if not _top_level() or self._bk._jax.config.values.get("jax_disable_jit"):
            return self._jitted(*args)  # traced: concrete leaves are the trace's constants
        leaves, tree = self._flatten(args)
        signature = [tree]
        for x in leaves:
            if type(x) is not self._array:
                return self._jitted(*args)  # a tracer (nested in a trace) or a host value
            signature.append((x.shape, x.dtype, x.weak_type))
        signature = tuple(signature)
        program = self._programs.get(signature)
        if program is None:
            program = self._programs[signature] = self._program(args, signature)
        return program(*args)

    def _program(self, args, signature):
        folder = self._bk._program_folder()
        if folder is None:
            return self._jitted
        text = repr((self._key, signature, self._bk._environment()))
        path = folder / hashlib.sha256(text.encode()).hexdigest()
        program = _load(path)
        if program is None:
            program = _compile_afresh(self._bk._jax, self._jitted.lower(*args))
            _save(path, program)
        return program


def _top_level() -> bool:
    """Is no JAX transformation tracing now? (No public API says so; without the private one
    every call takes the plain jitted path, which is correct, only not kept on disk.)"""
    try:
        from jax._src import core

        return core.trace_ctx.is_top_level()
    except (ImportError, AttributeError):  # pragma: no cover - a JAX without it
        return False


_compile_lock = threading.Lock()


def _compile_afresh(jax: Any, lowered: Any) -> Any:
    """Compile with JAX's persistent cache off: an executable that JAX loaded from that cache
    serialises incompletely (jaxlib 0.10.2 on CPU: the loaded copy then fails with "Function
    iota_multiply_fusion not found"). The cache is turned off and on process-wide, under a lock
    (another thread compiling meanwhile only misses JAX's cache)."""
    from jax.experimental.compilation_cache import compilation_cache

    config = jax.config
    with _compile_lock:
        if not config.jax_enable_compilation_cache:
            return lowered.compile()
        config.update("jax_enable_compilation_cache", False)
        compilation_cache.reset_cache()  # JAX decides once whether its cache is used
        try:
            return lowered.compile()
        finally:
            config.update("jax_enable_compilation_cache", True)
            compilation_cache.reset_cache()


def _load(path: Path):
    from jax.experimental import serialize_executable

    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        lapack, payload = pickle.loads(data)
        if lapack:
            _initialize_lapack()
        program = serialize_executable.deserialize_and_load(*payload)
    except Exception:  # a damaged or foreign file: compile anew and replace it
        return None
    try:
        os.utime(path)  # recently used: evicted last
    except OSError:
        pass
    return program


def _initialize_lapack() -> None:
    """Point XLA's LAPACK custom calls at their functions, which JAX does lazily while it
    lowers a linear-algebra operation (it takes them from SciPy): an executable loaded without
    lowering would call a null pointer (a segmentation fault, seen with the spline's solve)."""
    from jax._src.lax import linalg  # no public API does this

    linalg.initialize_lapack()


def _bound() -> Any:
    global _programs_bound
    if _programs_bound is None:
        from multireg import _cache

        _programs_bound = _cache.Bounded(PROGRAMS_MAX_BYTES)
    return _programs_bound


def _save(path: Path, program: Any) -> None:
    """Write atomically (concurrent processes may save the same program); a program that
    cannot be serialised (one with constants captured from the host) is just not kept."""
    from jax.experimental import serialize_executable

    try:
        lapack = "lapack_" in program.as_text()
        data = pickle.dumps((lapack, serialize_executable.serialize(program)))
    except Exception:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(data)
        os.replace(f.name, path)
        _bound().wrote(path.parent, len(data))
    except OSError:
        pass
