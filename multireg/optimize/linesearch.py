"""Armijo backtracking line search (FAIR's Armijo.m; Nocedal & Wright, 2nd ed., Alg. 3.1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from multireg.optimize import _loop, _options

__all__ = ["LineSearchResult", "armijo"]

Array = Any


@dataclass(frozen=True)
class LineSearchResult:
    """``t`` is the accepted step length (0 on failure); ``x`` = x + t d and ``fun`` = J(x + t d)
    (the unchanged x and J on failure); ``trials`` counts the objective evaluations."""

    t: float
    x: Array
    fun: float
    trials: int
    success: bool


def armijo(
    bk: Any,
    value: Callable[[Array], Array],
    x: Array,
    d: Array,
    fun: float,
    slope: float,
    *,
    t0: float = 1.0,
    reduction: float = 1e-4,
    max_trials: int = 10,
) -> LineSearchResult:
    """Backtrack from ``t0``, halving, until J(x + t d) < J(x) + c t ∇J(x)ᵀd (c = ``reduction``).

    ``fun`` is J(x) and ``slope`` is ∇J(x)ᵀd (negative for a descent direction). FAIR's defaults:
    t0 = 1, c = 1e-4, at most 10 trials; a NaN or infinite trial value counts as no decrease.
    On failure the step length is 0 and x is kept (FAIR's Armijo.m). One host read per trial.
    """
    _options.positive("t0", t0)
    _options.fraction("reduction", reduction)
    _options.count("max_trials", max_trials, minimum=1)
    axpy = _loop.compiled(bk, _loop.axpy)
    t = t0
    for trial in range(1, max_trials + 1):
        x_t = axpy(x, _loop.scalar(bk, t, x), d)
        (fun_t,) = _loop.host(bk, value(x_t))
        if math.isfinite(fun_t) and fun_t < fun + t * reduction * slope:
            return LineSearchResult(t=t, x=x_t, fun=fun_t, trials=trial, success=True)
        t = t / 2
    return LineSearchResult(t=0.0, x=x, fun=fun, trials=max_trials, success=False)
