"""Where compiled programs are kept between processes (issue 13).

JAX compiles every kernel from scratch in each new process unless its persistent compilation
cache is on; torch.compile (Inductor) keeps its own on-disk cache. multireg turns both on by
default, in one per-user folder that follows the platform's conventions (``platformdirs``:
``~/.cache/multireg`` on Linux, ``~/Library/Caches/multireg`` on macOS,
``%LOCALAPPDATA%\\multireg\\Cache`` on Windows), with one sub-folder per framework.

* ``MULTIREG_CACHE_DIR=/some/folder`` moves it; ``MULTIREG_CACHE_DIR=off`` (or ``none``, ``0``,
  or an empty value) turns it off.
* :func:`set_cache_dir` does the same from Python, also after a backend was created.
* The JAX cache is bounded (:data:`MAX_BYTES`): the least recently used entries are deleted
  when a process that used it ends (:func:`trim_at_exit`). JAX's own bound
  (``jax_compilation_cache_max_size``) is left off: it scans the whole folder at every write.
* A JAX cache folder the user configured themselves (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config``) is left alone unless ``MULTIREG_CACHE_DIR`` is set explicitly.

This module imports no framework: the adapters read :func:`cache_dir` when they are created and
:func:`set_cache_dir` tells the live ones through their ``configure_cache`` method.

Whole programs (issue 13.3). JAX's persistent cache keeps the compiled executable, but it is
looked up by a hash of the *lowered* program, so every new process still traces and lowers each
program before the lookup: on FAIR's hands (affine, 32 programs) that was 60 % of a new
process's first call. :func:`jit` names a program by what determines it instead (a key of
multireg's own objects, see :func:`program_key`, and the arguments' shapes and dtypes); a
backend that can keep programs (``jit_stored``: the JAX adapter, in the sub-folder
``jax-programs``) loads the executable under that name without tracing anything. The key
includes :func:`fingerprint`, a hash of multireg's source, so editing the code never reuses a
stale program.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_BYTES",
    "Bounded",
    "cache_dir",
    "default_cache_dir",
    "fingerprint",
    "jit",
    "program_key",
    "set_cache_dir",
    "trim",
    "trim_at_exit",
    "whole",
]

ENV_VAR = "MULTIREG_CACHE_DIR"
OFF = ("", "0", "off", "none", "false", "no")
MAX_BYTES = 2 * 1024**3
"""Upper bound of the JAX cache folder (bytes); the least recently used entries go first."""

_UNSET = object()
_override: object = _UNSET  # set_cache_dir's value: a Path, None (off), or _UNSET


def default_cache_dir() -> Path:
    """The platform's per-user cache folder for multireg (not created here)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("multireg", appauthor=False))


def explicitly_set() -> bool:
    """Did the user choose the folder (``set_cache_dir`` or ``MULTIREG_CACHE_DIR``)?"""
    return _override is not _UNSET or ENV_VAR in os.environ


def cache_dir(component: str | None = None) -> Path | None:
    """The cache folder in force (``component``: a framework's sub-folder), or None when off."""
    if _override is not _UNSET:
        root = _override
    elif ENV_VAR in os.environ:
        value = os.environ[ENV_VAR].strip()
        root = None if value.lower() in OFF else Path(value).expanduser()
    else:
        root = default_cache_dir()
    if root is None:
        return None
    return Path(root) / component if component else Path(root)


def set_cache_dir(path: str | os.PathLike | None) -> Path | None:
    """Move the compilation cache to ``path`` (None turns it off) for this process.

    Applies to backends created later and to the live ones. Returns the folder now in force.
    """
    global _override
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder path or None, not {type(path).__name__}")
    if isinstance(path, str) and path.strip().lower() in OFF:
        path = None
    _override = None if path is None else Path(path).expanduser()
    from multireg import _backend

    for bk in list(_backend._instances.values()):
        configure = getattr(bk, "configure_cache", None)
        if configure is not None:
            configure()
    return cache_dir()


# ------------------------------------------------------------------------------------ bounds


def trim(folder: Path, max_bytes: int) -> int:
    """Delete the least recently used files of ``folder`` (not its sub-folders) until the rest
    hold at most ``max_bytes``; returns the bytes kept. Recency is a file's later of access and
    modification time (``relatime`` mounts update access times about daily, enough to order a
    cache). One scan of the folder."""
    entries = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                try:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        entries.append((max(st.st_atime, st.st_mtime), st.st_size, entry.path))
                except OSError:  # removed meanwhile by another process
                    continue
    except OSError:
        return 0
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        total -= size
    return total


class Bounded:
    """A folder kept under ``max_bytes`` by its writers in this process: the first write scans
    it once (:func:`trim`), later ones add their size to a running total and trim only when it
    passes the bound. (Scanning at every write costs O(files) each: JAX's own bounded cache
    reads every entry's access-time file on each write, 0.1 s per write at 1000 entries and
    0.5 s at 6000 on a loaded 2-core machine, most of a test suite's cold run.)"""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._totals: dict[Path, int] = {}

    def wrote(self, folder: Path, nbytes: int) -> None:
        total = self._totals.get(folder)
        if total is None or total + nbytes > self.max_bytes:
            self._totals[folder] = trim(folder, self.max_bytes)
        else:
            self._totals[folder] = total + nbytes


_trimmed_at_exit: set[Path] = set()


def trim_at_exit(folder: Path, max_bytes: int) -> None:
    """Trim ``folder`` to ``max_bytes`` when this process ends (once per folder): for a folder
    that a framework writes unbounded (JAX's cache with its own bound off)."""
    folder = Path(folder)
    if folder in _trimmed_at_exit:
        return
    _trimmed_at_exit.add(folder)
    import atexit

    atexit.register(trim, folder, max_bytes)


# ---------------------------------------------------------------------------- whole programs


@functools.cache
def fingerprint() -> str:
    """A hash of the source of multireg and of its adapters (their ``.py`` files): a kept
    program is reused only by the code that made it. About 3 ms, once per process."""
    roots = [Path(__file__).parent]  # the multireg package
    for name in ("multireg_jax", "multireg_torch", "multireg_numpy"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            roots.append(Path(spec.origin).parent)
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _own(obj: Any) -> bool:
    """Is ``obj`` fully described by its repr and by code the fingerprint covers?"""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return True
    if isinstance(obj, tuple):
        return all(_own(o) for o in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        module = type(obj).__module__
        return (module == "multireg" or module.startswith("multireg.")) and all(
            f.repr and _own(getattr(obj, f.name)) for f in dataclasses.fields(obj)
        )
    return repr(obj) == "<data>"  # a hyper-parameter's slot (its value is an argument)


def program_key(*parts: Any) -> str | None:
    """The text that names a program across processes: the parts' reprs, or None when a part
    is not multireg's own (a user's Transform subclass: its code is not in the fingerprint,
    and its repr need not tell everything the program depends on)."""
    if not all(_own(p) for p in parts):
        return None
    return repr(parts)


def jit(bk: Any, f: Callable, *key: Any) -> Callable:
    """``bk.jit(f)``, kept between processes under ``key`` where the backend can keep programs
    and the key is one (:func:`program_key`); ``f`` must be determined by ``key`` and its
    arguments' shapes and dtypes alone."""
    stored = getattr(bk, "jit_stored", None)
    name = program_key(*key) if stored is not None else None
    return bk.jit(f) if name is None else stored(f, name)


_whole: dict[tuple[str, str], Callable] = {}


def whole(f: Callable, key: tuple[Any, ...], *arrays: Any) -> Any:
    """``f(*arrays)`` run as one compiled program where the arrays' backend keeps programs
    (JAX), else as it is.

    For the public functions a user (or a test) calls outside any compiled objective, e.g.
    :func:`multireg.interpolation.spline_interpolate` on concrete arrays. Run eagerly, JAX
    compiles each operation on its own for every new shape: about 50 ms each on XLA's CPU,
    ~125 compilations per call of the 3-D spline. As one program it is one compilation, kept
    between processes like the others (:func:`jit`). Inside a trace (a compiled objective,
    ``jax.jvp``) the program is a nested ``jit`` that the outer one inlines. ``f`` must be
    determined by ``key`` (multireg's own objects, :func:`program_key`) and the arrays' shapes
    and dtypes; argument checks belong before this call, where they raise eagerly.
    """
    from multireg import _backend

    name = _backend.infer_backend(*arrays)
    if name is None:
        return f(*arrays)
    bk = _backend._instance(name)
    if getattr(bk, "jit_stored", None) is None or program_key(*key) is None:
        return f(*arrays)
    program = _whole.get((name, program_key(*key)))
    if program is None:
        program = _whole[name, program_key(*key)] = jit(bk, f, "whole", *key)
    return program(*arrays)
