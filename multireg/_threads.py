"""How many CPU threads a backend's kernels use (issue 12.13).

torch sizes its intra-op pool by the machine's cores. On a shared machine that oversubscribes:
its OpenMP threads wait for one another at every parallel region while other processes hold the
cores. Measured on a shared 2-core machine (``multireg.register``, nonparametric elastic, a 32³
synthetic pair, torch, three runs each while other processes ran): 1 thread 2.1–8.2 s, torch's
default of 2 threads 2.6–26.5 s; at 64³ with the machine less busy, 2 threads 4.0 s against 1
thread's 5.0–5.7 s. Oversubscription costs up to 10×, parallelism gains at most 1.3× here, so
multireg uses few threads by default: :func:`default_threads`.

``MULTIREG_THREADS=N`` (or the command line's ``--threads N``) chooses the count; without it an
``OMP_NUM_THREADS`` the user set is left to the framework. The adapters read :func:`threads` when
they are created. This module imports no framework.
"""

from __future__ import annotations

import os

__all__ = ["ENV_VAR", "MAX_DEFAULT", "default_threads", "resolve", "threads"]

ENV_VAR = "MULTIREG_THREADS"
MAX_DEFAULT = 4
"""The default's cap: the kernels are gathers and stencils, bound by memory traffic, so more
threads gain little while the risk of waiting on a busy machine grows."""


def _cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or ``taskset``'s)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Half the CPUs this process may use, at least 1 and at most :data:`MAX_DEFAULT`: room for
    the other processes of a shared machine."""
    return max(1, min(MAX_DEFAULT, _cpus() // 2))


def threads() -> int | None:
    """The count ``MULTIREG_THREADS`` asks for, or None when it is unset (or empty).

    Raises ``ValueError`` naming the variable when it is not a positive integer.
    """
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV_VAR} must be a positive integer (a thread count), got {value!r}")
    return n


def resolve(requested: int | None = None, *, default: bool = True) -> int | None:
    """The thread count an adapter sets: ``requested`` (an adapter's ``threads=`` argument), else
    ``MULTIREG_THREADS``, else None when the user set ``OMP_NUM_THREADS`` (the framework follows
    it) or ``default`` is false, else :func:`default_threads`."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"threads must be a positive integer, got {requested!r}")
        return requested
    n = threads()
    if n is not None or not default or os.environ.get("OMP_NUM_THREADS", "").strip():
        return n
    return default_threads()
