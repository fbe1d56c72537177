"""Many registrations: each pair a task on a ``concurrent.futures``-style executor (issue 16).

``register_many(jobs, executor=...)`` runs :func:`multireg.register` once per (template,
reference) pair on an executor: a local process pool by default, or a ``dask.distributed.Client``
(``pip install "multireg[dask]"``), or any object with ``submit(fn, *args)`` returning futures.
No scheduler is written here; the executor schedules.

What the peers taught (bigstream, multiview-stitcher on Dask; FireANTs for batches):

* the backend name, dtype and thread count travel with every task: an import-time default
  (``MULTIREG_BACKEND``, a ``set_backend`` call) is a property of one process and silently
  differs on a remote worker, so the worker never reads it;
* a task returns a small, frozen, picklable :class:`PairResult`; large outputs (the warped
  image, the displacement) are written to files by the worker when ``out=`` is given, and the
  result carries their paths;
* each pair is submitted exactly once, as an eager task (no lazy graph that a later
  ``compute`` could run again); Dask tasks are submitted with ``pure=False`` so that two equal
  pairs are two tasks;
* a failing pair (unreadable file, bad input, a crash in the solver) is reported in its result
  (``status="failed"``, ``error``), never fatal to the others; a worker process that dies is
  reported the same way;
* results arrive as pairs complete (``progress``), and an interrupt cancels every pair not yet
  started; on the pool register_many made itself it also ends the running ones.

Memory per worker is one pair per worker thread; the intra-op thread count of torch (and JAX's
XLA flags in a worker process started for this) is set from ``threads`` in the worker before the
framework is imported.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DASK_WORKERS", "Job", "PairResult", "register_many"]


@dataclass(frozen=True)
class Job:
    """One registration: template and reference (arrays or image paths), and its name.

    ``omega`` is needed for arrays; for paths the files' geometry gives it (NIfTI world extent,
    or pixel units with ``spacing``)."""

    template: Any
    reference: Any
    name: str
    omega: tuple[float, ...] | None = None


@dataclass(frozen=True)
class PairResult:
    """The outcome of one pair, small and picklable (NumPy and Python values only)."""

    index: int
    name: str
    status: str
    """The solver's status (``"converged"``, ``"max_iterations"``, …) or ``"failed"``."""
    error: str | None
    """One line: why the pair failed (None unless ``status == "failed"``)."""
    distance: float | None
    reduction: float | None
    w: tuple[float, ...] | None
    """Parametric parameters (FAIR's layout) or the pre-registration's; None if failed."""
    iterations: tuple[int, ...]
    det_min: float | None
    seconds: float
    backend: str
    dtype: str
    worker: str
    """``host:pid`` of the process that ran the pair."""
    outputs: Mapping[str, str] = field(default_factory=dict)
    """Files the worker wrote for this pair (``out=``): name -> path."""

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def _jobs(jobs: Iterable[Any], omega: Any) -> list[Job]:
    out: list[Job] = []
    for i, job in enumerate(jobs):
        if isinstance(job, Job):
            out.append(job)
            continue
        if isinstance(job, Mapping):
            unknown = set(job) - {"template", "reference", "name", "omega"}
            if unknown or not {"template", "reference"} <= set(job):
                raise ValueError(
                    f"jobs[{i}] must have keys 'template', 'reference' (and optionally 'name', "
                    f"'omega'); got {sorted(job)}"
                )
            out.append(
                Job(job["template"], job["reference"], str(job.get("name", i)), job.get("omega"))
            )
            continue
        if isinstance(job, (tuple, list)) and len(job) == 2:
            out.append(Job(job[0], job[1], str(i)))
            continue
        raise TypeError(
            f"jobs[{i}] must be a (template, reference) pair, a dict or a Job, "
            f"not {type(job).__name__}"
        )
    for job in out:
        is_path = [isinstance(x, (str, os.PathLike)) for x in (job.template, job.reference)]
        if not any(is_path) and job.omega is None and omega is None:
            raise ValueError(f"job {job.name!r}: arrays need omega (omega= or the job's own)")
    names = [j.name for j in out]
    if len(set(names)) != len(names):
        raise ValueError("jobs must have distinct names (outputs are written per name)")
    return out


def _limit_threads(threads: int) -> None:
    """Set a worker process's thread counts before its framework starts its pools: the adapters
    read ``MULTIREG_THREADS`` when they are created (torch's pool; for one thread, XLA's flag,
    while XLA has not started), and NumPy's BLAS reads the OpenMP variables."""
    os.environ["MULTIREG_THREADS"] = str(threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


def _read(x: Any, omega: Any, spacing: Any):
    """(data, omega, input): ``input`` is the :class:`multireg.io.Image` read from a path (its
    format and geometry, for a writer that writes like it), else the array itself."""
    if isinstance(x, (str, os.PathLike)):
        from multireg import io

        image = io.read_image(x, spacing=spacing)
        return image.data, image.omega, image
    return x, omega, x


def _run_pair(
    index: int, job: Job, backend: str, dtype: str, threads: int, omega: Any, spacing: Any,
    out: str | None, writer: Callable[..., Mapping[str, str]] | None, options: dict, caller: int,
) -> PairResult:  # fmt: skip
    """The task: runs in the worker. Never raises; a failure is the result's status."""
    import socket

    worker = f"{socket.gethostname()}:{os.getpid()}"
    t0 = time.perf_counter()
    try:
        if os.getpid() != caller:  # never change the caller's own process (a thread pool)
            _limit_threads(threads)
        from multireg import _backend
        from multireg.problems.registration import register

        bk = _backend.get_backend(backend)  # explicit: never the worker's own default
        given = job.omega if job.omega is not None else omega
        T, omega_t, input_t = _read(job.template, given, spacing)
        R, omega_r, input_r = _read(job.reference, given, spacing)
        if not np.allclose(omega_t, omega_r, rtol=0, atol=1e-6 * max(map(abs, omega_r))):
            raise ValueError(f"template covers omega {omega_t} but reference covers {omega_r}")
        started = time.perf_counter()
        result = register(T, R, omega_r, backend=bk, dtype=dtype, **options)
        bk.sync(result.warped)
        seconds = time.perf_counter() - started
        outputs: dict[str, str] = {}
        if out is not None:
            outputs = dict((writer or _write)(
                Path(out) / job.name, result, job=job, backend=bk, inputs=(input_t, input_r),
                seconds=seconds,
            ))  # fmt: skip
        w = None if result.w is None else tuple(float(v) for v in bk.to_numpy(result.w).ravel())
        return PairResult(
            index=index, name=job.name, status=result.status.value, error=None,
            distance=float(result.distance), reduction=float(result.reduction), w=w,
            iterations=tuple(int(i) for i in result.iterations),
            det_min=None if result.det_min is None else float(result.det_min),
            seconds=time.perf_counter() - t0, backend=bk.name, dtype=dtype, worker=worker,
            outputs=outputs,
        )  # fmt: skip
    except Exception as exc:  # reported, never fatal to the other pairs
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if not isinstance(exc, (ValueError, TypeError, FileNotFoundError, OSError)):
            message += f" (at {traceback.extract_tb(exc.__traceback__)[-1].name})"
        return _failed(index, job.name, message, backend, dtype, worker, time.perf_counter() - t0)


def _failed(index, name, message, backend, dtype, worker, seconds) -> PairResult:
    return PairResult(
        index=index, name=name, status="failed", error=message, distance=None, reduction=None,
        w=None, iterations=(), det_min=None, seconds=seconds, backend=backend, dtype=dtype,
        worker=worker,
    )  # fmt: skip


def _write(folder: Path, result, *, job, backend, inputs, seconds) -> dict[str, str]:
    """The default writer: the pair's warped template (``warped.npy``) and, nonparametric, the
    map on its own grid (``y_grid.npy``), written as one unit by the worker (io.OutputSet)."""
    bk = backend
    from multireg import io

    warped = folder / "warped.npy"
    files = [warped]
    grid = result.y_grid is not None
    if grid:
        files.append(folder / "y_grid.npy")
    outputs = io.OutputSet(files, overwrite=True)
    with outputs:
        np.save(outputs.stage(warped), bk.to_numpy(result.warped))
        if grid:
            np.save(outputs.stage(files[1]), bk.to_numpy(result.y_grid))
    return {p.stem: str(p) for p in files}


def _is_dask(executor: Any) -> bool:
    return type(executor).__module__.split(".")[0] == "distributed"


DASK_WORKERS = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
"""Dask configuration for workers that register: ``with dask.config.set(DASK_WORKERS):`` around
starting the cluster (``LocalCluster``; the same setting in the config of ``dask worker``).
Dask's default starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536``, which fixes glibc's
threshold for giving memory back: every freed array of 128 KiB or more is unmapped and the next
one mapped and zeroed afresh. A 128² affine registration on torch then took 1.7-2.8x as long
as in a plain process (bench/scale.py). ``register_many`` warns when a client's workers run so."""

TRIM_LIMIT = 16 * 1024**2
"""A worker whose ``MALLOC_TRIM_THRESHOLD_`` is below this (bytes) gets :data:`DASK_WORKERS`'s
warning."""


def _trim_threshold() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def _warn_if_trimming(client: Any) -> None:
    try:
        values = client.run(_trim_threshold).values()
    except Exception:  # not a Client, or a worker that cannot answer: no advice then
        return
    small = sorted({v for v in values if v is not None and v.isdigit() and int(v) < TRIM_LIMIT})
    if small:
        warnings.warn(
            f"the Dask workers run with MALLOC_TRIM_THRESHOLD_={', '.join(small)}, Dask's "
            "default, under which registrations take up to ~3x as long; start them inside "
            "dask.config.set(multireg.workflow.many.DASK_WORKERS)",
            RuntimeWarning,
            stacklevel=3,
        )


def _default_executor(workers: int | None) -> cf.Executor:
    # spawn, not fork: a forked child of a process that has started JAX's or torch's threads can
    # deadlock; a spawned worker starts clean and imports the framework for itself.
    n = workers or min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2, 8)
    return cf.ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))


def _stop(ex: cf.Executor) -> None:
    """Shut down our own pool now, ending the pairs that are running: cancelling a future does
    not stop a pair already in a worker, which would go on and write its outputs after the
    caller was told that everything was cancelled."""
    processes = list((getattr(ex, "_processes", None) or {}).values())  # gone after shutdown
    ex.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    for p in processes:
        p.join()


def register_many(
    jobs: Iterable[Any],
    *,
    omega: Sequence[float] | None = None,
    executor: Any = None,
    workers: int | None = None,
    backend: Any = None,
    dtype: str = "float64",
    threads: int = 1,
    spacing: Sequence[float] | None = None,
    out: str | os.PathLike | None = None,
    writer: Callable[..., Mapping[str, str]] | None = None,
    progress: Callable[[int, int, PairResult], None] | None = None,
    **options: Any,
) -> list[PairResult]:
    """Register every (template, reference) pair of ``jobs``, each exactly once, on ``executor``.

    ``jobs``: (template, reference) pairs, dicts with ``template``, ``reference`` (``name``,
    ``omega``) or :class:`Job`; each image an array or a path (read in the worker with
    :func:`multireg.io.read_image`). ``omega`` applies to array pairs without their own.
    ``executor``: a ``concurrent.futures.Executor`` or a ``dask.distributed.Client``; by default
    a pool of ``workers`` spawned processes, shut down at the end. ``backend``: a name (or a
    backend, of which the name is sent); default: the name of this process's default, resolved
    here and sent explicitly. ``threads``: intra-op threads per worker. ``out``: a folder; each
    pair's outputs go to ``out/<name>/``: by default ``warped.npy`` (and ``y_grid.npy`` for a
    nonparametric map), else what ``writer`` writes. ``writer(folder, result, *, job, backend,
    inputs, seconds)`` runs in the worker after the pair's registration and returns the files
    it wrote (name -> path, the result's ``outputs``): ``result`` is the
    :class:`~multireg.RegistrationResult`, ``inputs`` the template and reference
    as read (a :class:`multireg.io.Image` for a path, else the array), ``seconds`` the time of
    :func:`multireg.register`. It must write all its files or none (e.g. through
    :class:`multireg.io.OutputSet`) and be picklable for a process pool or Dask (a module-level
    function, or an instance of a module-level class). ``progress(done, total, result)`` is
    called as pairs complete. ``options`` go to :func:`multireg.register` unchanged.

    Returns the results in the order of ``jobs``. An interrupt (Ctrl-C) cancels the pairs not
    yet started and is re-raised; with the default pool, the pairs running are ended too (their
    workers terminated, their staged outputs removed: no pair folder appears afterwards). On a
    given executor a pair already running cannot be stopped from here and may still finish.
    """
    from multireg import _backend, _checks

    job_list = _jobs(jobs, omega)
    if not job_list:
        raise ValueError("jobs is empty: nothing to register")
    name = backend if isinstance(backend, str) else _backend.resolve_backend(backend).name
    if name not in _backend.available_backends():
        raise ValueError(f"backend must be one of {list(_backend.available_backends())}")
    _checks.choice("dtype", dtype, ("float64", "float32"))
    if int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if workers is not None and (int(workers) != workers or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError("executor must have a submit method (concurrent.futures or Dask Client)")
    if executor is not None and workers is not None:
        raise ValueError("give executor or workers, not both")
    if writer is not None and not callable(writer):
        raise TypeError(f"writer must be callable, not {type(writer).__name__}")
    if writer is not None and out is None:
        raise ValueError("writer needs out (the folder of the pairs' folders)")
    out_s = None if out is None else os.fspath(Path(out).resolve())
    omega_t = None if omega is None else tuple(float(v) for v in omega)
    spacing_t = None if spacing is None else tuple(float(v) for v in spacing)

    caller = os.getpid()
    own = executor is None
    ex = _default_executor(workers) if own else executor
    dask = _is_dask(ex)
    if dask:
        _warn_if_trimming(ex)
    futures: dict[Any, int] = {}
    results: list[PairResult | None] = [None] * len(job_list)
    try:
        for i, job in enumerate(job_list):
            args = (
                i, job, name, dtype, int(threads), omega_t, spacing_t, out_s, writer, options,
                caller,
            )  # fmt: skip
            fut = ex.submit(_run_pair, *args, pure=False) if dask else ex.submit(_run_pair, *args)
            futures[fut] = i
        if dask:
            from distributed import as_completed
        else:
            as_completed = cf.as_completed
        for done, fut in enumerate(as_completed(list(futures)), 1):
            i = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # the worker died (BrokenProcessPool, KilledWorker, ...)
                res = _failed(i, job_list[i].name, f"{type(exc).__name__}: {exc}".splitlines()[0],
                              name, dtype, "?", float("nan"))  # fmt: skip
            results[i] = res
            if progress is not None:
                progress(done, len(job_list), res)
    except BaseException:
        for fut in futures:
            fut.cancel()
        if own:
            _stop(ex)
            own = False
            if out_s is not None:  # the staged outputs of the pairs that were stopped
                from multireg import io

                for folder in (Path(out_s), *(Path(out_s) / j.name for j in job_list)):
                    io.remove_stale_temporaries(folder)
        raise
    finally:
        if own:
            ex.shutdown(wait=True)
    return [r for r in results if r is not None]
