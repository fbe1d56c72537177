"""The tracer's steps along one path (module docstring of :mod:`multireg.problems.homotopy`):
the corrector and the tangent at a given θ (:class:`_Tracer`), the predictor, the fixed and
adaptive step control, and the fold/bifurcation events between accepted points.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from multireg import optimize
from multireg.optimize import LinearOperator, Objective, Result, Status
from multireg.optimize.kernels import compiled, host, scalar, value_and_norm
from multireg.problems.homotopy.kernels import _min_generalised_eigenvalue
from multireg.problems.homotopy.results import PathEvent

# The correctors stop on the gradient test alone: FAIR's STOP1 (ΔJ) and STOP2 (Δw) are disabled
# by tolerances no change can exceed.
_NO_LIMIT = 1e300
# Inner CG of the corrector's and predictor's linear solves (matrix-free curvatures only, and
# Steihaug's CG in the trust region): tight, so that the corrector converges quadratically.
_CG_RTOL = 1e-8
# Evaluations a path keeps (_Tracer.at): the corrector's current and trial iterates, the last point.
_MEMO = 4


# --------------------------------------------------------------------------- predictor/corrector


@dataclass
class _Tracer:
    """The pieces of one path: kernels, data and options; corrects and predicts at given θ."""

    bk: Any
    kernels: dict
    images: tuple
    x: Any
    w_id: Any
    dense: bool
    corrector: str
    hessian: str
    tol: float
    max_iter: int
    callback: Any = None
    metric: np.ndarray | None = None
    timings: dict = field(default_factory=lambda: {"corrector": 0.0, "predictor": 0.0})
    memo: list = field(default_factory=list)
    """The last few evaluations, {w, cT, fun, grad, hessian}, most recent first (see ``at``)."""

    def at(self, w: Any, data: tuple) -> dict:
        """What was computed at (w, θ), keyed by the identity of the arrays w and cT (both
        immutable; the entry keeps them alive). A corrected point's Hessian is needed three
        times: by the corrector's last iteration, the tangent and λ_min; its gradient twice when
        the prediction is already on the path. Each is computed once."""
        for entry in self.memo:
            if entry["w"] is w and entry["cT"] is data[0]:
                return entry
        entry = {"w": w, "cT": data[0]}
        self.memo.insert(0, entry)
        del self.memo[_MEMO:]
        return entry

    def value_and_grad(self, w: Any, data: tuple) -> tuple[Any, Any]:
        entry = self.at(w, data)
        if "grad" not in entry:
            k = self.kernels
            if self.dense and self.corrector != "gauss-newton":
                # a Newton or trust-region step follows at every iterate that is not final, and
                # at the final one the tangent and λ_min need the Hessian
                entry["fun"], entry["grad"], entry["hessian"] = k["value_grad_hessian"](w, *data)
            else:
                entry["fun"], entry["grad"] = k["value_and_grad"](w, *data)
        return entry["fun"], entry["grad"]

    def exact_hessian(self, w: Any, data: tuple) -> Any:
        entry = self.at(w, data)
        if "hessian" not in entry:
            entry["hessian"] = self.kernels["hessian"](w, *data)
        return entry["hessian"]

    def min_eigenvalue(self, w: Any, data: tuple) -> float:
        """λ_min of (∇²_w J(w, θ), M) at the θ of ``data`` (NaN without dense Hessians)."""
        if not self.dense or self.metric is None:
            return math.nan
        started = time.perf_counter()
        H = self.bk.to_numpy(self.exact_hessian(w, data))
        lam = _min_generalised_eigenvalue(H, self.metric) if np.all(np.isfinite(H)) else math.nan
        self.timings["folds"] = self.timings.get("folds", 0.0) + time.perf_counter() - started
        return lam

    def accepted(self, points: list) -> None:
        """λ_min at the newest point on the path (while its Hessian is at hand), and the report
        to the user's callback (θ, J, iterations)."""
        pt = points[-1]
        pt["lam"] = self.min_eigenvalue(pt["w"], pt["data"])
        if self.callback is not None:
            self.callback(pt["theta"], pt["result"].fun, pt["result"].iterations)

    def scalar(self, value: float) -> Any:
        """A number (θ, a step) as a 0-d array: data for the compiled kernels, not code."""
        return scalar(self.bk, value, self.w_id)

    def data(self, theta: float) -> tuple:
        cT, Rc = self.kernels["images"](self.scalar(theta), *self.images, self.x)
        return cT, Rc, self.x

    def objective(self, data: tuple) -> Objective:
        k = self.kernels

        def curvature(name):
            def operator(w):
                if self.dense:
                    H = self.exact_hessian(w, data) if name == "hessian" else k[name](w, *data)
                    return LinearOperator.from_matrix(H)
                matvec = "hvp" if name == "hessian" else "gn_matvec"
                return LinearOperator(matvec=lambda v: k[matvec](w, v, *data))

            return operator

        return Objective(
            bk=self.bk,
            value=lambda w: k["J"](w, *data),
            value_and_grad=lambda w: self.value_and_grad(w, data),
            hessian=curvature("gn_matrix"),
            exact_hessian=curvature("hessian"),
            curvature="gauss-newton",
        )

    def correct(self, w: Any, theta: float, max_iter: int | None = None) -> tuple[Result, tuple]:
        """Minimise J(·, θ) from w until ‖∇J‖ ≤ tol·(1 + |J(w_id, θ)|)."""
        started = time.perf_counter()
        data = self.data(theta)
        objective = self.objective(data)
        (j_id,) = host(self.bk, self.kernels["J"](self.w_id, *data))
        fun, grad = objective.value_and_grad(w)
        fun_h, grad_norm = host(self.bk, compiled(self.bk, value_and_norm)(fun, grad))
        if grad_norm <= self.tol * (1 + abs(j_id)):  # the prediction is already on the path
            result = Result(
                x=w,
                fun=fun_h,
                grad_norm=grad_norm,
                iterations=0,
                nfev=1,
                status=Status.CONVERGED,
                message="the starting point satisfies the gradient test",
            )
        else:
            options = dict(
                tol_j=_NO_LIMIT,
                tol_y=_NO_LIMIT,
                tol_g=self.tol,
                max_iter=self.max_iter if max_iter is None else max_iter,
                x_stop=self.w_id,
                j_stop=j_id,
                cg_rtol=_CG_RTOL,
            )
            if self.corrector == "newton":
                result = optimize.newton(objective, w, **options)
            elif self.corrector == "gauss-newton":
                result = optimize.gauss_newton(objective, w, **options)
            else:
                n = self.w_id.shape[0]
                result = optimize.trust_region(
                    objective, w, curvature="exact", cg_max_iter=2 * n, **options
                )
            limited = (Status.LINE_SEARCH_FAILED, Status.STEP_TOO_SMALL)
            if result.status in limited and self._at_working_precision(objective, result):
                result = dataclasses.replace(
                    result,
                    status=Status.CONVERGED,
                    message=f"{result.message}; converged to working precision (the Newton "
                    "decrease ½gᵀH⁻¹g is below the rounding error of J)",
                )
        self.timings["corrector"] += time.perf_counter() - started
        return result, data

    def _at_working_precision(self, objective: Objective, result: Result) -> bool:
        """Whether a failed line search (or trust region) met only rounding: the decrease
        ½gᵀH⁻¹g that the corrector's model promises at the last iterate is below 64·eps·|J|, so
        J cannot confirm any further step, although ‖∇J‖ is still above the tolerance."""
        bk = self.bk
        curvature = (
            objective.hessian if self.corrector == "gauss-newton" else objective.exact_hessian
        )
        _, g = objective.value_and_grad(result.x)
        H = curvature(result.x)
        try:
            if H.matrix is not None:
                d, _ = self.kernels["solve"](H.matrix, g)
            else:
                d = optimize.cg(bk, H, -g, rtol=_CG_RTOL, preconditioner=None).x
        except (ValueError, RuntimeError):  # singular H (torch raises)
            return False
        (decrease,) = host(bk, -0.5 * bk.xp.vecdot(g, d))
        eps = float(np.finfo(str(g.dtype).rpartition(".")[2]).eps)
        return 0 <= decrease <= 64 * eps * abs(result.fun)

    def tangent(self, w: Any, theta: float, data: tuple) -> Any | None:
        """dw*/ds = −H⁻¹·∂_s∇_w J at a corrected point (None if H is singular)."""
        started = time.perf_counter()
        k, bk = self.kernels, self.bk
        b = k["mixed"](w, self.scalar(theta), *self.images, self.x)
        name = "hessian" if self.hessian == "exact" else "gn_matrix"
        t = None
        if self.dense:
            H = self.exact_hessian(w, data) if name == "hessian" else k[name](w, *data)
            try:
                t, finite = k["solve"](H, b)
                t = t if bool(finite) else None
            except (ValueError, RuntimeError):  # singular H: torch raises, JAX returns NaN
                t = None
        else:
            matvec = "hvp" if name == "hessian" else "gn_matvec"
            sol = optimize.cg(
                bk, lambda v: k[matvec](w, v, *data), -b, rtol=_CG_RTOL, preconditioner=None
            )
            t = sol.x if sol.converged else None
        self.timings["predictor"] += time.perf_counter() - started
        return t

    def error(self, w_pred: Any, w: Any) -> float:
        started = time.perf_counter()
        (e,) = host(self.bk, self.kernels["map_distance"](w_pred, w, self.x))
        self.timings["predictor"] += time.perf_counter() - started
        return e


def _predict(tracer: _Tracer, points: list[dict], ds: float, predictor: str) -> tuple[Any, int]:
    """The starting point of the corrector at s_k + ds, and the predictor's order there."""
    current = points[-1]
    axpy = tracer.kernels["axpy"]
    if predictor == "tangent":
        if "tangent" not in current:
            current["tangent"] = tracer.tangent(current["w"], current["theta"], current["data"])
        if current["tangent"] is not None:
            return axpy(current["w"], tracer.scalar(ds), current["tangent"]), 2
    elif predictor == "secant" and len(points) > 1 and not current["jump"]:
        previous = points[-2]
        ds_previous = math.log(current["theta"]) - math.log(previous["theta"])
        step = tracer.scalar(ds / ds_previous)
        return axpy(current["w"], step, current["w"] - previous["w"]), 2
    return current["w"], 1


def _point(theta, result, data, error, rejected=0, jump=False) -> dict:
    return dict(
        theta=theta, w=result.x, result=result, data=data, error=error, rejected=rejected, jump=jump
    )


def _follow_fixed(tracer: _Tracer, w: Any, schedule: list[float], predictor: str):
    result, data = tracer.correct(w, schedule[0])
    points = [_point(schedule[0], result, data, math.nan)]
    tracer.accepted(points)
    trials = result.iterations
    for theta in schedule[1:]:
        ds = math.log(theta) - math.log(points[-1]["theta"])
        w_pred, _ = _predict(tracer, points, ds, predictor)
        result, data = tracer.correct(w_pred, theta)
        trials += result.iterations
        points.append(_point(theta, result, data, tracer.error(w_pred, result.x)))
        tracer.accepted(points)
    return points, trials, 0, Status.CONVERGED, f"followed {len(schedule)} scales"


# ----------------------------------------------------------------------------- step control


def _deceleration(
    error: float, iterations: int, order: int, target_error: float, target_iterations: int
) -> float:
    """The deceleration factor f = max((δ/δ₀)^(1/p), n/n₀) of a corrected trial step (Allgower &
    Georg §6.1, steplength adaptation by asymptotic expansion; module docstring): δ the predictor
    error in grid cells, p the predictor's order, n the corrector's iterations."""
    return max((error / target_error) ** (1 / order), iterations / target_iterations)


def _acceptable(result: Result, f: float) -> bool:
    """A trial is accepted when its corrector converged and f ≤ 2 (a NaN f is not)."""
    return result.status is Status.CONVERGED and f <= 2


def _after_rejection(ds: float, f: float, min_step: float) -> tuple[float, bool]:
    """The retried step after a rejection, Δs/clip(f, 2, 4) (Δs/2 for a non-finite f), and
    whether the path jumps: once |Δs| falls below ``min_step`` the branch ends (a fold) and the
    next trial, at −``min_step``, is a warm start accepted wherever the corrector converges."""
    ds /= min(max(f, 2.0), 4.0) if math.isfinite(f) else 2.0
    if abs(ds) < min_step:
        return -min_step, True
    return ds, False


def _follow_adaptive(
    tracer: _Tracer,
    w: Any,
    schedule: list[float],
    predictor: str,
    *,
    target_error: float,
    target_iterations: int,
    min_step: float,
    max_steps: int,
):
    s_end = math.log(schedule[-1])
    first_step = math.log(schedule[1]) - math.log(schedule[0])  # negative: θ decreases
    result, data = tracer.correct(w, schedule[0])
    points = [_point(schedule[0], result, data, math.nan)]
    tracer.accepted(points)
    trials, rejected, total_rejected = result.iterations, 0, 0
    # a trial needing more than 2·n₀ iterations is rejected anyway (f > 2): stop it there
    trial_iter = min(tracer.max_iter, 2 * target_iterations + 1)
    ds, jump = first_step, False
    for _ in range(max_steps):
        s = math.log(points[-1]["theta"])
        if s <= s_end:
            break
        ds = max(ds, s_end - s)  # never step past the end
        theta = schedule[-1] if s + ds <= s_end else math.exp(s + ds)
        if jump:  # past a fold: warm start, and accept wherever the corrector converges
            w_pred, order = points[-1]["w"], 1
            result, data = tracer.correct(w_pred, theta)
        else:
            w_pred, order = _predict(tracer, points, ds, predictor)
            result, data = tracer.correct(w_pred, theta, max_iter=trial_iter)
        trials += result.iterations
        error = tracer.error(w_pred, result.x)
        f = _deceleration(error, result.iterations, order, target_error, target_iterations)
        if not jump and not _acceptable(result, f):
            rejected += 1
            total_rejected += 1
            ds, jump = _after_rejection(ds, f, min_step)
            continue
        points.append(_point(theta, result, data, error, rejected, jump))
        tracer.accepted(points)
        ds, jump = (first_step, False) if jump else (ds / max(f, 0.5), False)
        rejected = 0
    else:
        return (
            points,
            trials,
            total_rejected,
            Status.MAX_ITERATIONS,
            (f"max_steps = {max_steps} trials did not reach the last scale"),
        )
    jumps = sum(pt["jump"] for pt in points)
    message = (
        f"reached the last scale in {len(points)} points ({total_rejected} rejected trials, "
        f"{jumps} jumps past a fold)"
    )
    return points, trials, total_rejected, Status.CONVERGED, message


def _events(tracer: _Tracer, points: list[dict]) -> list[PathEvent]:
    """Folds and bifurcations between accepted points (module docstring)."""
    events = []
    for previous, current in itertools.pairwise(points):
        pair = (previous["theta"], current["theta"])
        if current["lam"] <= 0 and not previous["lam"] <= 0:
            events.append(PathEvent("indefinite", *pair, current["lam"]))
            continue
        if current["jump"]:
            events.append(PathEvent("fold", *pair, math.nan))
            continue
        if not (tracer.dense and current["lam"] > 0 and previous["lam"] > 0):
            continue
        # the branch at the step's middle, s = (s_k + s_k+1)/2, to O(Δs²) where it is smooth
        middle = tracer.kernels["axpy"](
            previous["w"], tracer.scalar(0.5), current["w"] - previous["w"]
        )
        theta = math.sqrt(previous["theta"] * current["theta"])
        lam = tracer.min_eigenvalue(middle, tracer.data(theta))
        if lam <= 0 and not _one_branch(tracer, previous, current):
            events.append(PathEvent("fold", *pair, lam))
    return events


# Resolving a suspicious step: adaptive tangent steps to this predictor error (grid cells), no
# smaller than the step/_RESOLVE_STEPS; the same minimiser if the ends are this close (cells).
_RESOLVE_ERROR = 0.1
_RESOLVE_STEPS = 64
_SAME_POINT = 1e-2


def _one_branch(tracer: _Tracer, previous: dict, current: dict) -> bool:
    """Whether the step previous → current stays on one branch of minimisers: retraced by the
    adaptive tangent predictor (module docstring), it must reach the new θ without jumping past
    a fold and end at the same minimiser. Run only where the middle of the step is not convex."""
    started = time.perf_counter()
    ds = math.log(current["theta"]) - math.log(previous["theta"])
    schedule = [previous["theta"], previous["theta"] * math.exp(ds / 4), current["theta"]]
    callback, tracer.callback = tracer.callback, None
    timings = dict(tracer.timings)
    try:
        points, _, _, status, _ = _follow_adaptive(
            tracer,
            previous["w"],
            schedule,
            "tangent",
            target_error=_RESOLVE_ERROR,
            target_iterations=6,
            min_step=abs(ds) / _RESOLVE_STEPS,
            max_steps=4 * _RESOLVE_STEPS,
        )
    finally:
        tracer.callback = callback
        tracer.timings.update(timings)  # the retrace is counted under "folds" alone
    same = (
        status is Status.CONVERGED
        and not any(pt["jump"] for pt in points)
        and points[-1]["theta"] == current["theta"]
        and tracer.error(points[-1]["w"], current["w"]) <= _SAME_POINT
    )
    tracer.timings["folds"] = tracer.timings.get("folds", 0.0) + time.perf_counter() - started
    return same
