"""Where compiled programs are kept between processes (issue 13).

JAX compiles every kernel from scratch in each new process unless its persistent compilation
cache is on; torch.compile (Inductor) keeps its own on-disk cache. multireg turns both on by
default, in one per-user folder that follows the platform's conventions (``platformdirs``:
``~/.cache/multireg`` on Linux, ``~/Library/Caches/multireg`` on macOS,
``%LOCALAPPDATA%\\multireg\\Cache`` on Windows), with one sub-folder per framework.

* ``MULTIREG_CACHE_DIR=/some/folder`` moves it; ``MULTIREG_CACHE_DIR=off`` (or ``none``, ``0``,
  or an empty value) turns it off.
* :func:`set_cache_dir` does the same from Python, also after a backend was created.
* The JAX cache is bounded (:data:`MAX_BYTES`, least recently used entries evicted; JAX's own
  ``jax_compilation_cache_max_size``).
* A JAX cache folder the user configured themselves (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config``) is left alone unless ``MULTIREG_CACHE_DIR`` is set explicitly.

This module imports no framework: the adapters read :func:`cache_dir` when they are created and
:func:`set_cache_dir` tells the live ones through their ``configure_cache`` method.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MAX_BYTES", "cache_dir", "default_cache_dir", "set_cache_dir"]

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
