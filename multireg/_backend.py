"""The backend protocol, backend discovery and backend selection.

A backend supplies an array-API namespace and the automatic-differentiation transforms the
algorithms need (DESIGN.md §3). Backends are found through the entry-point group
``multireg.backends``; each entry point names a class that can be loaded without importing its
framework (the framework is imported when the class is instantiated).

Selection, from lowest to highest precedence:

1. the process default: the backend named by ``MULTIREG_BACKEND``, else the first installed of
   ``jax``, ``torch`` (else ``numpy``, which is forward-only). The variable is read when the
   default is needed, not at import: a bad value never breaks ``import multireg`` (or
   ``multireg --help``); it is a ``ValueError`` naming the variable and the registered
   backends when a computation first asks for the default;
2. :func:`set_backend`, which replaces the process default;
3. :func:`use_backend`, which overrides it inside a ``with`` block (per thread / task);
4. the type of the input arrays (torch tensors select torch, JAX arrays select JAX);
5. an explicit ``backend=`` argument.

Internals never read the global state: public entry points call :func:`resolve_backend` once and
pass the backend object down explicitly, so two backends can run side by side in one process.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.metadata
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Backend",
    "available_backends",
    "get_backend",
    "resolve_backend",
    "set_backend",
    "use_backend",
]

ENTRY_POINT_GROUP = "multireg.backends"
ENV_VAR = "MULTIREG_BACKEND"
# Order in which the default is chosen when MULTIREG_BACKEND is not set.
_PREFERENCE = ("jax", "torch", "numpy")
# Used only when the package metadata is missing (running from a source tree that was not
# installed); an installed multireg always finds its adapters through its entry points.
_BUILTIN = {
    "jax": "multireg_jax:JaxBackend",
    "torch": "multireg_torch:TorchBackend",
    "numpy": "multireg_numpy:NumpyBackend",
}


@runtime_checkable
class Backend(Protocol):
    """What an adapter provides. Functions passed in take and return single arrays.

    Class attributes ``requires`` (module names that must be importable) and ``extra`` (the pip
    extra that installs them), and the static method ``owns(x)`` (is ``x`` an array of this
    framework?) let multireg list and infer backends without importing any framework.
    """

    name: str
    xp: ModuleType
    differentiable: bool

    def asarray(self, x: Any, *, dtype: Any = None, device: Any = None) -> Any: ...
    def to_numpy(self, x: Any) -> Any: ...
    def value_and_grad(self, f: Callable) -> Callable: ...
    def jvp(self, f: Callable, x: Any, v: Any) -> tuple[Any, Any]: ...
    def vjp(self, f: Callable, x: Any) -> tuple[Any, Callable]: ...
    def hvp(self, f: Callable, x: Any, v: Any) -> Any: ...
    def jacobian(self, f: Callable) -> Callable: ...
    def hessian(self, f: Callable) -> Callable: ...
    def vmap(self, f: Callable, in_axes: Any = 0) -> Callable: ...
    def jit(self, f: Callable) -> Callable: ...
    def sync(self, x: Any) -> Any: ...


# --------------------------------------------------------------------------------- discovery

_lock = threading.Lock()
_classes: dict[str, type] | None = None
_instances: dict[str, Backend] = {}


def _entry_points() -> dict[str, str]:
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for name, value in _BUILTIN.items():
        module = value.partition(":")[0]
        if name not in found and importlib.util.find_spec(module) is not None:
            found[name] = value
    return found


def _backend_classes() -> dict[str, type]:
    """Load (once) every registered adapter class. Loading one imports no framework."""
    global _classes
    with _lock:
        if _classes is None:
            classes = {}
            for name, value in _entry_points().items():
                module_name, _, attr = value.partition(":")
                classes[name] = getattr(importlib.import_module(module_name), attr)
            _classes = classes
        return _classes


def _is_installed(cls: type) -> bool:
    return all(importlib.util.find_spec(mod) is not None for mod in getattr(cls, "requires", ()))


def available_backends() -> tuple[str, ...]:
    """Names of the backends whose frameworks are installed, the default's candidates first."""
    classes = _backend_classes()
    ordered = [n for n in _PREFERENCE if n in classes] + sorted(set(classes) - set(_PREFERENCE))
    return tuple(n for n in ordered if _is_installed(classes[n]))


def _instance(name: str) -> Backend:
    if name in _instances:
        return _instances[name]
    classes = _backend_classes()
    if name not in classes:
        raise ValueError(
            f"unknown backend {name!r}; registered backends are {sorted(classes)} "
            f"(entry-point group {ENTRY_POINT_GROUP!r})"
        )
    cls = classes[name]
    if not _is_installed(cls):
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        extra = getattr(cls, "extra", name)
        raise ImportError(
            f"backend {name!r} needs {', '.join(missing)}, which is not installed; "
            f'install it with: pip install "multireg[{extra}]"'
        )
    with _lock:
        if name not in _instances:
            _instances[name] = cls()
        return _instances[name]


def _as_backend(backend: str | Backend, argument: str = "backend") -> Backend:
    if isinstance(backend, str):
        return _instance(backend)
    if isinstance(backend, Backend):
        return backend
    raise TypeError(f"{argument} must be a backend name or a Backend, not {type(backend).__name__}")


# --------------------------------------------------------------------------------- selection


def _default_from_environment() -> str | None:
    """The backend named by MULTIREG_BACKEND (None when unset), checked against the registered
    ones. Called when the default is needed, never at import (see the module docstring)."""
    name = os.environ.get(ENV_VAR, "").strip()
    if not name:
        return None
    known = sorted(_backend_classes())
    if name not in known:
        raise ValueError(
            f"{ENV_VAR}={name!r} is not a registered backend; set it to one of "
            f"{', '.join(known)}, or unset it"
        )
    return name


# set_backend's choice; None: MULTIREG_BACKEND, else the first installed (see get_backend)
_default: str | Backend | None = None
_context: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "multireg_backend", default=None
)


def set_backend(backend: str | Backend) -> Backend:
    """Make ``backend`` the process default and return it (its framework is imported now)."""
    global _default
    bk = _as_backend(backend)
    _default = bk
    return bk


def get_backend(backend: str | Backend | None = None) -> Backend:
    """The backend named by ``backend``, or the active one (``use_backend`` block, else default)."""
    if backend is not None:
        return _as_backend(backend)
    active = _context.get()
    if active is not None:
        return active
    if _default is None:
        name = _default_from_environment()
        return _instance(name if name is not None else available_backends()[0])
    return _as_backend(_default)


@contextlib.contextmanager
def use_backend(backend: str | Backend) -> Iterator[Backend]:
    """Within the block, ``backend`` replaces the process default (thread- and task-local)."""
    token = _context.set(_as_backend(backend))
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def infer_backend(*arrays: Any) -> str | None:
    """The backend owning the given arrays, or None for NumPy arrays and Python numbers.

    Raises ``TypeError`` when the arrays come from different frameworks.
    """
    classes = _backend_classes()
    owners = {
        name
        for x in arrays
        if x is not None
        for name, cls in classes.items()
        if getattr(cls, "owns", None) is not None and cls.owns(x)
    }
    if len(owners) > 1:
        raise TypeError(f"input arrays come from different frameworks: {sorted(owners)}")
    return owners.pop() if owners else None


def resolve_backend(backend: str | Backend | None = None, *arrays: Any) -> Backend:
    """The backend a public entry point should use: explicit > inferred from arrays > active."""
    if backend is not None:
        return _as_backend(backend)
    inferred = infer_backend(*arrays)
    if inferred is not None:
        return _instance(inferred)
    return get_backend()
