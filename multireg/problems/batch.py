"""Batched registration: many same-shape pairs on one device, in one set of kernel calls.

``register_batch(Ts, R, omega, ...)`` registers every template ``Ts[i]`` to its reference (one
``R`` for a series onto a reference, or one per template) with the parametric multilevel
Gauss–Newton method of :func:`multireg.register` (FAIR book §6; PIRobjFctn.m, MLPIR.m,
GaussNewton.m, Armijo.m), and returns one :class:`~multireg.RegistrationResult` per
pair, the same as looping ``register`` over the pairs with the same options gives (to round-off).

What is batched: each kernel (J, ∇J, the Gauss–Newton matrix and step, the line-search trial
values, the level data) is the single-pair function mapped over the pairs with the backend's
``vmap`` and compiled once, so one call serves every pair that is still iterating. What stays per
pair: every decision. Each pair has its own stopping tests (FAIR's STOP1–5, with its own Jstop and
scale), its own descent-direction fix-up and its own Armijo backtracking; a pair that has stopped
is frozen (no longer evaluated, its iterate unchanged) and keeps its status, and a level ends when
every pair has stopped. Batching follows FireANTs (Jena et al. 2024), which registers batches of
pairs on a GPU; the decisions are those of :func:`multireg.optimize.gauss_newton`.
"""

from __future__ import annotations

import math
import time
import types
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from multireg import _checks, optimize
from multireg._backend import resolve_backend
from multireg.distances import Distance, rescaled
from multireg.grid import Domain
from multireg.interpolation import ImageModel
from multireg.optimize import Record, Result, Status
from multireg.optimize._loop import ROUNDOFF
from multireg.optimize.newton import G_TINY
from multireg.problems._batch_kernels import RETRACING, kernels, prepare
from multireg.problems.registration import (
    DISTANCES,
    MAX_ITER,
    LevelResult,
    RegistrationResult,
    Units,
    build_transform,
    distance_of,
    select_levels,
)
from multireg.transforms import Transform

__all__ = ["register_batch"]

LS_REDUCTION, LS_MAX_TRIALS = 1e-4, 10
"""Armijo's sufficient-decrease constant and trial count, FAIR's (and ``register``'s) defaults."""


def register_batch(
    Ts: Any,
    R: Any,
    omega: Any,
    *,
    transform: str | Transform = "affine",
    distance: str | Distance = "ssd",
    image_model: str = "spline",
    theta: float = 0.0,
    levels: int | str | tuple[int, int] | None = None,
    method: str = "gauss-newton",
    w0: Any = None,
    backend: Any = None,
    dtype: str = "float64",
    p: tuple[int, ...] | None = None,
    max_iter: int = MAX_ITER,
    tol_j: float = 1e-3,
    tol_y: float = 1e-2,
    tol_g: float = 1e-2,
) -> tuple[RegistrationResult, ...]:
    """Register each template ``Ts[i]`` to its reference on ``omega``, all pairs together.

    ``Ts``: a sequence of images of one shape ``m`` (2D or 3D), or one array of shape
    ``(pairs, *m)`` (its first axis indexes the pairs). ``R``: one image of shape ``m`` (every
    template is registered to it), or one per template (a sequence, or an array of shape
    ``(pairs, *m)``). ``w0``: None (the identity), one parameter vector for every pair, or an
    array of shape ``(pairs, n_params)``.

    The other options are :func:`multireg.register`'s, with the same meaning and defaults, for
    parametric registration with Gauss–Newton (``method="gauss-newton"``) and a transformation
    of at most :data:`multireg.optimize.DENSE_MAX` parameters (translation, rigid, affine, a
    small B-spline grid); anything else raises ``ValueError`` (use ``register`` per pair).

    Returns a tuple of :class:`~multireg.RegistrationResult`, one per pair in order,
    equal to ``register(Ts[i], R_i, omega, ...)`` to round-off: the same levels, iterations,
    function evaluations, statuses and messages. ``timings`` and the history's ``time`` are the
    batch's wall-clock seconds (shared by its pairs), plus ``"per_pair"`` = total / pairs.
    """
    # ------------------------------------------------------------- validate, before any work
    Ts_list = _image_list("Ts", Ts)
    if not Ts_list:
        raise ValueError("Ts is empty: register_batch needs at least one template")
    _checks.choice("dtype", dtype, ("float64", "float32"))
    shape = _checks.image("Ts[0]", _checks.detached(Ts_list[0]), dtype=dtype)
    Ts_list = [_checks.detached(T) for T in Ts_list]
    for i, T in enumerate(Ts_list[1:], start=1):
        _checks.same_shape(("Ts[0]", f"Ts[{i}]"), shape, _checks.image(f"Ts[{i}]", T, dtype=dtype))
    R_list, shared = _references(R, shape, len(Ts_list), dtype)
    domain = Domain(omega, shape)
    _checks.choice("method", method, ("gauss-newton",))
    _checks.choice("image_model", image_model, ("spline", "linear"))
    model = ImageModel(image_model, theta=theta)
    # FAIR's MI residual keeps per-pair histogram ranges: not batched
    dist = distance_of(distance, tuple(d for d in DISTANCES if d != "mi-gn"))
    if not dist.gauss_newton:
        raise ValueError(
            f"distance {type(dist).__name__} has no Gauss–Newton form; register_batch solves "
            "with Gauss–Newton only: use multireg.register with method='lbfgs' per pair"
        )
    if isinstance(max_iter, bool):
        raise TypeError("max_iter must be an integer, not bool")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    for name, value in (("tol_j", tol_j), ("tol_y", tol_y), ("tol_g", tol_g)):
        _checks.positive(name, value, allow_zero=True)
    selected = select_levels(domain, levels)
    if isinstance(transform, str) and transform == "nonparametric":
        raise ValueError(
            "transform='nonparametric' is not batched (register_batch is parametric); "
            "use multireg.register per pair"
        )
    trafo = build_transform(transform, domain, p)
    if p is not None and not (isinstance(transform, str) and transform == "bspline"):
        raise ValueError("p (the control grid) applies to transform='bspline' only")
    if trafo.n_params > optimize.DENSE_MAX:
        raise ValueError(
            f"transform has {trafo.n_params} parameters; register_batch forms the Gauss–Newton "
            f"matrix, which is for at most {optimize.DENSE_MAX} (use a coarser B-spline grid p, "
            "or multireg.register per pair)"
        )
    pairs = len(Ts_list)
    exponents = [
        _checks.intensity_exponent(dtype, T, R_list[0 if shared else i])
        for i, T in enumerate(Ts_list)
    ]
    powers = []
    for i, exponent in enumerate(exponents):
        if not exponent:
            powers.append(0)
            continue
        scaled = rescaled(dist, exponent)
        if scaled is None:
            raise ValueError(
                f"Ts[{i}] and its reference have intensities of magnitude 2^{-exponent}, beyond "
                f"what {dtype} computes safely, and distance {type(dist).__name__} cannot be "
                "rescaled exactly: divide the images by a common factor near their magnitude"
            )
        if scaled[0] != dist:
            raise ValueError(
                f"Ts[{i}] and its reference have extreme intensities (2^{-exponent}): the "
                f"rescaled {type(dist).__name__} differs from the other pairs'; register this "
                "pair with multireg.register"
            )
        powers.append(scaled[1])
    if shared and any(exponents):
        # the reference is scaled with each pair's exponent: no longer one shared array
        R_list, shared = [R_list[0]] * pairs, False

    W0 = _start(w0, trafo, pairs)
    bk = resolve_backend(backend, *Ts_list, *R_list)
    if not bk.differentiable:
        raise ValueError(f"backend {bk.name!r} cannot differentiate; use 'torch' or 'jax'")

    # ------------------------------------------------------------------------------- solve
    started = time.perf_counter()
    xp = bk.xp
    if W0 is None:
        W0 = xp.stack([trafo.identity(xp, dtype=getattr(xp, dtype))] * pairs)
    else:
        W0 = bk.asarray(W0, dtype=dtype)
    # per pair, not stacked: each pair's levels are prepared on its own (slicing a stack would
    # cost one more dispatch per pair)
    Tb = [_to_backend(bk, T, dtype, e) for T, e in zip(Ts_list, exponents, strict=True)]
    if shared:
        Rb = [_to_backend(bk, R_list[0], dtype, 0)]
    else:
        Rb = [_to_backend(bk, Ri, dtype, e) for Ri, e in zip(R_list, exponents, strict=True)]
    units = [Units(e, pw) for e, pw in zip(exponents, powers, strict=True)]
    out = _parametric(bk, domain, selected, Tb, Rb, shared, trafo, model, dist, W0, units,
                      dict(tol_j=float(tol_j), tol_y=float(tol_y), tol_g=float(tol_g),
                           max_iter=int(max_iter)))  # fmt: skip
    total = time.perf_counter() - started
    for r in out:
        r.timings.update(total=total, per_pair=total / pairs)
    return out


# ------------------------------------------------------------------------------ arguments


def _image_list(name: str, x: Any) -> list[Any]:
    """A sequence of images, or an array whose first axis indexes them, as a list."""
    if isinstance(x, (list, tuple)):
        return list(x)
    if getattr(x, "shape", None) is None:
        raise TypeError(
            f"{name} must be a sequence of images or an array of shape (pairs, *m), "
            f"not {type(x).__name__}"
        )
    if len(x.shape) not in (3, 4):
        raise ValueError(
            f"{name} as one array must have shape (pairs, m1, m2[, m3]), got {tuple(x.shape)}"
        )
    return [x[i] for i in range(int(x.shape[0]))]


def _references(R: Any, shape: tuple[int, ...], pairs: int, dtype: str):
    """(the references as a list, whether there is one shared by every pair), checked."""
    R = _checks.detached(R)
    if not isinstance(R, (list, tuple)) and tuple(getattr(R, "shape", ())) == shape:
        _checks.image("R", R, dtype=dtype)
        return [R], True
    R_list = _image_list("R", R)
    if len(R_list) != pairs:
        raise ValueError(
            f"R must be one image of shape {shape} or one per template ({pairs}), "
            f"got {len(R_list)} images"
        )
    R_list = [_checks.detached(Ri) for Ri in R_list]
    for i, Ri in enumerate(R_list):
        _checks.same_shape(("Ts[0]", f"R[{i}]"), shape, _checks.image(f"R[{i}]", Ri, dtype=dtype))
    return R_list, False


def _start(w0: Any, trafo: Transform, pairs: int) -> np.ndarray | None:
    """The starting parameters, shape (pairs, n_params), checked on the host (None: identity)."""
    if w0 is None:
        return None
    n = trafo.n_params
    host = np.asarray(_checks.to_host(_checks.detached(w0)), dtype=np.float64)
    if host.shape == (n,):
        host = np.broadcast_to(host, (pairs, n))
    if host.shape != (pairs, n):
        raise ValueError(f"w0 must have shape ({n},) or ({pairs}, {n}), got {host.shape}")
    if not np.all(np.isfinite(host)):
        raise ValueError("w0 contains NaN or Inf")
    return np.ascontiguousarray(host)


def _to_backend(bk, x, dtype, exponent):
    if not exponent:
        return bk.asarray(x, dtype=dtype)
    # as register does: scale on the host in float64 (exact), then to the backend
    host = _checks.times_power_of_two(np.asarray(_checks.to_host(x), dtype=np.float64), exponent)
    return bk.asarray(host, dtype=dtype, device=None if isinstance(x, np.ndarray) else _device(x))


def _device(x):
    return array_api_compat.device(x)


# ------------------------------------------------------------------------------ the solver


@dataclass
class _Pair:
    """One pair's Gauss–Newton state on the host (what ``optimize._loop.iterate`` keeps)."""

    j_stop: float
    j_scale: float
    g_tiny: float
    fun: float = math.nan
    grad_norm: float = math.nan
    k: int = 0
    fun_old: float = math.nan
    step_norm: float = math.nan
    nfev: int = 0
    status: Status | None = None
    message: str = ""
    history: list = field(default_factory=list)


@dataclass(frozen=True)
class _Settings:
    tol_j: float
    tol_y: float
    tol_g: float
    max_iter: int
    y_stop_norm: float


def _stopping(s: _Pair, o: _Settings) -> tuple[Status | None, str]:
    """FAIR's STOP1–5 for one pair, as :func:`multireg.optimize._loop.iterate` applies them."""
    k = s.k
    stop1 = k > 0 and abs(s.fun_old - s.fun) <= o.tol_j * (1 + abs(s.j_stop))
    stop2 = k > 0 and s.step_norm <= o.tol_y * (1 + o.y_stop_norm)
    stop3 = s.grad_norm <= o.tol_g * (1 + abs(s.j_stop))
    if stop1 and stop2 and stop3:
        return Status.CONVERGED, f"converged after {k} iterations (STOP1-3: ΔJ, Δx and ∇J small)"
    if s.grad_norm <= s.g_tiny:
        return Status.CONVERGED, f"converged after {k} iterations (STOP4: ‖∇J‖ ≤ {s.g_tiny:.1e})"
    if k >= o.max_iter:
        return Status.MAX_ITERATIONS, f"stopped at max_iter = {o.max_iter} (STOP5)"
    return None, ""


class _Rows:
    """Gather rows of the pairs' arrays for a subset of pairs and merge results back (the array
    API has no in-place update). On retracing backends a subset is padded to a power of 4
    (repeating its last row, whose duplicate results are dropped)."""

    def __init__(self, bk, device):
        self.xp, self.device = bk.xp, device
        self.pad = bk.name in RETRACING

    def select(self, chosen: np.ndarray, total: int) -> np.ndarray:
        idx = np.asarray(chosen, dtype=np.int64)
        if self.pad and 0 < len(idx) < total:
            size = 1
            while size < len(idx):
                size *= 4
            size = min(total, size)
            idx = np.concatenate([idx, np.full(size - len(idx), idx[-1])])
        return idx

    def take(self, a, idx: np.ndarray):
        if len(idx) == a.shape[0] and np.array_equal(idx, np.arange(len(idx))):
            return a
        return self.xp.take(a, self.xp.asarray(idx, device=self.device), axis=0)

    def merge(self, full, part, idx: np.ndarray, n: int):
        """``full`` with its rows ``idx[:n]`` replaced by the first n rows of ``part``."""
        total = full.shape[0]
        if n == total and np.array_equal(idx[:n], np.arange(total)):
            return part[:n] if part.shape[0] != n else part
        where = np.arange(total)
        where[idx[:n]] = total + np.arange(n)
        both = self.xp.concat([full, part], axis=0)
        return self.xp.take(both, self.xp.asarray(where, device=self.device), axis=0)


_UNSTACK: dict = {}


def _unstack(bk, a) -> tuple:
    """The rows of ``a`` (axis 0) as a tuple, in one compiled call: slicing row by row costs one
    dispatch per pair (on JAX ~0.3 ms each, ~0.3 s of a 2-s batch of 64 pairs at 128²)."""
    if bk not in _UNSTACK:
        _UNSTACK[bk] = bk.jit(lambda b: tuple(b[i] for i in range(b.shape[0])))
    return _UNSTACK[bk](a)


def _host(bk, a) -> np.ndarray:
    return np.asarray(bk.to_numpy(a), dtype=np.float64)


def _directions(bk, kern, W, G, coef, Rc, x):
    """Gauss–Newton directions d (H d = −∇J) and [∇Jᵀd, ‖d‖] of every row. A singular H makes
    torch raise for the whole batch (JAX returns non-finite values): then row by row, a failed
    row getting NaN (the caller turns it into −∇J, as ``optimize.newton`` does)."""
    xp = bk.xp
    H = kern["gn_matrix"](W, coef, Rc, x)
    try:
        return kern["solve"](H, G)
    except (ValueError, RuntimeError):
        pass
    ds, sns = [], []
    for j in range(H.shape[0]):
        try:
            d, sn = kern["solve_one"](H[j], G[j])
        except (ValueError, RuntimeError):
            d = xp.full_like(G[j], math.nan)
            sn = xp.full((2,), math.nan, dtype=G.dtype, device=_device(G))
        ds.append(d)
        sns.append(sn)
    return xp.stack(ds), xp.stack(sns)


def _gauss_newton(bk, kern, W, coef, Rc, x, states, settings, eps):
    """Gauss–Newton for every pair from W (pairs, p), each with its own decisions: the loop of
    :func:`multireg.optimize._loop.iterate` with the step of :func:`multireg.optimize.gauss_newton`
    (dense solve, direction fix-up, Armijo), evaluated on the pairs that have not stopped.
    Returns the final W and one :class:`~multireg.optimize.Result` per pair."""
    xp = bk.xp
    rows = _Rows(bk, _device(W))
    pairs = len(states)
    start = time.perf_counter()
    timings = {"objective": 0.0, "step": 0.0}

    def data(idx):
        return rows.take(coef, idx), rows.take(Rc, idx)

    def evaluate(Wsub, idx, n):
        t = time.perf_counter()
        grad, values = kern["value_and_norm"](Wsub, *data(idx), x)
        values = _host(bk, values)[:n]
        timings["objective"] += time.perf_counter() - t
        return grad, values

    G, values = evaluate(W, np.arange(pairs), pairs)
    for s, (fun, grad_norm) in zip(states, values, strict=True):
        s.fun, s.grad_norm, s.nfev = float(fun), float(grad_norm), 1
        s.history.append(Record(0, s.fun, s.grad_norm, 0.0, 0.0, 0, time.perf_counter() - start))
    while True:
        for s in states:
            if s.status is not None:
                continue
            if not (math.isfinite(s.fun) and math.isfinite(s.grad_norm)):
                s.status, s.message = Status.NOT_FINITE, f"J or ∇J is not finite at iteration {s.k}"
            else:
                s.status, s.message = _stopping(s, settings)
        active = np.asarray([i for i, s in enumerate(states) if s.status is None], dtype=np.int64)
        if len(active) == 0:
            break
        t_step = time.perf_counter()
        n = len(active)
        idx = rows.select(active, pairs)  # the active rows (padded); arrays below follow idx
        Wa, Ga = rows.take(W, idx), rows.take(G, idx)
        ca, ra = data(idx)
        D, sn = _directions(bk, kern, Wa, Ga, ca, ra, x)
        sn = _host(bk, sn)
        # per pair, as optimize.newton: a useless direction becomes −∇J, an ascent one is flipped
        sign = np.ones(len(idx))
        use_grad = np.zeros(len(idx), dtype=bool)
        slope, d_norm = np.empty(n), np.empty(n)
        for j, i in enumerate(active):
            sl, dn = float(sn[j, 0]), float(sn[j, 1])
            if not (math.isfinite(sl) and math.isfinite(dn)) or sl == 0:
                use_grad[j] = True
                sl, dn = -(states[i].grad_norm ** 2), states[i].grad_norm
            elif sl > 0:
                sign[j], sl = -1.0, -sl
            slope[j], d_norm[j] = sl, dn
        if use_grad.any() or (sign < 0).any():
            flip = xp.asarray(sign[:, None], dtype=D.dtype, device=rows.device)
            D = xp.where(xp.asarray(use_grad[:, None], device=rows.device), -Ga, flip * D)
        # Armijo per pair (FAIR's Armijo.m): t = 1, halving, at most LS_MAX_TRIALS trials
        t_len, trials = np.ones(n), np.zeros(n, dtype=np.int64)
        accepted = np.zeros(n, dtype=bool)
        W_new = Wa
        searching = np.arange(n)
        while len(searching) and trials[searching[0]] < LS_MAX_TRIALS:
            sub = rows.select(searching, len(idx))
            ts = np.concatenate([t_len[searching], np.ones(len(sub) - len(searching))])
            T_arr = xp.asarray(ts[:, None], dtype=Wa.dtype, device=rows.device)
            Wt, J_t = kern["trial"](
                rows.take(Wa, sub), T_arr, rows.take(D, sub), rows.take(ca, sub),
                rows.take(ra, sub), x,
            )  # fmt: skip
            J_t = _host(bk, J_t)
            ok = []
            for q, j in enumerate(searching):
                trials[j] += 1
                fun = states[active[j]].fun
                if math.isfinite(J_t[q]) and J_t[q] < fun + t_len[j] * LS_REDUCTION * slope[j]:
                    accepted[j] = True
                    ok.append(q)
                else:
                    t_len[j] = t_len[j] / 2
            if ok:
                ok = np.asarray(ok)
                W_new = rows.merge(W_new, rows.take(Wt, ok), searching[ok], len(ok))
            searching = searching[~accepted[searching]]
        timings["step"] += time.perf_counter() - t_step
        for j, i in enumerate(active):
            s = states[i]
            s.nfev += int(trials[j])
            if accepted[j]:
                continue
            # a failed step: converged at round-off, or a failed line search (optimize._loop)
            floor = ROUNDOFF * eps * max(abs(s.fun), abs(s.j_stop), s.j_scale)
            predicted = -slope[j]
            if 0 <= predicted <= floor:
                s.status = Status.CONVERGED
                s.message = (
                    f"converged after {s.k} iterations (at round-off: the step promised a "
                    f"decrease of {predicted:.1e} ≤ {floor:.1e}, the round-off "
                    "level of J; no further decrease is possible)"
                )
            else:
                s.status = Status.LINE_SEARCH_FAILED
                s.message = (
                    f"Armijo line search found no decrease in {int(trials[j])} trials "
                    f"at iteration {s.k + 1}"
                )
        moved = np.flatnonzero(accepted)
        if len(moved) == 0:
            continue
        pick = rows.select(moved, len(idx))  # positions in the active rows
        Wm = rows.take(W_new, pick)
        idx_m = active[pick]
        Gm, values = evaluate(Wm, idx_m, len(moved))
        W = rows.merge(W, Wm, idx_m, len(moved))
        G = rows.merge(G, Gm, idx_m, len(moved))
        now = time.perf_counter() - start
        for q, j in enumerate(moved):
            s = states[active[j]]
            s.k, s.fun_old, s.step_norm = s.k + 1, s.fun, t_len[j] * d_norm[j]
            s.fun, s.grad_norm = float(values[q, 0]), float(values[q, 1])
            s.nfev += 1
            s.history.append(Record(s.k, s.fun, s.grad_norm, s.step_norm, t_len[j], 0, now))
    timings["total"] = time.perf_counter() - start
    rows_W = _unstack(bk, W)
    results = tuple(
        Result(
            x=rows_W[i],
            fun=s.fun,
            grad_norm=s.grad_norm,
            iterations=s.k,
            nfev=s.nfev,
            status=s.status,
            message=f"gauss_newton: {s.message}",
            history=tuple(s.history),
            timings=types.MappingProxyType(dict(timings)),
        )
        for i, s in enumerate(states)
    )
    return W, results


def _parametric(bk, domain, selected, Tb, Rb, shared, trafo, model, dist, W, units, options):
    """``register``'s parametric multilevel loop (MLPIR) for every pair at once."""
    xp = bk.xp
    dtype, device = Tb[0].dtype, _device(Tb[0])
    pairs = len(Tb)
    eps = float(xp.finfo(dtype).eps)
    w_id = trafo.identity(xp, dtype=dtype, device=device)
    W_id = xp.stack([w_id] * pairs)
    settings = _Settings(y_stop_norm=float(_host(bk, xp.linalg.vector_norm(w_id))), **options)
    selected = tuple(selected)
    prepare_T = prepare(bk, model, domain, selected, reference=False)
    prepare_R = prepare(bk, model, domain, selected, reference=True)
    per_T = [prepare_T(T) for T in Tb]
    per_R = [prepare_R(Ri) for Ri in Rb]
    levels = [[] for _ in range(pairs)]
    for level, d in enumerate(selected):
        kern = kernels(bk, trafo, model, dist, d)
        x = d.cell_centers(xp, dtype=dtype, device=device)
        coef = xp.stack([c[level] for c in per_T])
        # one reference for all: repeated, so that every kernel serves both kinds of batch
        Rc = xp.stack([per_R[0 if shared else i][level] for i in range(pairs)])
        j_stop = _host(bk, kern["J"](W_id, coef, Rc, x))
        scales = np.abs(_host(bk, kern["scale"](Rc))).reshape(-1, 2)
        j_scale = np.max(np.where(np.isfinite(scales), scales, 0.0), axis=1)
        states = [
            _Pair(
                j_stop=float(js), j_scale=float(sc),
                g_tiny=G_TINY * float(sc) / (1 + settings.y_stop_norm),
            )
            for js, sc in zip(j_stop, j_scale, strict=True)
        ]  # fmt: skip
        W, results = _gauss_newton(bk, kern, W, coef, Rc, x, states, settings, eps)
        for i, res in enumerate(results):
            res = units[i].result(res)
            levels[i].append(LevelResult("parametric", d, res, res.fun))
    Y = _unstack(bk, kern["transform"](W, x))
    warped = _unstack(bk, kern["warped"](W, coef, x))
    W = _unstack(bk, W)
    out = []
    for i in range(pairs):
        final = levels[i][-1].result.fun
        raw = results[i].fun
        j_id = float(j_stop[i])
        out.append(
            RegistrationResult(
                w=W[i],
                y=Y[i],
                y_grid=None,
                warped=units[i].image(bk, warped[i]),
                distance=final,
                reduction=raw / j_id if j_id else float("nan"),
                levels=tuple(levels[i]),
                transform=trafo,
                backend=bk.name,
                intensity_exponent=units[i].exponent,
            )
        )
    return tuple(out)
