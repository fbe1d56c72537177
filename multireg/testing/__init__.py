"""Derivative checks with a verdict: the Taylor test and the adjoint (dot) test.

FAIR's ``checkDerivative`` plots the Taylor remainders and leaves the verdict to the reader; here
the observed order is computed so that a test can assert it. Both checks work on any backend that
can differentiate, with any array-API function of one array.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TaylorResult", "adjoint_mismatch", "taylor_test"]


@dataclass(frozen=True)
class TaylorResult:
    """Remainders of ``f(x + t v)`` for step sizes ``t``.

    ``e0 = |f(x+tv) - f(x)|`` falls like t, ``e1 = |f(x+tv) - f(x) - t J v|`` like t² when ``J v``
    is the derivative. ``order`` is the median observed order of ``e1`` over the steps where it is
    above the rounding floor (``nan`` if none is).
    """

    t: np.ndarray
    e0: np.ndarray
    e1: np.ndarray
    order: float


def taylor_test(
    bk: Any,
    f: Callable,
    x: Any,
    v: Any,
    *,
    jv: Any = None,
    steps: int = 12,
    t0: float = 1.0,
    factor: float = 2.0,
) -> TaylorResult:
    """Taylor test of ``f`` at ``x`` along ``v`` with the backend's JVP (or a given ``jv``).

    The steps are ``t0 / factor**k``; ``e1`` values within a factor 1e3 of the rounding floor
    ``sqrt(eps)``-scaled by ``|f(x)|`` are excluded when estimating the order.
    """
    xp = bk.xp
    if jv is None:
        fx, jv = bk.jvp(f, x, v)
    else:
        fx = f(x)

    def norm(a):
        return float(bk.to_numpy(xp.sqrt(xp.sum(xp.reshape(a, (-1,)) ** 2))))

    ts = t0 / factor ** np.arange(steps)
    e0, e1 = [], []
    for t in ts:
        ft = f(x + t * v)
        e0.append(norm(ft - fx))
        e1.append(norm(ft - fx - t * jv))
    e0, e1 = np.array(e0), np.array(e1)
    eps = float(np.finfo(bk.to_numpy(fx).dtype).eps)
    floor = 1e3 * eps * max(norm(fx), e0.max(), 1e-300)
    usable = e1 > floor
    orders = [
        math.log(e1[k] / e1[k + 1]) / math.log(factor)
        for k in range(steps - 1)
        if usable[k] and usable[k + 1]
    ]
    order = float(np.median(orders)) if orders else float("nan")
    return TaylorResult(ts, e0, e1, order)


def adjoint_mismatch(bk: Any, f: Callable, x: Any, u: Any, v: Any) -> float:
    """Relative mismatch ``|<u, J v> - <Jᵀ u, v>| / (|u| |J v| + |Jᵀ u| |v|)`` (pylops' dottest)."""
    xp = bk.xp
    _, jv = bk.jvp(f, x, v)
    _, pullback = bk.vjp(f, x)
    jtu = pullback(u)

    def dot(a, b):
        return float(bk.to_numpy(xp.sum(xp.reshape(a, (-1,)) * xp.reshape(b, (-1,)))))

    lhs, rhs = dot(u, jv), dot(jtu, v)
    scale = math.sqrt(dot(u, u) * dot(jv, jv)) + math.sqrt(dot(jtu, jtu) * dot(v, v))
    return abs(lhs - rhs) / max(scale, 1e-300)
