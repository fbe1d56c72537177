"""Homotopy in the image scale θ: follow the minimiser w*(θ) from smooth images to sharp ones.

The objective is J(w, θ) = D(T_θ(y(w, x)), R_θ(x)): template and reference are both cubic
B-splines with the same smoothing weight θ (:func:`multireg.spline_coefficients`, FAIR's moments
regulariser in index units), y(w, x) a parametric map, D a distance (SSD by default,
ψ = ½·hd·‖r‖²). Large θ gives blobs whose J has few local minimisers; θ → 0 gives the sharp
images. Along a path of minimisers ∇_w J(w*(θ), θ) = 0, so differentiating in θ gives

    H · dw*/dθ = −∂²J/∂w∂θ,        H = ∇²_w J(w*(θ), θ).

Both H and the mixed derivative are exact, from the backend's automatic differentiation; the mixed
derivative is the gradient in w of θ·∂J/∂θ (reverse over reverse), so it differentiates through the
coefficient solves of *both* T_θ and R_θ (θ enters the kernels as a 0-d array).

Parametrisation. The path is followed in s = log θ: dw*/ds = θ·dw*/dθ = −H⁻¹·θ∂θ∇_w J. θ acts
multiplicatively (the study's schedule is geometric, 40 values from 1e3 to 1e-3), a uniform step
in s is exactly such a schedule, and step sizes in s are relative, which is what the adaptive
control needs. The Euler step in s differs from the study's Euler step in θ only by the factor
Δs vs e^Δs − 1 along the same tangent; on the hands benchmark both give predictor errors of the
same size (median ratio 1.07 over the 40-value schedule; θ-steps are better near θ → 0, where
w*(θ) becomes linear in θ, s-steps at intermediate θ). The predictor error falls like Δs² (tested).

Predictor–corrector (Allgower & Georg, *Numerical Continuation Methods*, Springer 1990, ch. 2
and 6; Watson, Cherry, Lang, Ruthotto, "Applications of Automatic Differentiation in Image
Registration", arXiv 2411.02806, the homotopy experiment):

- predictor ``"tangent"``: one explicit Euler step w_k + Δs·dw*/ds(s_k) from the corrected point,
  with H exact (``hessian="exact"``, the study's method) or Gauss–Newton (``"gauss-newton"``,
  H_GN = J_rᵀ W J_r, for SSD hd·J_rᵀJ_r — scaled like the objective; the study's code used
  J_rᵀJ_r for an objective without the ½, half the consistent matrix). The mixed derivative is
  exact in both cases.
- ``"secant"``: extrapolation through the last two corrected points (no derivatives; second order
  like the tangent once two points exist).
- ``"none"``: warm start from the last corrected point, i.e. classical multiscale continuation
  in θ (FAIR's MSIR-style scale space, no grid coarsening).
- corrector: ``"newton"`` (exact Hessian, Armijo line search), ``"trust-region"`` (exact Hessian,
  Steihaug CG) or ``"gauss-newton"`` from :mod:`multireg.optimize`, stopped by the gradient test
  ‖∇_w J‖ ≤ ``tol``·(1 + |J(w_id, θ)|) only (FAIR's STOP3 with Jstop at the identity). When
  the line search (trust region) fails only because the decrease ½gᵀH⁻¹g that is left is below
  the rounding error of J (64·eps·|J|), the point is reported as converged to working precision.

Step control (``step="adaptive"``, beyond the published method). After each corrected step the
predictor's error δ is measured as the RMS distance, in grid cells, between the predicted and the
corrected map, δ = (mean_i Σ_k ((y(w_pred, x_i) − y(w*, x_i))_k / h_k)²)^½, a scale that is the
same for every transformation. For a predictor of order p (p = 2 for tangent and secant, 1 for
none) δ ≈ C·Δs^p, and with the corrector's iteration count n the deceleration factor is
(Allgower & Georg §6.1, steplength adaptation by asymptotic expansion)

    f = max((δ/δ₀)^(1/p), n/n₀),     δ₀ = ``target_error``, n₀ = ``target_iterations``.

The step is rejected (and retried from the same point with Δs/clip(f, 2, 4)) when the corrector
did not converge within 2·n₀ + 1 iterations (beyond that f > 2 anyway, so a trial stops there) or
f > 2; otherwise it is accepted and the next step is Δs/max(f, ½) (at most doubling). Rejected
trials count in the total of corrector iterations.

Folds. A path of minimisers can end: at a fold (limit point) the minimiser merges with a saddle
and H becomes singular, the tangent grows without bound and no step, however small, is accepted.
Arclength continuation (Allgower & Georg ch. 1–2) would turn around the fold onto the saddle
branch, which is useless for minimisation; multiscale methods simply step over it. Here, once the
step falls below ``min_step`` (in log θ) the path jumps: the corrector starts from the last
point at θ·e^(−min_step) (no prediction, the full ``max_corrector_iter``) and the minimiser it
descends to starts a new branch (``PathPoint.jump``), followed again from the initial step size.
With fixed steps every step is taken whatever its error, so folds are crossed the same way.

Schedule from the data (``theta_range=None``, the default). The study's schedule, θ from 1e3
to 1e-3, was chosen on the hands at m = 32; θ acts on the spline coefficients in index units, so
the same θ smooths a 32² image far more, relative to its content, than a 256² one, and on other
images θ = 1e3 can leave template and reference as near-featureless bumps. There the minimiser
of J(·, θ_max) is not determined by the data (the Hessian is close to singular in some
direction, e.g. the rotation of an almost round bump), and which branch the path follows is an
accident. The default θ_max is therefore the largest θ at which the smoothed images still
determine w: for each image I ∈ {T, R} the information matrix G_I(θ) = ∇²_w D(I_θ(y(w, ·)),
I_θ)|_{w = identity} (the Hessian of registering the image to itself, for SSD hd·J_rᵀJ_r, the
Fisher information of w under Gaussian noise) is compared with the map metric
M = mean_x (∂y/∂w)ᵀ diag(h)⁻² (∂y/∂w), which makes the comparison independent of how w is
parametrised; λ_I(θ) is the smallest generalised eigenvalue of (G_I(θ), M), the curvature of J per
squared grid cell of motion in the least determined direction. θ_max is the largest θ (on a
half-decade grid from θ_min up to 1e6, interpolated in log θ) with min_I λ_I(θ)/λ_I(θ_min) ≥
``THETA_INFORMATION`` = 1e-3: the smoothing may cost at most three decades of curvature in the
weakest direction; beyond that the starting problem is conditioned a thousand times worse than
the sharp one and its minimiser is decided by the rounding and the start rather than the data.
The smoothing is FAIR's spline smoothing (Modersitzki, *FAIR*, SIAM 2009, §3.6), whose weight
FAIR and the study (Watson et al., above) leave to the user; this rule makes it a property of the
data. Since θ is in index units (a smoothing length ∝ θ^¼ cells), the same image on a grid twice
as fine gets a θ_max about 2⁴ = 16 times larger (tested), where a fixed θ_max would smooth it 2×
less (for smooth content; an image with detail at the finer scale, such as the hands at 128²
against their 32² reduction, gets less than the factor 4⁴ = 256, since its fine detail is part
of what smoothing removes). On the hands at m = 32 the rule gives θ_max ≈ 2100 (affine),
on the blob, text and natural images of bench/homotopy.py 1000–4000 at m = 32, i.e. about the
study's 1e3 at the study's size. The threshold was set on the bench's table 4: with 1e-2
(θ_max ≈ 330) the affine paths from the identity succeeded on 17 of 28 rotated images, with 1e-3
on 19, with the fixed 1e3 on 20. No θ_max helps the large rotations (90°–170°) from the identity:
they lie outside the identity's branch at every θ, which is what ``starts`` is for. Cost: two
p×p Hessians per grid value, 2·19 in all. For matrix-free transformations (more than
``optimize.DENSE_MAX`` parameters) the rule is not evaluated and θ_max = 1e3. ``theta_range``
or ``thetas`` override it.

Folds and bifurcations (beyond the published method). At every accepted point the smallest
generalised eigenvalue λ_min of (∇²_w J, M) is recorded (dense Hessians only). A branch of
minimisers ends where λ_min reaches 0 (a fold, or a pitchfork where the minimiser becomes a
saddle). Two events are recorded in ``HomotopyResult.events``: ``"indefinite"``, λ_min ≤ 0 at
an accepted point (the corrector's gradient test holds at a saddle: the point is not a minimiser),
and ``"fold"``, the Hessian at the middle of a step, (w_k + w_k+1)/2 at θ = (θ_k·θ_k+1)^½, has
λ_min ≤ 0 while both ends are minimisers, and the step, retraced from its start by adaptive
tangent steps (predictor error ≤ 0.1 cells, down to 1/64 of the step), either jumps past the end
of its branch or ends at a different minimiser; or an adaptive step of the path itself jumped
past the end of its branch. Where the branch is smooth the middle point lies within O(Δs²) of it,
where λ_min > 0, so the retrace (the expensive part) runs only on steps whose middle is not convex:
the branch turns sharply there, as it does near a fold, and the retrace tells a sharp turn from a
change of branch. After an event the final
point is a local minimiser (or a saddle) of J(·, θ_min) reached by a path that changed branches,
not necessarily the global minimiser; ``folded`` says so, and the message too.

Several starts (``starts=``). The branch followed is decided at θ_max; ``starts=n`` traces n paths
from rotations by 360°·k/n about the domain's centre (2D rigid and affine), ``starts=[w, ...]``
from given parameters, and returns the path with the lowest final J; every path is in
``branches``.

Every kernel is built once per configuration (backend, transformation, distance, domain), with the
images, grid and θ as arguments, and compiled by the backend (``jax.jit`` traces it once).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from multireg import _checks, optimize
from multireg._backend import resolve_backend
from multireg.distances import Distance
from multireg.distances import distance as make_distance
from multireg.grid import Domain
from multireg.interpolation import spline_coefficients, spline_interpolate
from multireg.optimize import LinearOperator, Objective, Result, Status
from multireg.optimize._loop import compiled, host, scalar, value_and_norm
from multireg.transforms import Transform
from multireg.transforms import transform as make_transform

__all__ = ["HomotopyResult", "PathEvent", "PathPoint", "ThetaChoice", "homotopy"]

PREDICTORS = ("tangent", "secant", "none")
HESSIANS = ("exact", "gauss-newton")
CORRECTORS = ("newton", "trust-region", "gauss-newton")
STEPS = ("fixed", "adaptive")
TRANSFORMS = ("translation", "rigid", "affine", "bspline")

# The correctors stop on the gradient test alone: FAIR's STOP1 (ΔJ) and STOP2 (Δw) are disabled
# by tolerances no change can exceed.
_NO_LIMIT = 1e300
# Inner CG of the corrector's and predictor's linear solves (matrix-free curvatures only, and
# Steihaug's CG in the trust region): tight, so that the corrector converges quadratically.
_CG_RTOL = 1e-8
# Evaluations a path keeps (_Tracer.at): the corrector's current and trial iterates, the last point.
_MEMO = 4
# θ_max from the data: the least determined direction may keep no less than this fraction of its
# information at θ_min (module docstring); grid of half decades from θ_min up to _THETA_CAP.
THETA_INFORMATION = 1e-3
_THETA_CAP = 1e6
_THETA_FALLBACK = 1e3
THETA_MIN = 1e-3


@dataclass(frozen=True)
class PathPoint:
    """One corrected point (θ_k, w_k) of the path. Arrays are NumPy copies (small vectors)."""

    theta: float
    w: np.ndarray
    fun: float
    """J(w_k, θ_k)."""
    grad_norm: float
    """‖∇_w J(w_k, θ_k)‖."""
    iterations: int
    """Corrector iterations of the accepted trial at θ_k."""
    predictor_error: float
    """RMS distance in grid cells between the predicted and the corrected map (NaN at θ_0)."""
    status: Status
    """The corrector's status at θ_k."""
    rejected: int = 0
    """Trials at smaller steps rejected before this one (adaptive steps only)."""
    jump: bool = False
    """The adaptive step found the end of a branch (a fold) and jumped here by warm start."""
    tangent: np.ndarray | None = None
    """dw*/d(log θ) at (θ_k, w_k), when the tangent predictor computed it."""
    min_eigenvalue: float = math.nan
    """Smallest generalised eigenvalue of (∇²_w J, M) at (θ_k, w_k), M the map metric (J per
    squared grid cell of motion); ≤ 0: not a minimiser. NaN for matrix-free Hessians."""


@dataclass(frozen=True)
class PathEvent:
    """A place where the path left its branch of minimisers (see the module docstring)."""

    kind: str
    """``"indefinite"`` (λ_min ≤ 0 at an accepted point) or ``"fold"`` (the step crossed a
    region where λ_min ≤ 0, or an adaptive step jumped past the end of the branch)."""
    theta_from: float
    theta_to: float
    eigenvalue: float
    """λ_min where the event was seen (NaN for an adaptive jump without a dense Hessian)."""


@dataclass(frozen=True)
class ThetaChoice:
    """How θ_max was chosen: ``"data"`` (the information rule), ``"given"`` or ``"fallback"``."""

    method: str
    theta_max: float
    thetas: tuple[float, ...] = ()
    """The grid of θ on which the information was evaluated (``"data"`` only)."""
    information: tuple[float, ...] = ()
    """min over T, R of λ_I(θ)/λ_I(θ_min) on that grid."""


@dataclass(frozen=True)
class HomotopyResult:
    """What :func:`homotopy` returns.

    ``w``, ``warped`` (T_θ(y(w, x)) at the final θ, shape ``m``) belong to the backend that
    computed them; ``distance`` is J(w, θ) at the final θ (which is ``theta``: the last value of
    the schedule, unless an adaptive path stopped early). ``path`` holds the accepted points;
    ``corrector_iterations`` counts every corrector iteration, rejected trials included.
    ``timings``: seconds ``total``, ``corrector`` (coefficients, solves), ``predictor``
    (tangents, extrapolation, error estimates), ``folds`` (λ_min at each point, the middle of each
    step and the retrace of suspicious steps) and ``choose θ`` (θ_max from the data; with several
    starts computed once, and counted in every branch's ``total``). ``events``, ``folded`` and
    ``min_eigenvalues`` describe the branch structure of the path (module docstring);
    ``theta_choice`` how θ_max was set.
    """

    w: Any
    warped: Any
    distance: float
    theta: float
    path: tuple[PathPoint, ...]
    corrector_iterations: int
    rejected: int
    status: Status
    message: str
    transform: Transform
    backend: str
    timings: dict = field(default_factory=dict)
    events: tuple[PathEvent, ...] = ()
    """Folds and bifurcations met on the path (empty: one branch of minimisers throughout)."""
    theta_choice: ThetaChoice | None = None
    branches: tuple[HomotopyResult, ...] = ()
    """With ``starts``: every traced path (this result is the one with the lowest final J)."""
    best_branch: int = 0
    """Index of this path in ``branches``."""

    @property
    def success(self) -> bool:
        """The path reached the last θ, every corrector along it converged, and the final point
        is not a saddle (λ_min > 0 where it was computed)."""
        return (
            self.status is Status.CONVERGED
            and all(p.status is Status.CONVERGED for p in self.path)
            and not self.path[-1].min_eigenvalue <= 0
        )

    @property
    def folded(self) -> bool:
        """The path changed branches (a fold or bifurcation, see ``events``): its end is a
        critical point reached by continuation, not necessarily the global minimiser."""
        return bool(self.events)

    @property
    def min_eigenvalues(self) -> np.ndarray:
        return np.array([p.min_eigenvalue for p in self.path])

    @property
    def thetas(self) -> np.ndarray:
        return np.array([p.theta for p in self.path])

    @property
    def ws(self) -> np.ndarray:
        """The corrected parameters, shape (number of points, n_params)."""
        return np.stack([p.w for p in self.path])

    @property
    def funs(self) -> np.ndarray:
        return np.array([p.fun for p in self.path])

    @property
    def grad_norms(self) -> np.ndarray:
        return np.array([p.grad_norm for p in self.path])

    @property
    def iterations(self) -> np.ndarray:
        """Corrector iterations of the accepted trial at each θ_k."""
        return np.array([p.iterations for p in self.path])

    @property
    def predictor_errors(self) -> np.ndarray:
        return np.array([p.predictor_error for p in self.path])


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
    # ------------------------------------------------------------- validate, before any work
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
    target_error = _checks.positive("target_error", target_error)
    target_iterations = _count("target_iterations", target_iterations, 1)
    min_step = _checks.positive("min_step", min_step)
    max_steps = _count("max_steps", max_steps, 1)
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

    # ------------------------------------------------------------------------------ the path
    started = time.perf_counter()
    kernels = _kernels(bk, trafo, dist, domain)
    x = domain.cell_centers(bk.xp, dtype=Tb.dtype, device=device)
    dense = trafo.n_params <= optimize.DENSE_MAX
    metric = _map_metric(bk, trafo, domain, w_id, x) if dense else None
    if isinstance(schedule, tuple):  # θ_max from the data
        n = schedule[1]
        if dense:
            choice = _theta_from_data(bk, kernels, (Tb, Rb), x, w_id, metric, THETA_MIN)
        else:
            choice = ThetaChoice("fallback", _THETA_FALLBACK)
        schedule = [float(v) for v in np.geomspace(choice.theta_max, THETA_MIN, n)]
    else:
        choice = ThetaChoice("given", schedule[0])
    choosing = time.perf_counter() - started
    results = []
    for w_start in start_ws:
        tracer = _Tracer(
            bk=bk,
            kernels=kernels,
            images=(Tb, Rb),
            x=x,
            w_id=w_id,
            dense=dense,
            corrector=corrector,
            hessian=hessian,
            tol=tol,
            max_iter=max_corrector_iter,
            callback=callback,
            metric=metric,
        )
        tracer.timings["choose θ"] = choosing
        results.append(
            _trace(
                tracer,
                w_start,
                schedule,
                predictor,
                step,
                trafo,
                choice,
                target_error=target_error,
                target_iterations=target_iterations,
                min_step=min_step,
                max_steps=max_steps,
            )
        )
    if len(results) == 1 and starts is None:
        return results[0]
    finals = [r.distance if math.isfinite(r.distance) else math.inf for r in results]
    ok = [r.success for r in results]
    # the lowest final J among the paths that converged (among all when none did)
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


def _starts(starts: Any, trafo: Transform, domain: Domain) -> list[Any]:
    """The starting parameters of ``starts`` (validated; NumPy or the caller's arrays)."""
    if isinstance(starts, bool):
        raise TypeError("starts must be an int or a sequence of parameter vectors, not bool")
    if isinstance(starts, (int, np.integer)):
        n = _count("starts", starts, 1)
        if domain.dim != 2 or trafo.name not in ("rigid", "affine"):
            raise ValueError(
                "starts=n (rotations about the centre) needs a 2D rigid or affine transform; "
                "give a sequence of parameter vectors instead"
            )
        return [_rotation(trafo, domain, 360.0 * k / n) for k in range(n)]
    if isinstance(starts, str) or not isinstance(starts, Sequence | np.ndarray):
        raise TypeError(
            f"starts must be an int or a sequence of parameter vectors, not {type(starts).__name__}"
        )
    if len(starts) == 0:
        raise ValueError("starts must hold at least one parameter vector")
    return list(starts)


def _rotation(trafo: Transform, domain: Domain, degrees: float) -> np.ndarray:
    """Parameters of the map y = Q(x − c) + c (rotation by ``degrees`` about the domain's centre c)
    for a 2D rigid or affine transform, found by least squares on the grid (exact for both)."""
    c = np.array(domain.lower) + np.array(domain.extent) / 2
    a = math.radians(degrees)
    Q = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    x = domain.cell_centers()
    target = (x - c) @ Q.T + c
    if trafo.name == "affine":
        # FAIR's affine2D: y1 = w1 x1 + w2 x2 + w3, y2 = w4 x1 + w5 x2 + w6
        return np.array([Q[0, 0], Q[0, 1], c[0] - Q[0] @ c, Q[1, 0], Q[1, 1], c[1] - Q[1] @ c])
    w = np.asarray(trafo.identity(np), dtype=float)
    for phi in (a, -a):  # the sign convention of the angle is the transform's own
        b = target[0] - np.asarray(trafo(np.array([phi, 0.0, 0.0]), x[:1]))[0]
        w = np.array([phi, *b])
        if np.allclose(np.asarray(trafo(w, x)), target, atol=1e-9 * (1 + np.abs(target).max())):
            return w
    raise ValueError(f"cannot express a rotation by {degrees}° with the transform {trafo.name}")


# -------------------------------------------------------------------------------- validation


def _make_transform(transform: Any, domain: Domain, p: Any) -> Transform:
    if isinstance(transform, Transform):
        if transform.dim != domain.dim:
            raise ValueError(f"transform is {transform.dim}D but the images are {domain.dim}D")
        if p is not None:
            raise ValueError("p (the control grid) applies to transform='bspline' only")
        return transform
    _checks.choice("transform", transform, TRANSFORMS)
    if transform == "bspline":
        if p is None:
            raise ValueError("transform='bspline' needs p, the control grid size, e.g. p=(8, 8)")
        return make_transform("bspline", omega=domain.omega, p=p)
    if p is not None:
        raise ValueError("p (the control grid) applies to transform='bspline' only")
    return make_transform(transform, dim=domain.dim)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return int(value)


def _schedule(thetas: Any, theta_range: Any, n_steps: Any) -> list[float] | tuple[str, int]:
    """The θ values, strictly decreasing and positive; ``("auto", n)`` when θ_max is to be
    chosen from the data (neither ``thetas`` nor ``theta_range`` given)."""
    if thetas is not None:
        if theta_range is not None or n_steps is not None:
            raise ValueError("give either thetas or theta_range (with n_steps), not both")
        try:
            values = [float(t) for t in np.asarray(thetas, dtype=float).reshape(-1)]
        except (TypeError, ValueError):
            raise TypeError(f"thetas must be a sequence of numbers, got {thetas!r}") from None
        if not values:
            raise ValueError("thetas must hold at least one value")
    else:
        n = 40 if n_steps is None else _count("n_steps", n_steps, 2)
        if theta_range is None:
            return ("auto", n)
        hi, lo = _pair(theta_range)
        if not (math.isfinite(hi) and math.isfinite(lo) and hi > lo > 0):
            raise ValueError(f"theta_range must be (hi, lo) with hi > lo > 0, got {theta_range!r}")
        values = [float(v) for v in np.geomspace(hi, lo, n)]
    if not all(math.isfinite(t) and t > 0 for t in values):
        raise ValueError(f"thetas must be finite and > 0, got {values}")
    if any(b >= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"thetas must be strictly decreasing (large θ first), got {values}")
    return values


def _map_metric(bk: Any, trafo: Transform, domain: Domain, w: Any, x: Any) -> np.ndarray:
    """M = mean_x (∂y/∂w)ᵀ diag(h)⁻² (∂y/∂w) at w (NumPy): ‖Δw‖²_M is the mean squared motion of
    the grid in cells, the scale of ``map_distance``."""
    xp = bk.xp
    hk = xp.asarray(domain.h, dtype=x.dtype, device=array_api_compat.device(x))
    Jy = bk.to_numpy(bk.jacobian(lambda v: xp.reshape(trafo(v, x) / hk, (-1,)))(w))
    return Jy.T @ Jy / x.shape[0]


def _min_generalised_eigenvalue(H: np.ndarray, M: np.ndarray) -> float:
    """Smallest λ with H v = λ M v (M symmetric positive definite)."""
    L = np.linalg.cholesky(M)
    Li = np.linalg.inv(L)
    S = Li @ (0.5 * (H + H.T)) @ Li.T
    return float(np.linalg.eigvalsh(S)[0])


def _theta_from_data(
    bk: Any, kernels: dict, images: tuple, x: Any, w_id: Any, M: np.ndarray, theta_min: float
) -> ThetaChoice:
    """θ_max: the largest θ at which min_I λ_I(θ)/λ_I(θ_min) ≥ THETA_INFORMATION (module
    docstring), on half decades from θ_min up to _THETA_CAP, interpolated in log θ."""
    n = math.floor(2 * math.log10(_THETA_CAP / theta_min) + 1e-9) + 1
    grid = [theta_min * 10 ** (k / 2) for k in range(n)]
    info = []
    for image in images:
        lam = []
        for theta in grid:
            c, Ic = kernels["images"](scalar(bk, theta, w_id), image, image, x)
            lam.append(
                _min_generalised_eigenvalue(bk.to_numpy(kernels["hessian"](w_id, c, Ic, x)), M)
            )
        info.append(np.array(lam))
    scale = [lam[0] for lam in info]
    if not all(math.isfinite(v) and v > 0 for v in scale):
        # w is not determined even by the sharp images: the rule has nothing to compare with
        return ThetaChoice("fallback", _THETA_FALLBACK)
    ratio = np.min([lam / lam[0] for lam in info], axis=0)
    ratio = np.where(np.isfinite(ratio), ratio, 0.0)
    log_t = np.log(grid)
    passing = np.flatnonzero(ratio >= THETA_INFORMATION)
    # the first grid value that fails ends the search: larger θ only lose more information
    failing = np.flatnonzero(ratio < THETA_INFORMATION)
    if failing.size == 0:
        theta_max = grid[-1]
    else:
        k = int(failing[0])
        if k == 0 or passing.size == 0:
            theta_max = grid[1]
        else:
            # linear in log ratio vs log θ between the last passing and the first failing value
            r0, r1 = math.log(max(ratio[k - 1], 1e-300)), math.log(max(ratio[k], 1e-300))
            f = (math.log(THETA_INFORMATION) - r0) / (r1 - r0) if r1 != r0 else 0.0
            theta_max = math.exp(log_t[k - 1] + f * (log_t[k] - log_t[k - 1]))
    theta_max = max(theta_max, grid[1])
    return ThetaChoice(
        "data", float(theta_max), tuple(float(t) for t in grid), tuple(float(r) for r in ratio)
    )


def _pair(value: Any) -> tuple[float, float]:
    try:
        hi, lo = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"theta_range must be a pair (hi, lo), got {value!r}") from None
    return hi, lo


# ---------------------------------------------------------------------------------- kernels


@functools.lru_cache(maxsize=32)
def _kernels(bk: Any, trafo: Transform, dist: Distance, domain: Domain) -> dict:
    """Compiled kernels of J(w, θ) for one configuration; data, grid and θ are arguments.

    At a fixed θ the corrector works on ``(cT, Rc, x)``: T's spline coefficients and R_θ at the
    cell centres, computed once per θ by ``images``. ``mixed`` rebuilds both from θ so that the
    derivative in θ passes through both coefficient solves.
    """
    xp = bk.xp
    h = domain.h

    def images(theta, T, R, x):
        cT = spline_coefficients(T, theta)
        Rc = xp.reshape(spline_interpolate(spline_coefficients(R, theta), domain, x), domain.m)
        return cT, Rc

    def warped(w, cT, x):
        return xp.reshape(spline_interpolate(cT, domain, trafo(w, x)), domain.m)

    def residual(w, cT, Rc, x):
        return dist.residual(warped(w, cT, x), Rc, domain)

    def J(w, cT, Rc, x):
        return dist(warped(w, cT, x), Rc, domain)

    def value_and_grad(w, cT, Rc, x):
        return bk.value_and_grad(lambda v: J(v, cT, Rc, x))(w)

    def hessian(w, cT, Rc, x):
        return bk.hessian(lambda v: J(v, cT, Rc, x))(w)

    def value_grad_hessian(w, cT, Rc, x):
        """J, ∇J and ∇²J, what a Newton iteration needs at its iterate, from one evaluation of
        J and ∇J: the Hessian's rows are pullbacks of [J, ∇J] (reverse over reverse), whose
        forward pass gives J and ∇J themselves (on torch 30 % less than ``value_and_grad`` and
        ``hessian`` apart, the same numbers)."""

        def value_and_grad_stacked(v):
            fun, grad = bk.value_and_grad(lambda u: J(u, cT, Rc, x))(v)
            return xp.concat([xp.reshape(fun, (1,)), grad])

        out, pullback = bk.vjp(value_and_grad_stacked, w)
        n = w.shape[0]
        rows = xp.eye(n + 1, dtype=w.dtype, device=array_api_compat.device(w))[1:, :]
        return out[0], out[1:], bk.vmap(pullback)(rows)

    def hvp(w, v, cT, Rc, x):
        return bk.hvp(lambda u: J(u, cT, Rc, x), w, v)

    def gn_matrix(w, cT, Rc, x):
        """J_rᵀ W J_r (for SSD hd·J_rᵀJ_r, the Hessian of ½·hd·‖r‖² without r's curvature)."""
        r = residual(w, cT, Rc, x)
        Jr = bk.jacobian(lambda v: residual(v, cT, Rc, x))(w)
        W = dist.gn_weight(r, Rc, domain)
        return Jr.T @ ((W[:, None] if W.ndim else W) * Jr)

    def gn_matvec(w, v, cT, Rc, x):
        r, jv = bk.jvp(lambda u: residual(u, cT, Rc, x), w, v)
        _, pullback = bk.vjp(lambda u: residual(u, cT, Rc, x), w)
        return pullback(dist.gn_weight(r, Rc, domain) * jv)

    def mixed(w, theta, T, R, x):
        """∂_s ∇_w J = ∇_w (θ·∂θ J) at (w, θ), s = log θ: the gradient in w of the derivative
        in θ (reverse over reverse, two passes; forward mode in torch is slow, see its adapter)."""

        def scale_derivative(v):
            def J_theta(t):
                cT, Rc = images(t, T, R, x)
                return J(v, cT, Rc, x)

            return theta * bk.value_and_grad(J_theta)(theta)[1]

        return bk.value_and_grad(scale_derivative)(w)[1]

    def solve(H, b):
        """−H⁻¹b, and whether it is finite."""
        t = -xp.linalg.solve(H, b[:, None])[:, 0]
        return t, xp.all(xp.isfinite(t))

    def map_distance(w1, w2, x):
        """RMS over the grid of ‖(y(w1, x) − y(w2, x)) / h‖, in cells."""
        hk = xp.asarray(h, dtype=x.dtype, device=array_api_compat.device(x))
        d = (trafo(w1, x) - trafo(w2, x)) / hk
        return xp.sqrt(xp.mean(xp.sum(d * d, axis=1)))

    jit = bk.jit
    return dict(
        images=jit(images),
        warped=jit(warped),
        J=jit(J),
        value_and_grad=jit(value_and_grad),
        hessian=jit(hessian),
        value_grad_hessian=jit(value_grad_hessian),
        hvp=jit(hvp),
        gn_matrix=jit(gn_matrix),
        gn_matvec=jit(gn_matvec),
        mixed=jit(mixed),
        solve=jit(solve),
        map_distance=jit(map_distance),
        axpy=jit(lambda w, t, d: w + t * d),
    )


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
        f_err = (error / target_error) ** (1 / order)
        f = max(f_err, result.iterations / target_iterations)
        if not jump and (result.status is not Status.CONVERGED or not f <= 2):
            rejected += 1
            total_rejected += 1
            ds /= min(max(f, 2.0), 4.0) if math.isfinite(f) else 2.0
            if abs(ds) < min_step:  # the branch ends (a fold): jump to the next minimiser
                ds, jump = -min_step, True
            continue
        points.append(_point(theta, result, data, error, rejected, jump))
        tracer.accepted(points)
        if jump:
            ds, jump = first_step, False
        else:
            ds /= max(f, 0.5)
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
