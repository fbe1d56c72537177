"""The entry point :func:`homotopy`: its arguments checked before any work, the start of the
path (the schedule of θ, θ_max from the data), one traced path per start, the best of several.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from multireg import _checks, optimize
from multireg._backend import resolve_backend
from multireg.distances import Distance
from multireg.distances import distance as make_distance
from multireg.grid import Domain
from multireg.optimize import Status
from multireg.problems.homotopy.kernels import (
    _THETA_FALLBACK,
    THETA_MIN,
    _kernels,
    _map_metric,
    _theta_from_data,
)
from multireg.problems.homotopy.options import (
    _count,
    _make_transform,
    _schedule,
    _starts,
)
from multireg.problems.homotopy.results import HomotopyResult, PathPoint, ThetaChoice
from multireg.problems.homotopy.tracer import (
    _events,
    _follow_adaptive,
    _follow_fixed,
    _Tracer,
)
from multireg.transforms import Transform

Array = Any
PREDICTORS = ("tangent", "secant", "none")
HESSIANS = ("exact", "gauss-newton")
CORRECTORS = ("newton", "trust-region", "gauss-newton")
STEPS = ("fixed", "adaptive")


# ------------------------------------------------------------------------------- entry point


def homotopy(
    T: Any,
    R: Any,
    omega: Any,
    *,
    transform: str | Transform = "affine",
    distance: str | Distance = "ssd",
    p: Sequence[int] | None = None,
    thetas: Sequence[float] | None = None,
    theta_range: tuple[float, float] | None = None,
    n_steps: int | None = None,
    predictor: str = "tangent",
    hessian: str = "exact",
    corrector: str = "newton",
    step: str = "fixed",
    w0: Any = None,
    starts: int | Sequence[Any] | None = None,
    backend: Any = None,
    dtype: str = "float64",
    tol: float = 1e-9,
    max_corrector_iter: int = 50,
    target_error: float = 1.0,
    target_iterations: int = 6,
    min_step: float = 1e-2,
    max_steps: int = 1000,
    callback: Callable[[float, float, int], Any] | None = None,
) -> HomotopyResult:
    """Register T to R by following the minimiser w*(θ) from large θ to small θ.

    Parameters (keyword-only after ``omega``; a misspelt option is an error):

    T, R, omega
        Images of equal shape ``m`` (2D or 3D) and the domain ``(a1, b1, a2, b2[, a3, b3])``.
    transform, p
        ``"translation"``, ``"rigid"``, ``"affine"``, ``"bspline"`` (control grid ``p``) or a
        :class:`~multireg.transforms.Transform`.
    distance
        A distance name or object (default SSD). The Gauss–Newton corrector and Hessian need
        one with a Gauss–Newton form (not MI).
    thetas, theta_range, n_steps
        The scales: ``thetas``, a strictly decreasing sequence of positive values, or
        ``theta_range = (hi, lo)`` divided geometrically into ``n_steps`` values (default 40,
        i.e. 39 steps). Default: θ_max from the data (the largest θ at which the smoothed
        images still determine w, module docstring; ``result.theta_choice`` says which) down to
        θ_min = 1e-3; ``theta_range=(1e3, 1e-3)`` is the study's schedule. A single θ
        (``thetas=[θ]``) is a single-scale registration (corrector only). With
        ``step="adaptive"`` only the endpoints and the first interval (the initial step) are used.
    predictor, hessian
        ``"tangent"`` (Euler step in log θ with the ``hessian`` ``"exact"`` or
        ``"gauss-newton"``), ``"secant"`` or ``"none"`` (multiscale continuation).
    corrector, tol, max_corrector_iter
        ``"newton"``, ``"trust-region"`` or ``"gauss-newton"``, run at each θ until
        ‖∇_w J‖ ≤ ``tol``·(1 + |J(identity, θ)|), at most ``max_corrector_iter`` iterations.
    step, target_error, target_iterations, min_step, max_steps
        ``"fixed"`` (the schedule) or ``"adaptive"`` (see the module docstring: predictor error
        target ``target_error`` in grid cells RMS, nominal corrector iterations
        ``target_iterations``, the step ``min_step`` in log θ below which the path jumps past a
        fold, at most ``max_steps`` trials, after which the status is ``MAX_ITERATIONS``). The
        defaults (1 cell, 6 iterations) were chosen on the hands benchmark (bench/homotopy.py).
    w0
        Starting parameters at the first θ (default: the identity).
    starts
        Several paths: an int n ≥ 1 (2D rigid or affine: rotations by 360°·k/n about the domain's
        centre, k = 0..n−1, the identity first) or a sequence of starting parameters. The path
        with the lowest final J is returned, all of them in ``branches``. Not with ``w0``.
    backend, dtype
        Backend (name or object; default: inferred from the arrays, else the active one) and
        ``"float64"`` (default) or ``"float32"``.
    callback
        Called as ``callback(theta, J, corrector_iterations)`` at every accepted point of the
        path (a progress bar, a log).

    Non-convergence is reported in the result (``status``, each point's ``status``), not raised;
    so are folds and bifurcations on the path (``events``, ``folded``).
    """
    run = _validated(
        T,
        R,
        omega,
        transform=transform,
        distance=distance,
        p=p,
        thetas=thetas,
        theta_range=theta_range,
        n_steps=n_steps,
        predictor=predictor,
        hessian=hessian,
        corrector=corrector,
        step=step,
        w0=w0,
        starts=starts,
        backend=backend,
        dtype=dtype,
        tol=tol,
        max_corrector_iter=max_corrector_iter,
        target_error=target_error,
        target_iterations=target_iterations,
        min_step=min_step,
        max_steps=max_steps,
        callback=callback,
    )
    started = time.perf_counter()
    bk, (Tb, _) = run.bk, run.images
    kernels = _kernels(bk, run.trafo, run.dist, run.domain, like=Tb)
    x = run.domain.cell_centers(bk.xp, dtype=Tb.dtype, device=array_api_compat.device(Tb))
    dense = run.trafo.n_params <= optimize.DENSE_MAX
    metric = _map_metric(bk, run.trafo, run.domain, run.w_id, x) if dense else None
    schedule, choice = _scales(run, kernels, x, metric)
    choosing = time.perf_counter() - started
    results = []
    for w_start in run.starts:
        tracer = _Tracer(
            bk=bk,
            kernels=kernels,
            images=run.images,
            x=x,
            w_id=run.w_id,
            dense=dense,
            corrector=run.corrector,
            hessian=run.hessian,
            tol=run.tol,
            max_iter=run.max_corrector_iter,
            callback=run.callback,
            metric=metric,
        )
        tracer.timings["choose θ"] = choosing
        results.append(
            _trace(
                tracer,
                w_start,
                schedule,
                run.predictor,
                run.step,
                run.trafo,
                choice,
                **run.adaptive,
            )
        )
    if len(results) == 1 and not run.several:
        return results[0]
    return _best_branch(results)


@dataclass(frozen=True)
class _Run:
    """The arguments of :func:`homotopy`, checked, and the images and starts on the backend."""

    bk: Any
    images: tuple
    domain: Domain
    trafo: Transform
    dist: Distance
    w_id: Any
    starts: list
    several: bool
    """Whether the caller asked for several starts (the result then names the best branch)."""
    schedule: list[float] | tuple[str, int]
    predictor: str
    hessian: str
    corrector: str
    step: str
    tol: float
    max_corrector_iter: int
    adaptive: dict
    """The step control's options: target_error, target_iterations, min_step, max_steps."""
    callback: Callable | None


def _validated(
    T: Any,
    R: Any,
    omega: Any,
    *,
    transform: Any,
    distance: Any,
    p: Any,
    thetas: Any,
    theta_range: Any,
    n_steps: Any,
    predictor: Any,
    hessian: Any,
    corrector: Any,
    step: Any,
    w0: Any,
    starts: Any,
    backend: Any,
    dtype: Any,
    tol: Any,
    max_corrector_iter: Any,
    target_error: Any,
    target_iterations: Any,
    min_step: Any,
    max_steps: Any,
    callback: Any,
) -> _Run:
    """Every argument of :func:`homotopy` checked before any work (a clear error naming it);
    the images and the starting parameters as arrays of the backend."""
    shape_T = _checks.image("T", T)
    shape_R = _checks.image("R", R)
    _checks.same_shape(("T", "R"), shape_T, shape_R)
    domain = Domain(omega, shape_T)
    trafo = _make_transform(transform, domain, p)
    dist = make_distance(distance) if isinstance(distance, str) else distance
    if not isinstance(dist, Distance):
        raise TypeError(f"distance must be a name or a Distance, not {type(dist).__name__}")
    _checks.choice("predictor", predictor, PREDICTORS)
    _checks.choice("hessian", hessian, HESSIANS)
    _checks.choice("corrector", corrector, CORRECTORS)
    _checks.choice("step", step, STEPS)
    _checks.choice("dtype", dtype, ("float64", "float32"))
    if not dist.gauss_newton and "gauss-newton" in (corrector, hessian):
        raise ValueError(
            f"distance {type(dist).__name__} has no Gauss–Newton form; "
            "use corrector='newton' or 'trust-region' and hessian='exact'"
        )
    schedule = _schedule(thetas, theta_range, n_steps)
    if step == "adaptive" and isinstance(schedule, list) and len(schedule) < 2:
        raise ValueError("step='adaptive' needs at least two scales (a range to follow)")
    tol = _checks.positive("tol", tol)
    max_corrector_iter = _count("max_corrector_iter", max_corrector_iter, 1)
    adaptive = dict(
        target_error=_checks.positive("target_error", target_error),
        target_iterations=_count("target_iterations", target_iterations, 1),
        min_step=_checks.positive("min_step", min_step),
        max_steps=_count("max_steps", max_steps, 1),
    )
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, not {type(callback).__name__}")

    bk = resolve_backend(backend, T, R, w0)
    if not bk.differentiable:
        raise ValueError(f"backend {bk.name!r} cannot differentiate; use 'torch' or 'jax'")
    Tb, Rb = bk.asarray(T, dtype=dtype), bk.asarray(R, dtype=dtype)
    device = array_api_compat.device(Tb)
    Tb, Rb = bk.asarray(Tb, device=device), bk.asarray(Rb, device=device)
    w_id = trafo.identity(bk.xp, dtype=Tb.dtype, device=device)
    if w0 is not None and starts is not None:
        raise ValueError("give either w0 or starts, not both")
    start_ws = [w_id] if w0 is None else [w0]
    if starts is not None:
        start_ws = _starts(starts, trafo, domain)
    for i, w in enumerate(start_ws):
        name = "w0" if starts is None else f"starts[{i}]"
        w = bk.asarray(bk.asarray(w, dtype=dtype), device=device)
        if tuple(w.shape) != (trafo.n_params,):
            raise ValueError(f"{name} must have shape ({trafo.n_params},), got {tuple(w.shape)}")
        if not np.all(np.isfinite(bk.to_numpy(w))):
            raise ValueError(f"{name} contains NaN or Inf")
        start_ws[i] = w
    return _Run(
        bk=bk,
        images=(Tb, Rb),
        domain=domain,
        trafo=trafo,
        dist=dist,
        w_id=w_id,
        starts=start_ws,
        several=starts is not None,
        schedule=schedule,
        predictor=predictor,
        hessian=hessian,
        corrector=corrector,
        step=step,
        tol=tol,
        max_corrector_iter=max_corrector_iter,
        adaptive=adaptive,
        callback=callback,
    )


def _scales(
    run: _Run, kernels: dict, x: Any, metric: np.ndarray | None
) -> tuple[list[float], ThetaChoice]:
    """The path's start: the schedule of θ, with θ_max from the data (module docstring) where
    the caller gave neither ``thetas`` nor ``theta_range`` (the fallback θ_max without dense
    Hessians), and how θ_max was chosen."""
    if not isinstance(run.schedule, tuple):
        return run.schedule, ThetaChoice("given", run.schedule[0])
    n = run.schedule[1]
    if metric is not None:
        choice = _theta_from_data(run.bk, kernels, run.images, x, run.w_id, metric, THETA_MIN)
    else:
        choice = ThetaChoice("fallback", _THETA_FALLBACK)
    return [float(v) for v in np.geomspace(choice.theta_max, THETA_MIN, n)], choice


def _best_branch(results: list[HomotopyResult]) -> HomotopyResult:
    """Of several paths, the one with the lowest final J among those that converged (among all
    when none did), with every path in ``branches``."""
    finals = [r.distance if math.isfinite(r.distance) else math.inf for r in results]
    ok = [r.success for r in results]
    candidates = [i for i in range(len(results)) if ok[i]] or list(range(len(results)))
    best = min(candidates, key=lambda i: finals[i])
    res = results[best]
    message = f"{res.message}; best of {len(results)} starts (start {best})"
    return dataclasses.replace(res, branches=tuple(results), best_branch=best, message=message)


def _trace(
    tracer: _Tracer,
    w_start: Any,
    schedule: list[float],
    predictor: str,
    step: str,
    trafo: Transform,
    choice: ThetaChoice,
    **adaptive: Any,
) -> HomotopyResult:
    """One path from w_start over the schedule, with its events."""
    bk = tracer.bk
    started = time.perf_counter()
    if step == "fixed" or len(schedule) == 1:
        points, trials, rejected, status, message = _follow_fixed(
            tracer, w_start, schedule, predictor
        )
    else:
        points, trials, rejected, status, message = _follow_adaptive(
            tracer, w_start, schedule, predictor, **adaptive
        )
    events = _events(tracer, points)
    last = points[-1]
    warped = tracer.kernels["warped"](last["w"], *last["data"][::2])
    tracer.timings["total"] = time.perf_counter() - started + tracer.timings.get("choose θ", 0.0)
    path = tuple(
        PathPoint(
            theta=pt["theta"],
            w=bk.to_numpy(pt["w"]).copy(),
            fun=pt["result"].fun,
            grad_norm=pt["result"].grad_norm,
            iterations=pt["result"].iterations,
            predictor_error=pt["error"],
            status=pt["result"].status,
            rejected=pt["rejected"],
            jump=pt["jump"],
            tangent=None if pt.get("tangent") is None else bk.to_numpy(pt["tangent"]).copy(),
            min_eigenvalue=pt["lam"],
        )
        for pt in points
    )
    if status is Status.CONVERGED and last["result"].status is not Status.CONVERGED:
        status = last["result"].status
        message = f"the corrector at the last θ did not converge: {last['result'].message}"
    if events:
        kinds = sorted({e.kind for e in events})
        message = (
            f"{message}; the path left its branch of minimisers {len(events)} time(s) "
            f"({', '.join(kinds)}): the end is not necessarily the global minimiser"
        )
    if last["lam"] <= 0:
        message = f"{message}; the final point is not a minimiser (λ_min = {last['lam']:.3g})"
    return HomotopyResult(
        w=last["w"],
        warped=warped,
        distance=last["result"].fun,
        theta=last["theta"],
        path=path,
        corrector_iterations=trials,
        rejected=rejected,
        status=status,
        message=message,
        transform=trafo,
        backend=bk.name,
        timings=dict(tracer.timings),
        events=tuple(events),
        theta_choice=choice,
    )
