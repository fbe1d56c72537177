"""Registration: parametric (PIR) and nonparametric (NPIR), single level and multilevel.

``register(T, R, omega, ...)`` finds y so that the template T(y(x)) matches the reference R(x) on
the cell-centred grid of ``omega``:

* parametric: J(w) = D(T(y(w, x)), R(x)), y a translation, rigid, affine or B-spline map with
  FAIR's parameter layouts (FAIR book §6, PIRobjFctn.m; multilevel: MLPIR.m, §6.6);
* nonparametric: J(y) = D(T(P y), R) + S(y − y_ref), y on the regulariser's grid (staggered for
  elastic and diffusive, cell-centred for curvature), P the map to cell centres, y_ref the result
  of a parametric pre-registration on the coarsest level (FAIR book §9, NPIRobjFctn.m, MLIR.m).

Multilevel: the images are averaged down a pyramid (:func:`multireg.multilevel`); each level warm
starts from the previous one (parameters unchanged, grids prolonged). Each level's stopping rules
are relative to the identity (FAIR's ``yStop``).

Every kernel an optimiser calls is built once per configuration and compiled by the backend,
with the data (hyper-parameters included) passed as arguments: those programs and their cache
are :mod:`multireg.problems._registration_kernels`; this module checks the options, drives the
levels and reports.

Internal API shared with :func:`multireg.problems.batch.register_batch` (not exported by the
package): :func:`select_levels`, :func:`build_transform`, :class:`Units`, and the option names
``DISTANCES`` and ``MAX_ITER``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from multireg import _checks, gridops, optimize
from multireg._backend import resolve_backend
from multireg.distances import Distance, rescaled
from multireg.distances import distance as make_distance
from multireg.grid import Domain, pyramid_domains
from multireg.interpolation import ImageModel
from multireg.optimize import Record, Result, Status
from multireg.problems._registration_kernels import (
    Problem,
    compiled,
    device_of,
    image_pyramid,
    j_scale_of,
    nonparametric_kernels,
    nonparametric_objective,
    parametric_kernels,
    parametric_objective,
)
from multireg.regularizers import Regularizer
from multireg.regularizers import regularizer as make_regularizer
from multireg.transforms import Transform
from multireg.transforms import transform as make_transform

__all__ = ["LevelResult", "RegistrationResult", "register"]

PARAMETRIC = ("translation", "rigid", "affine", "bspline")
MAX_ITER = 50
"""Default iterations per level (FAIR: 10). Measured on FAIR's hands with levels="auto" and
theta = 0 (the command line's defaults): affine needs up to 24 per level (7, 17, 9, 11, 24),
rigid 13, translation 41; with 10, ``multireg register --transform affine`` exited 3."""
METHODS = ("gauss-newton", "newton", "trust-region", "lbfgs")
DISTANCES = ("ssd", "ncc", "ngf", "mi", "mi-gn")
REGULARIZERS = ("elastic", "diffusive", "curvature")


@dataclass(frozen=True)
class LevelResult:
    """The optimiser's outcome on one level; ``stage``: ``"parametric"`` or ``"nonparametric"``."""

    stage: str
    domain: Domain
    result: Result
    distance: float
    """D at the level's solution."""

    @property
    def level(self) -> int:
        return self.domain.level


@dataclass(frozen=True)
class RegistrationResult:
    """What :func:`register` returns. Arrays belong to the backend that computed them.

    ``w``: the parametric parameters in the transformation's layout (FAIR's for the linear maps;
    :meth:`~multireg.transforms.BSpline.to_fair` converts a B-spline's); for a nonparametric
    registration those of the pre-registration, or None. ``y``: the transformed cell-centred
    grid of the finest level, shape ``(n, d)``. ``y_grid``: the nonparametric unknown on its
    grid (stacked components), or None. ``warped``: T(y) on the reference grid, shape ``m``.
    ``reduction``: D(y)/D(identity) on the finest level (FAIR's MLhis.reduction; MI is
    negative, so there a gain is a reduction above 1). ``det_min``: the minimum of det ∇y over
    the cells and ``folded_cells`` how many have det ∇y ≤ 0 (nonparametric only; a map that
    folds is not invertible there, which ``folded`` and ``warnings`` say).

    Distances, J and ‖∇J‖ (here, in ``levels`` and passed to ``callback``) are in the units of
    the images given (±inf or 0 where such a value is beyond the float range).
    ``intensity_exponent`` is 0 unless the intensities were extreme (beyond 2^±128 in float64,
    2^±16 in float32): the computation then ran on them times 2^intensity_exponent (exact), and
    the solvers' messages quote thresholds in those scaled units.
    """

    w: Any
    y: Any
    y_grid: Any
    warped: Any
    distance: float
    reduction: float
    levels: tuple[LevelResult, ...]
    transform: Transform | str
    backend: str
    det_min: float | None = None
    timings: dict = field(default_factory=dict)
    folded_cells: int | None = None
    warnings: tuple[str, ...] = ()
    intensity_exponent: int = 0

    @property
    def folded(self) -> bool:
        """The nonparametric map folds (det ∇y ≤ 0 in some cell)."""
        return bool(self.folded_cells)

    @property
    def status(self) -> Status:
        """The finest level's status."""
        return self.levels[-1].result.status

    @property
    def success(self) -> bool:
        return self.status is Status.CONVERGED

    @property
    def iterations(self) -> tuple[int, ...]:
        return tuple(lv.result.iterations for lv in self.levels)

    @property
    def history(self) -> tuple:
        return tuple(lv.result.history for lv in self.levels)


# ------------------------------------------------------------------------------- entry point


def register(
    T: Any,
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
    regularizer: str = "elastic",
    alpha: float | None = None,
    mu: float = 1.0,
    lam: float = 0.0,
    pre_registration: str | None = "affine",
    max_iter: int = MAX_ITER,
    tol_j: float = 1e-3,
    tol_y: float = 1e-2,
    tol_g: float = 1e-2,
    cg_rtol: float = 0.1,
    cg_max_iter: int = 500,
    callback: Callable[[str, Domain, Any], Any] | None = None,
    verbose: bool = False,
    fair_compat: bool = False,
    linear_solver: str | None = None,
    prolongation: str | None = None,
    det_method: str | None = None,
) -> RegistrationResult:
    """Register template ``T`` to reference ``R`` on the domain ``omega``.

    Parameters (keyword-only after ``omega``; a misspelt option is an error):

    T, R
        Images of the same shape ``m`` (2D or 3D, at least 4 cells per axis), NumPy or backend
        arrays (bool counts as 0/1); ``omega`` the domain ``(a1, b1, a2, b2[, a3, b3])``. The
        registration is not differentiated through: a torch tensor that requires grad is
        detached, and the outputs carry no graph. Each image needs contrast at the working
        precision (see :func:`multireg._checks.image`).
    transform
        ``"translation"``, ``"rigid"``, ``"affine"``, ``"bspline"`` (control grid ``p``),
        a :class:`~multireg.transforms.Transform`, or ``"nonparametric"``.
    distance
        ``"ssd"``, ``"ncc"``, ``"ngf"``, ``"mi"`` or a distance object. MI has no Gauss–Newton
        form: use ``method="lbfgs"`` or ``"trust-region"``/``"newton"`` with it.
    image_model, theta
        ``"spline"`` (cubic B-spline with the moments smoothing weight ``theta``, FAIR's index
        units at each level) or ``"linear"``.
    levels
        None: one level at full resolution. ``"auto"`` (what the command line uses): every
        level of the pyramid with at least 8 cells along every axis. An int k: the k finest
        levels of the pyramid. A pair ``(lo, hi)``: FAIR's level numbers (level ℓ has about
        2^ℓ cells per axis). Every level needs at least 4 cells along every axis.
    method
        ``"gauss-newton"``, ``"newton"`` (exact Hessian), ``"trust-region"`` (Newton–CG with
        Steihaug's CG on the exact Hessian) or ``"lbfgs"``. Nonparametric: Gauss–Newton or L-BFGS.
    w0
        Starting parameters (default the identity), in the layout of ``w`` in the result.
    backend, dtype
        The backend (name or object; default: inferred from the arrays, else the active one)
        and ``"float64"`` (default) or ``"float32"``.
    regularizer, alpha, mu, lam, pre_registration
        Nonparametric only: ``"elastic"`` (Navier–Lamé ``mu``, ``lam``), ``"diffusive"`` or
        ``"curvature"``, weight ``alpha`` (required), and the parametric pre-registration on the
        coarsest level (``"affine"``, ``"rigid"``, ``"translation"`` or None) whose result is the
        regulariser's reference.
    max_iter, tol_j, tol_y, tol_g, cg_rtol, cg_max_iter
        Per level: FAIR's stopping rules and the PCG tolerance, with FAIR's defaults except
        ``max_iter`` (:data:`MAX_ITER`; FAIR's 10 stops its own hands examples before they
        converge). Convergence is also declared where no decrease of J is possible at round-off
        level (an image registered to itself), judged against the size of the distance's terms.
    callback
        ``callback(stage, domain, record)`` after each iteration (for progress displays).
    fair_compat
        True: reproduce FAIR's own computations (FAIR.m, Modersitzki 2009) where multireg's
        defaults differ from them, by switching every option below to its FAIR value unless
        it is given, and the distance: ``"ngf"`` (or an :class:`~multireg.distances.NGF`)
        takes FAIR's boundary rows (``NGF(boundary="fair")``; the edge stays the one given),
        and ``"mi"`` (or an :class:`~multireg.distances.MI`) becomes FAIR's Gauss–Newton form
        :class:`~multireg.distances.MIGaussNewton` (FAIR's 32 × 30 bins over FAIR's range
        [0, 256] when both images lie in it, else over R's range; an MI object keeps its
        ranges and its bins less the 3 guard widths), so ``method="gauss-newton"`` works with
        MI. Defaults (False) are what serves users best; each option says why.
    linear_solver
        ``"pcg"`` (default): the Gauss–Newton system by Jacobi-PCG to ``cg_rtol`` (FAIR's
        matrix-free solvers' truncated solve: cheaper, same minimiser within the stopping
        tolerances); ``"direct"`` (fair_compat): solved exactly, as FAIR's backslash (see
        :func:`multireg.optimize.gauss_newton`). Gauss–Newton and Newton only.
    prolongation
        Nonparametric multilevel: how a coarse level's displacement is carried to the outer
        half cells of the next. ``"linear"`` (default): extrapolated linearly, so an affine
        pre-registration is carried over exactly; ``"constant"`` (fair_compat): copied, as
        FAIR's mfPu (:func:`multireg.gridops.prolong`).
    det_method
        Nonparametric: the det ∇y behind ``det_min``, ``folded_cells`` and the fold warning.
        ``"multireg"`` (default): :func:`multireg.gridops.jacobian_determinant`, differences of
        the unknowns on their own grid; ``"fair"`` (fair_compat): FAIR's geometry 'Jac' after
        carrying y to the nodes (:func:`multireg.gridops.fair_jacobian_determinant`), whose
        averaging hides some folds of a staggered map.
    """
    # ------------------------------------------------------------- validate, before any work
    T, R, w0 = _checks.detached(T), _checks.detached(R), _checks.detached(w0)
    _checks.choice("dtype", dtype, ("float64", "float32"))
    shape_T = _checks.image("T", T, dtype=dtype)
    shape_R = _checks.image("R", R, dtype=dtype)
    _checks.same_shape(("T", "R"), shape_T, shape_R)
    domain = Domain(omega, shape_T)
    nonparametric = isinstance(transform, str) and transform == "nonparametric"
    _checks.choice("method", method, METHODS)
    _checks.choice("image_model", image_model, ("spline", "linear"))
    model = ImageModel(image_model, theta=theta)
    if not isinstance(fair_compat, (bool, np.bool_)):
        raise TypeError(f"fair_compat must be True or False, not {type(fair_compat).__name__}")
    fair_compat = bool(fair_compat)
    linear_solver, prolongation, det_method = (
        _checks.choice(name, value, allowed)
        for name, value, allowed in (
            ("linear_solver", _fair_default(linear_solver, fair_compat, "pcg", "direct"),
             ("pcg", "direct")),
            ("prolongation", _fair_default(prolongation, fair_compat, "linear", "constant"),
             ("linear", "constant")),
            ("det_method", _fair_default(det_method, fair_compat, "multireg", "fair"),
             ("multireg", "fair")),
        )
    )  # fmt: skip
    dist = distance_of(distance, DISTANCES)
    if fair_compat:
        dist = _fair_distance(dist, T, R, given=not isinstance(distance, str))
    if method == "gauss-newton" and not dist.gauss_newton:
        raise ValueError(
            f"distance {type(dist).__name__} has no Gauss–Newton form; "
            "use method='lbfgs', 'trust-region' or 'newton'"
        )
    for name, value in (("max_iter", max_iter), ("cg_max_iter", cg_max_iter)):
        if isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, not bool")
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    for name, value in (("tol_j", tol_j), ("tol_y", tol_y), ("tol_g", tol_g), ("cg_rtol", cg_rtol)):
        _checks.positive(name, value, allow_zero=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, not {type(callback).__name__}")
    selected = select_levels(domain, levels)
    reg: Regularizer | None = None
    if nonparametric:
        if method not in ("gauss-newton", "lbfgs"):
            raise ValueError("nonparametric registration supports method 'gauss-newton' or 'lbfgs'")
        if alpha is None:
            raise ValueError(
                "alpha (the regularisation weight) is required for nonparametric registration"
            )
        _checks.choice("regularizer", regularizer, REGULARIZERS)
        reg = make_regularizer(regularizer, alpha=alpha, **_elastic_options(regularizer, mu, lam))
        if pre_registration is not None:
            _checks.choice("pre_registration", pre_registration, ("translation", "rigid", "affine"))
        if w0 is not None:
            raise ValueError(
                "w0 applies to parametric registration; nonparametric starts from pre_registration"
            )
        trafo: Transform | None = None
    else:
        trafo = build_transform(transform, domain, p)
        if p is not None and not (isinstance(transform, str) and transform == "bspline"):
            raise ValueError("p (the control grid) applies to transform='bspline' only")
    # Intensities far from 1 (1e300, 1e-310) are multiplied by a power of two (exact); the
    # distance and the regulariser's weight follow, so the problem is the same in other units.
    exponent = _checks.intensity_exponent(dtype, T, R)
    power = 0
    if exponent:
        scaled = rescaled(dist, exponent)
        if scaled is None:
            raise ValueError(
                f"T and R have intensities of magnitude 2^{-exponent}, beyond what {dtype} "
                f"computes safely, and distance {type(dist).__name__} cannot be rescaled "
                "exactly: divide the images by a common factor near their magnitude"
            )
        dist, power = scaled
        if reg is not None:
            try:
                reg = dataclasses.replace(reg, alpha=math.ldexp(reg.alpha, exponent * power))
            except OverflowError:
                raise ValueError(
                    f"alpha = {alpha!r} is about 2^{-exponent * power} times the distance of "
                    f"these images (intensities of magnitude 2^{-exponent}): the problem "
                    "cannot be represented; rescale the images"
                ) from None

    bk = resolve_backend(backend, T, R)
    if not bk.differentiable:
        raise ValueError(f"backend {bk.name!r} cannot differentiate; use 'torch' or 'jax'")
    Tb, Rb = _to_backend(bk, T, dtype, exponent), _to_backend(bk, R, dtype, exponent)
    if w0 is not None:
        w0 = bk.asarray(w0, dtype=dtype)
        if tuple(w0.shape) != (trafo.n_params,):
            raise ValueError(f"w0 must have shape ({trafo.n_params},), got {tuple(w0.shape)}")
        if not np.all(np.isfinite(_checks.to_host(w0))):
            raise ValueError("w0 contains NaN or Inf")

    options = dict(tol_j=tol_j, tol_y=tol_y, tol_g=tol_g, max_iter=max_iter)
    if method in ("gauss-newton", "newton", "trust-region"):
        options.update(cg_rtol=cg_rtol, cg_max_iter=cg_max_iter)
    if method in ("gauss-newton", "newton"):
        options.update(linear_solver=linear_solver)
    started = time.perf_counter()
    pyramid = image_pyramid(bk, domain, selected, Tb, Rb)
    # α, μ, λ, θ and the distance's parameters are the kernels' data, not their cache key
    problem = Problem.of(bk, model, dist, reg, Tb.dtype, device_of(Tb))

    units = Units(exponent, power)
    if nonparametric:
        out = _nonparametric(
            bk, pyramid, problem, pre_registration, method, options, callback, verbose,
            units, prolongation=prolongation, det_method=det_method,
        )  # fmt: skip
    else:
        out = _parametric(
            bk, pyramid, trafo, problem, method, w0, options, callback, verbose, units
        )
    out.timings["total"] = time.perf_counter() - started
    return out


def _fair_default(value, fair_compat, default, fair):
    """An option's value: the one given, else FAIR's under fair_compat, else multireg's."""
    if value is not None:
        return value
    return fair if fair_compat else default


FAIR_MI_RANGE = (0.0, 256.0)
"""FAIR's MI assumes intensities in [0, 256] (MImex.m's minT, maxT, minR, maxR)."""


def _fair_distance(dist, T, R, *, given):
    """The distance as FAIR computes it (see ``fair_compat`` in :func:`register`)."""
    from multireg.distances import MI, NGF, MIGaussNewton

    if type(dist) is NGF:
        return dataclasses.replace(dist, boundary="fair")
    if type(dist) is not MI:
        return dist
    if given:
        return MIGaussNewton(
            bins_T=max(1, dist.bins_T - 3),
            bins_R=max(1, dist.bins_R - 3),
            range_T=dist.range_T,
            range_R=dist.range_R,
        )
    lo, hi = FAIR_MI_RANGE
    inside = all(
        lo <= float(np.min(a)) and float(np.max(a)) <= hi
        for a in (np.asarray(_checks.to_host(T)), np.asarray(_checks.to_host(R)))
    )
    ranges = {"range_T": FAIR_MI_RANGE, "range_R": FAIR_MI_RANGE} if inside else {}
    return MIGaussNewton(**ranges)


def _to_backend(bk, x, dtype, exponent):
    if not exponent:
        return bk.asarray(x, dtype=dtype)
    # Scale on the host in float64: XLA flushes subnormal inputs (1e-310) to zero, and 1e300
    # would overflow a direct conversion to float32. Then back to the array's device.
    device = None if isinstance(x, np.ndarray) else device_of(x)
    host = _checks.times_power_of_two(np.asarray(_checks.to_host(x), dtype=np.float64), exponent)
    return bk.asarray(host, dtype=dtype, device=device)


@dataclass(frozen=True)
class Units:
    """The computation ran on intensities × 2^``exponent``, where D and J are 2^(exponent ·
    ``power``) times the user's: this converts what is reported back, exactly (to ±inf or 0
    where the user's value is beyond the float range, as for SSD of intensities near 1e300)."""

    exponent: int = 0
    power: int = 0

    def image(self, bk: Any, x: Any) -> Any:
        """An image computed in the scaled units, in the user's (on the host: see
        :func:`_to_backend`)."""
        if not self.exponent:
            return x
        return _to_backend(bk, x, x.dtype, -self.exponent)

    def j(self, value: float) -> float:
        """A computed J (or D, or ‖∇J‖) in the user's units."""
        if self.exponent == 0 or self.power == 0:
            return value
        try:
            return math.ldexp(value, -self.power * self.exponent)
        except OverflowError:
            return math.copysign(math.inf, value)

    def record(self, r: Record) -> Record:
        if self.exponent == 0 or self.power == 0:
            return r
        return dataclasses.replace(r, fun=self.j(r.fun), grad_norm=self.j(r.grad_norm))

    def result(self, res: Result) -> Result:
        if self.exponent == 0 or self.power == 0:
            return res
        return dataclasses.replace(
            res,
            fun=self.j(res.fun),
            grad_norm=self.j(res.grad_norm),
            history=tuple(self.record(r) for r in res.history),
        )


MIN_CELLS = 4
"""The fewest cells along an axis that a level may have: with fewer, the cubic spline of a
2×2 image is mostly boundary, and maps that move the image out of the domain win."""
AUTO_MIN_CELLS = 8
"""``levels="auto"``: every level of the pyramid whose smallest axis has at least this many
cells (FAIR's examples start at 8×8, level 3)."""


def distance_of(distance: Any, names: tuple[str, ...]) -> Distance:
    """The :class:`~multireg.distances.Distance` that ``distance`` names (one of ``names``, any
    case) or is; a ValueError/TypeError naming the argument otherwise. Used by ``register`` and
    ``register_batch``."""
    if isinstance(distance, str):
        _checks.choice("distance", distance.lower(), names)
        return make_distance(distance)
    if isinstance(distance, Distance):
        return distance
    raise TypeError(f"distance must be a name or a Distance, not {type(distance).__name__}")


def select_levels(domain: Domain, levels: Any) -> list[Domain]:
    """The pyramid's domains that ``levels`` selects (``register``'s ``levels``: None, "auto",
    an int k or FAIR's level numbers ``(lo, hi)``), coarsest first; every one has at least
    ``MIN_CELLS`` cells along every axis. Bad values raise, naming ``levels``."""
    if min(domain.m) < MIN_CELLS:
        raise ValueError(
            f"T and R have shape {domain.m}: registration needs at least {MIN_CELLS} cells "
            "along every axis"
        )
    usable = pyramid_domains(domain, min_size=MIN_CELLS)
    if levels is None:
        return [domain]
    if isinstance(levels, str):
        if levels != "auto":
            raise ValueError(f"levels must be None, 'auto', an int or a pair, not {levels!r}")
        return [d for d in usable if min(d.m) >= AUTO_MIN_CELLS] or [domain]
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        if not 1 <= levels <= len(usable):
            raise ValueError(
                f"levels must be between 1 and {len(usable)} for shape {domain.m} (every level "
                f"needs at least {MIN_CELLS} cells along every axis), got {levels}"
            )
        return usable[-int(levels) :]
    if isinstance(levels, tuple) and len(levels) == 2:
        lo, hi = levels
        for v in levels:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"levels must be a pair of integers (lo, hi), not {levels!r}")
        everything = pyramid_domains(domain, min_size=1)
        chosen = [d for d in everything if lo <= d.level <= hi]
        if not chosen or lo > hi:
            numbers = [d.level for d in usable]
            raise ValueError(f"levels {levels} selects no level; this image has levels {numbers}")
        small = [d for d in chosen if min(d.m) < MIN_CELLS]
        if small:
            raise ValueError(
                f"levels {levels} includes level {small[0].level} with m = {small[0].m}; every "
                f"level needs at least {MIN_CELLS} cells along every axis (the coarsest possible "
                f"here is level {usable[0].level})"
            )
        return chosen
    raise TypeError(f"levels must be None, 'auto', an int or a pair (lo, hi), not {levels!r}")


def _elastic_options(name: str, mu: float, lam: float) -> dict:
    if name == "elastic":
        return {"mu": mu, "lam": lam}
    if (mu, lam) != (1.0, 0.0):
        raise ValueError(f"mu and lam apply to the elastic regulariser, not {name!r}")
    return {}


def build_transform(transform: Any, domain: Domain, p: Any) -> Transform:
    """``register``'s ``transform`` as a Transform on ``domain``: a Transform is checked against
    the images' dimension, a name is built (``"bspline"`` needs the control grid ``p``)."""
    if isinstance(transform, Transform):
        if transform.dim != domain.dim:
            raise ValueError(f"transform is {transform.dim}D but the images are {domain.dim}D")
        return transform
    _checks.choice("transform", transform, (*PARAMETRIC, "nonparametric"))
    if transform == "bspline":
        if p is None:
            raise ValueError("transform='bspline' needs p, the control grid size, e.g. p=(8, 8)")
        return make_transform("bspline", omega=domain.omega, p=p)
    return make_transform(transform, dim=domain.dim)


def _solve(method, objective, x0, options, x_stop, j_stop, j_scale, callback):
    common = dict(x_stop=x_stop, j_stop=j_stop, j_scale=j_scale, callback=callback, **options)
    if method == "gauss-newton":
        return optimize.gauss_newton(objective, x0, **common)
    if method == "newton":
        return optimize.newton(objective, x0, **common)
    if method == "trust-region":
        common["cg_max_iter"] = min(common["cg_max_iter"], 50)
        return optimize.trust_region(objective, x0, curvature="exact", **common)
    common.pop("cg_rtol", None)
    common.pop("cg_max_iter", None)
    return optimize.lbfgs(objective, x0, **common)


def _parametric(
    bk, pyramid, trafo, problem, method, w0, options, callback, verbose, units
):  # fmt: skip
    dtype = pyramid[-1].images[0].dtype
    device = device_of(pyramid[-1].images[0])
    # the identity's parameters from the host: no eager program for a constant
    w_id = bk.asarray(np.asarray(trafo.identity()), dtype=dtype, device=device)
    w = w_id if w0 is None else w0
    hyper = problem.hyper
    results = []
    for level in pyramid:
        kernels = parametric_kernels(bk, trafo, problem.model, problem.dist, level.domain)
        coef, Rc, x, stats = kernels["setup"](hyper, *level.images)
        j_stop, *scale = bk.to_numpy(stats).tolist()
        objective = parametric_objective(bk, kernels, (hyper, coef, Rc, x), trafo.n_params)
        cb = _level_callback(callback, verbose, "parametric", level.domain, units)
        res = _solve(method, objective, w, options, w_id, j_stop, j_scale_of(scale), cb)
        w = res.x
        final = res.fun
        res = units.result(res)
        results.append(LevelResult("parametric", level.domain, res, res.fun))
    warped, y = kernels["result"](w, hyper, coef, x)
    j_id = j_stop  # J at the identity on the finest level
    return RegistrationResult(
        w=w,
        y=y,
        y_grid=None,
        warped=units.image(bk, warped),
        distance=units.j(final),
        reduction=final / j_id if j_id else float("nan"),
        levels=tuple(results),
        transform=trafo,
        backend=bk.name,
        intensity_exponent=units.exponent,
    )


def _level_callback(callback, verbose, stage, domain, units):
    if callback is None and not verbose:
        return None

    def cb(record):
        record = units.record(record)
        if verbose:
            print(
                f"{stage} m={domain.m} it={record.iteration:3d} J={record.fun:.6e} "
                f"|dJ|={record.grad_norm:.3e} step={record.step_length:.3g}"
            )
        if callback is not None:
            callback(stage, domain, record)

    return cb


def _nonparametric(
    bk, pyramid, problem, pre, method, options, callback, verbose, units, *,
    prolongation="linear", det_method="multireg",
):  # fmt: skip
    coarsest = pyramid[0]
    hyper = problem.hyper
    results = []
    # parametric pre-registration on the coarsest level (FAIR MLIR); its map is y_ref everywhere
    if pre is not None:
        pre_trafo = make_transform(pre, dim=coarsest.domain.dim)
        pre_method = "gauss-newton" if problem.dist.gauss_newton else "lbfgs"
        pre_out = _parametric(
            bk, [coarsest], pre_trafo, problem, pre_method, None,
            {k: v for k, v in options.items() if k not in ("cg_rtol", "cg_max_iter")},
            callback, verbose, units,
        )  # fmt: skip
        w_pre = pre_out.w
        results.extend(pre_out.levels)
    else:
        pre_trafo, w_pre = None, None
    kind = problem.reg.kind
    y = None
    previous = None
    for level in pyramid:
        d = level.domain
        kernels = nonparametric_kernels(
            bk, problem.model, problem.dist, problem.reg, d, pre_trafo
        )
        coef, Rc, x_grid, y_ref, reg_diag, stats = kernels["setup"](hyper, *level.images, w_pre)
        j_stop, d_id, *scale = bk.to_numpy(stats).tolist()
        if previous is None:
            y = y_ref
        else:
            y = compiled(bk, gridops.prolong, previous, d, kind, boundary=prolongation)(y)
        objective = nonparametric_objective(
            bk, kernels, problem, d, (hyper, coef, Rc), y_ref, reg_diag
        )
        cb = _level_callback(callback, verbose, "nonparametric", d, units)
        res = _solve(method, objective, y, options, x_grid, j_stop, j_scale_of(scale), cb)
        y = res.x
        final, yc, warped, det = kernels["result"](y, hyper, coef, Rc)
        final = float(bk.to_numpy(final))
        results.append(LevelResult("nonparametric", d, units.result(res), units.j(final)))
        previous = d
    warped = units.image(bk, warped)  # the finest level's
    if det_method == "fair":
        det = gridops.fair_jacobian_determinant(bk.to_numpy(y), d, kind)
    else:
        det = np.asarray(bk.to_numpy(det))
    folded = int(np.count_nonzero(det <= 0))
    det_min = float(np.min(det))
    warnings = ()
    if folded:
        warnings = (
            f"the map folds: det ∇y ≤ 0 in {folded} of {det.size} cells (min {det_min:.3g}); "
            "it is not invertible there. Increase alpha (or the image model's theta)",
        )
    return RegistrationResult(
        w=w_pre,
        y=yc,
        y_grid=y,
        warped=warped,
        distance=units.j(final),
        reduction=final / d_id if d_id else float("nan"),
        levels=tuple(results),
        transform="nonparametric",
        backend=bk.name,
        det_min=det_min,
        folded_cells=folded,
        warnings=warnings,
        intensity_exponent=units.exponent,
    )
