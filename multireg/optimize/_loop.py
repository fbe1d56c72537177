"""The outer loop every optimiser shares: FAIR's stopping rules, history, callback and timing.

A solver supplies a ``step`` function (x, J, ∇J, ‖∇J‖, state) ↦ (:class:`Step`, state); the loop
evaluates the objective at each accepted iterate, applies the stopping rules and builds the
:class:`~multireg.optimize.Result`. The loop is plain Python; it reads J and ‖∇J‖ to the host once
per iterate, together.
"""

from __future__ import annotations

import functools
import math
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from multireg import _cache
from multireg._dtypes import float_dtype_name
from multireg.optimize import _options
from multireg.optimize._objective import Objective
from multireg.optimize._result import Record, Result, Status

Array = Any
EPS = float(np.finfo(np.float64).eps)
"""FAIR's eps (MATLAB's double precision), used in STOP4 whatever the working precision."""
ROUNDOFF = 1e3
"""A decrease of J below ``ROUNDOFF``·eps·(the scale of J) is round-off: the working precision's
eps times the magnitude of J's terms, with a margin for the error of the sums behind J."""


@dataclass(frozen=True)
class Settings:
    """FAIR's stopping options (GaussNewton.m), validated, plus reporting."""

    tol_j: float
    tol_y: float
    tol_g: float
    max_iter: int
    x_stop: Array | None
    j_stop: float | None
    j_scale: float | None
    callback: Callable[[Record], Any] | None
    verbose: bool


@dataclass(frozen=True)
class Step:
    """What one iteration of a solver produced: the next iterate, or why there is none.

    ``predicted_decrease``: the decrease of J the step's model promised (−∇Jᵀd for a line
    search, m(0) − m(s) for a trust region); when a step fails and this is at round-off level,
    x is a minimiser to working precision and the loop reports convergence instead.
    """

    x: Array | None
    step_norm: float = 0.0
    step_length: float = 0.0
    cg_iterations: int = 0
    nfev: int = 0
    failure: Status | None = None
    message: str = ""
    predicted_decrease: float = math.nan


def prepare(
    objective: Any,
    x0: Any,
    *,
    tol_j: float,
    tol_y: float,
    tol_g: float,
    max_iter: int,
    x_stop: Any,
    j_stop: float | None,
    callback: Any,
    verbose: bool,
    j_scale: float | None = None,
) -> tuple[Array, Settings]:
    """Check the arguments every solver takes; return x0 as a backend array and the settings."""
    if not isinstance(objective, Objective):
        raise TypeError(
            "objective must be an Objective (from least_squares or general), "
            f"not {type(objective).__name__}"
        )
    x = _vector(objective.bk, "x0", x0)
    if x_stop is not None:
        x_stop = _vector(objective.bk, "x_stop", x_stop)
        if x_stop.shape != x.shape:
            raise ValueError(f"x_stop must have the shape of x0 {x.shape}, got {x_stop.shape}")
    if j_stop is not None:
        j_stop = _options.number("j_stop", j_stop)
    if j_scale is not None:
        j_scale = _options.nonnegative("j_scale", j_scale)
    _options.optional_callable("callback", callback)
    if not isinstance(verbose, bool):
        raise TypeError(f"verbose must be True or False, not {verbose!r}")
    settings = Settings(
        tol_j=_options.nonnegative("tol_j", tol_j),
        tol_y=_options.nonnegative("tol_y", tol_y),
        tol_g=_options.nonnegative("tol_g", tol_g),
        max_iter=_options.count("max_iter", max_iter),
        x_stop=x_stop,
        j_stop=j_stop,
        j_scale=j_scale,
        callback=callback,
        verbose=verbose,
    )
    return x, settings


def iterate(
    objective: Objective,
    x: Array,
    step: Callable[[Array, float, Array, float, Any], tuple[Step, Any]],
    state: Any,
    *,
    settings: Settings,
    g_tiny: float,
    name: str,
) -> Result:
    """Run ``step`` from x until FAIR's stopping rules hold or the step fails.

    With Jstop = J(x_stop) and the defaults x_stop = x0, stop when
    STOP1 |J_old − J| ≤ tol_j (1 + |Jstop|), STOP2 ‖x − x_old‖ ≤ tol_y (1 + ‖x_stop‖) and
    STOP3 ‖∇J‖ ≤ tol_g (1 + |Jstop|) all hold, or STOP4 ‖∇J‖ ≤ ``g_tiny``: converged; or
    STOP5 max_iter iterations are done: not converged (FAIR book §6; GaussNewton.m).

    With ``j_scale`` (the magnitude of J's terms, e.g. the distance of the reference to a zero
    image) STOP4 is relative: ‖∇J‖ (1 + ‖x_stop‖) ≤ ``g_tiny``·j_scale, i.e. moving x by its own
    size would change J by less than ``g_tiny`` of its scale; FAIR's absolute threshold made
    images with small intensities (1e-5) "converge" at x0. A step that fails (line search or
    trust region) while its model promised a decrease below ``ROUNDOFF``·eps·max(|J|, |Jstop|,
    j_scale) means that x minimises J to working precision (e.g. T = R): converged.
    """
    bk = objective.bk
    start = time.perf_counter()
    timings = {"objective": 0.0, "step": 0.0}
    history: list[Record] = []

    def evaluate(x):
        t = time.perf_counter()
        if objective.value_grad_norm is not None:
            fun, grad, stats = objective.value_grad_norm(x)
        else:
            fun, grad = objective.value_and_grad(x)
            stats = compiled(bk, value_and_norm)(fun, grad)
        fun_h, grad_norm = host(bk, stats)
        timings["objective"] += time.perf_counter() - t
        return fun_h, grad, grad_norm

    def report(record):
        history.append(record)
        if settings.verbose:
            print(_row(record))
        if settings.callback is not None:
            settings.callback(record)

    fun, grad, grad_norm = evaluate(x)
    nfev = 1
    x_stop = x if settings.x_stop is None else settings.x_stop
    if settings.j_stop is not None:
        j_stop = settings.j_stop
    elif settings.x_stop is None:
        j_stop = fun
    else:
        (j_stop,) = host(bk, objective.value(x_stop))
        nfev += 1
    # once per solve, on the host: a compiled norm would be one more program per shape
    y_stop_norm = float(np.linalg.norm(np.asarray(bk.to_numpy(x_stop), dtype=np.float64)))
    if settings.j_scale is not None:
        g_tiny = g_tiny * settings.j_scale / (1 + y_stop_norm)
    eps = float(np.finfo(float_dtype_name(None, x)).eps)  # on the host: no program for it
    if settings.verbose:
        print(f"{name}: J(x0) = {fun:.6e}, Jstop = {j_stop:.6e}, ‖x_stop‖ = {y_stop_norm:.6e}")
        print(_HEADER)
    report(Record(0, fun, grad_norm, 0.0, 0.0, 0, time.perf_counter() - start))

    k, fun_old, step_norm = 0, math.nan, math.nan
    while True:
        if not (math.isfinite(fun) and math.isfinite(grad_norm)):
            status, message = Status.NOT_FINITE, f"J or ∇J is not finite at iteration {k}"
            break
        status, message = _stopping(
            k, fun_old, fun, step_norm, grad_norm, settings, j_stop, y_stop_norm, g_tiny
        )
        if status is not None:
            break
        t = time.perf_counter()
        result, state = step(x, fun, grad, grad_norm, state)
        timings["step"] += time.perf_counter() - t
        nfev += result.nfev
        if result.failure is not None:
            floor = ROUNDOFF * eps * max(abs(fun), abs(j_stop), settings.j_scale or 0.0)
            if 0 <= result.predicted_decrease <= floor:  # False for NaN
                status = Status.CONVERGED
                message = (
                    f"converged after {k} iterations (at round-off: the step promised a "
                    f"decrease of {result.predicted_decrease:.1e} ≤ {floor:.1e}, the round-off "
                    "level of J; no further decrease is possible)"
                )
            else:
                status, message = result.failure, f"{result.message} at iteration {k + 1}"
            break
        k, x, fun_old, step_norm = k + 1, result.x, fun, result.step_norm
        fun, grad, grad_norm = evaluate(x)
        nfev += 1
        report(
            Record(
                k,
                fun,
                grad_norm,
                step_norm,
                result.step_length,
                result.cg_iterations,
                time.perf_counter() - start,
            )
        )

    timings["total"] = time.perf_counter() - start
    message = f"{name}: {message}"
    if settings.verbose:
        print(message)
    return Result(
        x=x,
        fun=fun,
        grad_norm=grad_norm,
        iterations=k,
        nfev=nfev,
        status=status,
        message=message,
        history=tuple(history),
        timings=types.MappingProxyType(timings),
    )


def _stopping(
    k: int,
    fun_old: float,
    fun: float,
    step_norm: float,
    grad_norm: float,
    s: Settings,
    j_stop: float,
    y_stop_norm: float,
    g_tiny: float,
) -> tuple[Status | None, str]:
    stop1 = k > 0 and abs(fun_old - fun) <= s.tol_j * (1 + abs(j_stop))
    stop2 = k > 0 and step_norm <= s.tol_y * (1 + y_stop_norm)
    stop3 = grad_norm <= s.tol_g * (1 + abs(j_stop))
    if stop1 and stop2 and stop3:
        return Status.CONVERGED, f"converged after {k} iterations (STOP1-3: ΔJ, Δx and ∇J small)"
    if grad_norm <= g_tiny:
        return Status.CONVERGED, f"converged after {k} iterations (STOP4: ‖∇J‖ ≤ {g_tiny:.1e})"
    if k >= s.max_iter:
        return Status.MAX_ITERATIONS, f"stopped at max_iter = {s.max_iter} (STOP5)"
    return None, ""


def host(bk: Any, values: Array) -> list[float]:
    """A small 1-D backend array (a kernel's stacked scalars) as Python floats: one sync."""
    return [float(v) for v in np.reshape(bk.to_numpy(values), (-1,))]


@functools.cache
def compiled(bk: Any, kernel: Callable) -> Callable:
    """``bk.jit(kernel)``, built once per backend and kernel (``jax.jit`` then traces it once
    per shape and dtype): the solvers' per-iteration arithmetic runs as a few compiled calls.
    A kernel of multireg's own (a module-level function, no closure) is kept between
    processes under its module and name (:func:`multireg._cache.jit`)."""
    module = getattr(kernel, "__module__", None) or ""
    if getattr(kernel, "__closure__", True) is None and module.startswith("multireg."):
        return _cache.jit(bk, kernel, module, kernel.__qualname__)
    return bk.jit(kernel)


def axpy(x: Array, t: Array | float, d: Array) -> Array:
    """x + t d."""
    return x + t * d


def scalar(bk: Any, value: float, like: Array) -> Array:
    """``value`` as a 0-d array of ``like``'s dtype and device: a number that varies (a step
    length) is passed to a compiled kernel as data, not as code. torch.compile specialises a
    Python float and compiles the kernel anew for each value (8 line-search step lengths hit its
    recompile limit); JAX traces a float either way."""
    return bk.asarray(bk.asarray(value, dtype=like.dtype), device=array_api_compat.device(like))


def norm(x: Array) -> Array:
    """‖x‖ (Euclidean)."""
    return array_api_compat.array_namespace(x).linalg.vector_norm(x)


def value_and_norm(fun: Array, grad: Array) -> Array:
    """[J, ‖∇J‖]."""
    xp = array_api_compat.array_namespace(grad)
    return xp.stack([fun, xp.linalg.vector_norm(grad)])


def slope_and_norm(grad: Array, d: Array) -> Array:
    """[∇Jᵀd, ‖d‖]."""
    xp = array_api_compat.array_namespace(grad)
    return xp.stack([xp.vecdot(grad, d), xp.linalg.vector_norm(d)])


def _vector(bk: Any, name: str, v: Any) -> Array:
    v = bk.asarray(v)
    # Place the array on its device explicitly: JAX compiles a kernel separately for arrays
    # created without a placement and for the (placed) results of compiled kernels.
    v = bk.asarray(v, device=array_api_compat.device(v))
    if v.ndim != 1 or v.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {tuple(v.shape)}")
    return v


_HEADER = f"{'iter':>4} {'J':>13} {'|dJ|':>10} {'|dx|':>10} {'t':>8} {'cg':>4}"


def _row(r: Record) -> str:
    return (
        f"{r.iteration:4d} {r.fun:13.6e} {r.grad_norm:10.3e} {r.step_norm:10.3e} "
        f"{r.step_length:8.2e} {r.cg_iterations:4d}"
    )
