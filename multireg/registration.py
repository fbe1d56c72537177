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

Every kernel an optimiser calls is built once per configuration and compiled by the backend (a
``jax.jit`` cache keyed by everything the kernel depends on: backend, transformation, image model,
distance, regulariser and domain), with the data passed as arguments; a second registration of
the same configuration therefore runs warm.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from multireg import _checks, gridops, optimize
from multireg._backend import resolve_backend
from multireg.distances import Distance
from multireg.distances import distance as make_distance
from multireg.grid import Domain, multilevel, pyramid_domains
from multireg.interpolation import ImageModel
from multireg.optimize import LinearOperator, Objective, Result, Status
from multireg.regularizers import Regularizer
from multireg.regularizers import regularizer as make_regularizer
from multireg.transforms import Transform
from multireg.transforms import transform as make_transform

__all__ = ["LevelResult", "RegistrationResult", "register"]

PARAMETRIC = ("translation", "rigid", "affine", "bspline")
METHODS = ("gauss-newton", "newton", "trust-region", "lbfgs")
DISTANCES = ("ssd", "ncc", "ngf", "mi")
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
    the cells (nonparametric only; ≤ 0 means the map folds).
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
    levels: int | tuple[int, int] | None = None,
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
    max_iter: int = 10,
    tol_j: float = 1e-3,
    tol_y: float = 1e-2,
    tol_g: float = 1e-2,
    cg_rtol: float = 0.1,
    cg_max_iter: int = 500,
    callback: Callable[[str, Domain, Any], Any] | None = None,
    verbose: bool = False,
) -> RegistrationResult:
    """Register template ``T`` to reference ``R`` on the domain ``omega``.

    Parameters (keyword-only after ``omega``; a misspelt option is an error):

    T, R
        Images of the same shape ``m`` (2D or 3D), NumPy or backend arrays; ``omega`` the
        domain ``(a1, b1, a2, b2[, a3, b3])``.
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
        None: one level at full resolution. An int k: the k finest levels of the pyramid. A
        pair ``(lo, hi)``: FAIR's level numbers (level ℓ has about 2^ℓ cells per axis).
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
        Per level: FAIR's stopping rules and the PCG tolerance (FAIR's defaults).
    callback
        ``callback(stage, domain, record)`` after each iteration (for progress displays).
    """
    # ------------------------------------------------------------- validate, before any work
    shape_T = _checks.image("T", T)
    shape_R = _checks.image("R", R)
    _checks.same_shape(("T", "R"), shape_T, shape_R)
    domain = Domain(omega, shape_T)
    nonparametric = transform == "nonparametric"
    _checks.choice("method", method, METHODS)
    _checks.choice("dtype", dtype, ("float64", "float32"))
    _checks.choice("image_model", image_model, ("spline", "linear"))
    model = ImageModel(image_model, theta=theta)
    if isinstance(distance, str):
        _checks.choice("distance", distance.lower(), DISTANCES)
        dist = make_distance(distance)
    elif isinstance(distance, Distance):
        dist = distance
    else:
        raise TypeError(f"distance must be a name or a Distance, not {type(distance).__name__}")
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
    selected = _select_levels(domain, levels)
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
        trafo = _make_transform(transform, domain, p)
        if p is not None and not (isinstance(transform, str) and transform == "bspline"):
            raise ValueError("p (the control grid) applies to transform='bspline' only")

    bk = resolve_backend(backend, T, R)
    if not bk.differentiable:
        raise ValueError(f"backend {bk.name!r} cannot differentiate; use 'torch' or 'jax'")
    Tb, Rb = bk.asarray(T, dtype=dtype), bk.asarray(R, dtype=dtype)
    if w0 is not None:
        w0 = bk.asarray(w0, dtype=dtype)
        if tuple(w0.shape) != (trafo.n_params,):
            raise ValueError(f"w0 must have shape ({trafo.n_params},), got {tuple(w0.shape)}")
        if not np.all(np.isfinite(_checks.to_host(w0))):
            raise ValueError("w0 contains NaN or Inf")

    options = dict(tol_j=tol_j, tol_y=tol_y, tol_g=tol_g, max_iter=max_iter)
    if method in ("gauss-newton", "newton", "trust-region"):
        options.update(cg_rtol=cg_rtol, cg_max_iter=cg_max_iter)
    started = time.perf_counter()
    pyramid = [lv for lv in multilevel(domain, Tb, Rb, min_size=1) if lv.domain in selected]

    if nonparametric:
        out = _nonparametric(
            bk, pyramid, model, dist, reg, pre_registration, method, options, callback, verbose
        )
    else:
        out = _parametric(bk, pyramid, trafo, model, dist, method, w0, options, callback, verbose)
    out.timings["total"] = time.perf_counter() - started
    return out


def _select_levels(domain: Domain, levels: Any) -> list[Domain]:
    all_levels = pyramid_domains(domain, min_size=1)
    if levels is None:
        return [domain]
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        if not 1 <= levels <= len(all_levels):
            raise ValueError(f"levels must be between 1 and {len(all_levels)}, got {levels}")
        return all_levels[-int(levels) :]
    if isinstance(levels, tuple) and len(levels) == 2:
        lo, hi = levels
        chosen = [d for d in all_levels if lo <= d.level <= hi]
        if not chosen or lo > hi:
            numbers = [d.level for d in all_levels]
            raise ValueError(f"levels {levels} selects no level; this image has levels {numbers}")
        return chosen
    raise TypeError(f"levels must be None, an int or a pair (lo, hi), not {levels!r}")


def _elastic_options(name: str, mu: float, lam: float) -> dict:
    if name == "elastic":
        return {"mu": mu, "lam": lam}
    if (mu, lam) != (1.0, 0.0):
        raise ValueError(f"mu and lam apply to the elastic regulariser, not {name!r}")
    return {}


def _make_transform(transform: Any, domain: Domain, p: Any) -> Transform:
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


# ------------------------------------------------------------------------------ parametric


def _image_and_gradient(bk, model, coef, domain, y):
    """T(y) (shape (n,)) and the pointwise gradient ∇T(y) (shape (n, d)) from one pullback:
    T(y_i) depends on y_i only, so the pullback of a vector of ones is the gradient."""
    Tc, pullback = bk.vjp(lambda u: model.evaluate(coef, domain, u), y)
    return Tc, pullback(bk.xp.ones_like(Tc))


@functools.lru_cache(maxsize=32)
def _parametric_kernels(bk, trafo, model, dist, domain):
    """Compiled J, ∇J, Gauss–Newton and exact curvatures of J(w) on one level."""
    xp = bk.xp

    def warped(w, coef, x):
        return xp.reshape(model.evaluate(coef, domain, trafo(w, x)), domain.m)

    def residual(w, coef, Rc, x):
        return dist.residual(warped(w, coef, x), Rc, domain)

    def J(w, coef, Rc, x):
        return dist(warped(w, coef, x), Rc, domain)

    def value_and_grad(w, coef, Rc, x):
        return bk.value_and_grad(lambda v: J(v, coef, Rc, x))(w)

    def gn_matrix(w, coef, Rc, x):
        """J_rᵀ W J_r with J_r = dr · dT · dy (FAIR's factorisation, book §6.3): one pullback
        gives the pointwise image gradient dT, so the stencil is not pushed once per parameter."""
        Tc, dT = _image_and_gradient(bk, model, coef, domain, trafo(w, x))
        dy = bk.jacobian(lambda v: trafo(v, x))(w)  # (n, d, p); cheap: no interpolation
        JT = sum(dT[:, k, None] * dy[:, k, :] for k in range(domain.dim))  # (n, p)
        T0 = xp.reshape(Tc, domain.m)
        zero = xp.zeros(JT.shape[1], dtype=JT.dtype, device=_device(JT))
        Jr = bk.jacobian(lambda t: dist.residual(T0 + xp.reshape(JT @ t, domain.m), Rc, domain))(
            zero
        )
        W = dist.gn_weight(dist.residual(T0, Rc, domain), Rc, domain)
        return Jr.T @ ((W[:, None] if W.ndim else W) * Jr)

    def gn_matvec(w, v, coef, Rc, x):
        r, jv = bk.jvp(lambda u: residual(u, coef, Rc, x), w, v)
        _, pullback = bk.vjp(lambda u: residual(u, coef, Rc, x), w)
        return pullback(dist.gn_weight(r, Rc, domain) * jv)

    def hessian(w, coef, Rc, x):
        return bk.hessian(lambda v: J(v, coef, Rc, x))(w)

    def hvp(w, v, coef, Rc, x):
        return bk.hvp(lambda u: J(u, coef, Rc, x), w, v)

    jit = bk.jit
    return dict(
        warped=jit(warped),
        J=jit(J),
        value_and_grad=jit(value_and_grad),
        gn_matrix=jit(gn_matrix),
        gn_matvec=jit(gn_matvec),
        hessian=jit(hessian),
        hvp=jit(hvp),
    )


def _parametric_objective(bk, kernels, data, n_params) -> Objective:
    dense = n_params <= optimize.DENSE_MAX

    def gauss_newton(w):
        if dense:
            return LinearOperator.from_matrix(kernels["gn_matrix"](w, *data))
        return LinearOperator(matvec=lambda v: kernels["gn_matvec"](w, v, *data))

    def exact(w):
        if dense:
            return LinearOperator.from_matrix(kernels["hessian"](w, *data))
        return LinearOperator(matvec=lambda v: kernels["hvp"](w, v, *data))

    return Objective(
        bk=bk,
        value=lambda w: kernels["J"](w, *data),
        value_and_grad=lambda w: kernels["value_and_grad"](w, *data),
        hessian=gauss_newton,
        exact_hessian=exact,
        curvature="gauss-newton",
    )


def _level_data(bk, model, level):
    """Template coefficients, the reference sampled at cell centres, and the grid (FAIR)."""
    T, R = level.images
    return _level_kernel(bk, model, level.domain)(T, R)


@functools.lru_cache(maxsize=32)
def _level_kernel(bk, model, d):
    """One compiled function per level: eagerly, JAX would compile every small operation of the
    spline evaluation and coefficient solve separately (seconds per level)."""
    xp = bk.xp

    def level_data(T, R):
        x = d.cell_centers(xp, dtype=T.dtype, device=_device(T))
        coef = model.coefficients(T)
        Rc = R
        if model.kind == "spline" and model.theta != 0:  # FAIR smooths R with the same theta
            Rc = xp.reshape(model.evaluate(model.coefficients(R), d, x), d.m)
        return coef, Rc, x

    return bk.jit(level_data)


def _solve(method, objective, x0, options, x_stop, j_stop, callback):
    common = dict(x_stop=x_stop, j_stop=j_stop, callback=callback, **options)
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


def _parametric(bk, pyramid, trafo, model, dist, method, w0, options, callback, verbose):
    xp = bk.xp
    dtype = pyramid[-1].images[0].dtype
    device = _device(pyramid[-1].images[0])
    w_id = trafo.identity(xp, dtype=dtype, device=device)
    w = w_id if w0 is None else w0
    results = []
    for level in pyramid:
        kernels = _parametric_kernels(bk, trafo, model, dist, level.domain)
        data = _level_data(bk, model, level)
        objective = _parametric_objective(bk, kernels, data, trafo.n_params)
        j_stop = float(bk.to_numpy(objective.value(w_id)))
        cb = _level_callback(callback, verbose, "parametric", level.domain)
        res = _solve(method, objective, w, options, w_id, j_stop, cb)
        w = res.x
        results.append(LevelResult("parametric", level.domain, res, res.fun))
    finest = pyramid[-1]
    coef, Rc, x = _level_data(bk, model, finest)
    y = trafo(w, x)
    warped = kernels["warped"](w, coef, x)
    j_id = float(bk.to_numpy(kernels["J"](w_id, coef, Rc, x)))
    final = results[-1].distance
    return RegistrationResult(
        w=w,
        y=y,
        y_grid=None,
        warped=warped,
        distance=final,
        reduction=final / j_id if j_id else float("nan"),
        levels=tuple(results),
        transform=trafo,
        backend=bk.name,
    )


def _level_callback(callback, verbose, stage, domain):
    if callback is None and not verbose:
        return None

    def cb(record):
        if verbose:
            print(
                f"{stage} m={domain.m} it={record.iteration:3d} J={record.fun:.6e} "
                f"|dJ|={record.grad_norm:.3e} step={record.step_length:.3g}"
            )
        if callback is not None:
            callback(stage, domain, record)

    return cb


def _device(x):
    import array_api_compat

    return array_api_compat.device(x)


# --------------------------------------------------------------------------- nonparametric


@functools.lru_cache(maxsize=32)
def _nonparametric_kernels(bk, model, dist, reg: Regularizer, domain):
    """Compiled J(y) = D(T(P y), R) + S(y − y_ref), its gradient and the pieces of H_GN."""
    xp = bk.xp
    kind = reg.kind

    def points(y):
        return gridops.to_cell_centers(y, domain, kind)

    def J(y, coef, Rc, y_ref):
        Tc = xp.reshape(model.evaluate(coef, domain, points(y)), domain.m)
        return dist(Tc, Rc, domain) + reg.value(y, domain, y_ref)

    def distance_value(y, coef, Rc):
        Tc = xp.reshape(model.evaluate(coef, domain, points(y)), domain.m)
        return dist(Tc, Rc, domain)

    def value_and_grad(y, coef, Rc, y_ref):
        return bk.value_and_grad(lambda v: J(v, coef, Rc, y_ref))(y)

    def linearise(y, coef, Rc):
        """Pointwise image gradients dT (n, d), the residual and its GN weight at y."""
        Tc, dT = _image_and_gradient(bk, model, coef, domain, points(y))
        r = dist.residual(xp.reshape(Tc, domain.m), Rc, domain)
        W = dist.gn_weight(r, Rc, domain)
        return dT, xp.reshape(Tc, domain.m), W

    def gn_matvec(v, dT, Tc, W, Rc):
        """(Pᵀ dTᵀ J_rᵀ W J_r dT P + α hd BᵀB) v, FAIR's matrix-free GN operator (book §9.4)."""
        z = points(v)  # summing the d columns by hand: torch reduces a tiny last axis slowly
        t = xp.reshape(sum(dT[:, k] * z[:, k] for k in range(domain.dim)), domain.m)
        _, jt = bk.jvp(lambda u: dist.residual(u, Rc, domain), Tc, t)
        _, pullback = bk.vjp(lambda u: dist.residual(u, Rc, domain), Tc)
        g = xp.reshape(pullback(W * jt), (-1,))
        back = gridops.to_cell_centers_adjoint(dT * g[:, None], domain, kind)
        return back + reg.hvp(v, domain)

    def gn_diagonal(dT, W):
        """diag of the data term, exact when the residual is T itself (SSD, NCC): P's entries
        are equal within a row, so diag(Pᵀ D P) = c·Pᵀ(diag D) with c the entry value."""
        c = {"staggered": 0.5, "cell-centered": 1.0, "nodal": 0.5**domain.dim}[kind]
        w = W if W.ndim == 0 else xp.reshape(W, (-1, 1))
        return c * gridops.to_cell_centers_adjoint(w * dT * dT, domain, kind)

    def hvp(y, v, coef, Rc, y_ref):
        return bk.hvp(lambda u: J(u, coef, Rc, y_ref), y, v)

    jit = bk.jit
    return dict(
        J=jit(J),
        hvp=jit(hvp),
        distance=jit(distance_value),
        value_and_grad=jit(value_and_grad),
        linearise=jit(linearise),
        gn_matvec=jit(gn_matvec),
        gn_diagonal=jit(gn_diagonal),
    )


def _nonparametric(bk, pyramid, model, dist, reg, pre, method, options, callback, verbose):
    xp = bk.xp
    coarsest = pyramid[0]
    dtype = coarsest.images[0].dtype
    device = _device(coarsest.images[0])
    results = []
    # parametric pre-registration on the coarsest level (FAIR MLIR); its map is y_ref everywhere
    if pre is not None:
        pre_trafo = make_transform(pre, dim=coarsest.domain.dim)
        pre_method = "gauss-newton" if dist.gauss_newton else "lbfgs"
        pre_out = _parametric(
            bk, [coarsest], pre_trafo, model, dist, pre_method, None,
            {k: v for k, v in options.items() if k not in ("cg_rtol", "cg_max_iter")},
            callback, verbose,
        )  # fmt: skip
        w_pre = pre_out.w
        results.extend(pre_out.levels)
    else:
        pre_trafo, w_pre = None, None
    kind = reg.kind
    y = None
    previous = None
    for level in pyramid:
        d = level.domain
        x_grid = gridops.identity_grid(d, kind, xp, dtype=dtype, device=device)
        if pre_trafo is None:
            y_ref = x_grid
        else:
            y_ref = _map_grid(pre_trafo, w_pre, x_grid, d, kind, xp)
        y = y_ref if previous is None else gridops.prolong(y, previous, d, kind)
        kernels = _nonparametric_kernels(bk, model, dist, reg, d)
        coef, Rc, _ = _level_data(bk, model, level)
        objective = _nonparametric_objective(bk, kernels, reg, d, coef, Rc, y_ref, dtype, device)
        j_stop = float(bk.to_numpy(objective.value(x_grid)))
        cb = _level_callback(callback, verbose, "nonparametric", d)
        res = _solve(method, objective, y, options, x_grid, j_stop, cb)
        y = res.x
        dist_value = float(bk.to_numpy(kernels["distance"](y, coef, Rc)))
        results.append(LevelResult("nonparametric", d, res, dist_value))
        previous = d
    finest = pyramid[-1]
    d = finest.domain
    coef, Rc, _ = _level_data(bk, model, finest)
    yc = gridops.to_cell_centers(y, d, kind)
    warped = xp.reshape(model.evaluate(coef, d, yc), d.m)
    x_grid = gridops.identity_grid(d, kind, xp, dtype=dtype, device=device)
    d_id = float(
        bk.to_numpy(_nonparametric_kernels(bk, model, dist, reg, d)["distance"](x_grid, coef, Rc))
    )
    det = gridops.jacobian_determinant(y, d, kind)
    final = results[-1].distance
    return RegistrationResult(
        w=w_pre,
        y=yc,
        y_grid=y,
        warped=warped,
        distance=final,
        reduction=final / d_id if d_id else float("nan"),
        levels=tuple(results),
        transform="nonparametric",
        backend=bk.name,
        det_min=float(bk.to_numpy(xp.min(det))),
    )


def _map_grid(trafo, w, x_grid, domain, kind, xp):
    """Apply a parametric map to every point of a stacked grid vector (per component)."""
    parts = gridops.split(x_grid, domain, kind)
    if kind == "cell-centered" or kind == "nodal":
        pts = xp.stack([xp.reshape(c, (-1,)) for c in parts], axis=1)
        y = trafo(w, pts)
        return gridops.merge([xp.reshape(y[:, k], parts[k].shape) for k in range(domain.dim)])
    # staggered: component k lives on its own grid; map that grid's points, keep component k
    grids = domain.staggered(xp, dtype=x_grid.dtype, device=_device(x_grid))
    comps = []
    for k, g in enumerate(grids):
        comps.append(xp.reshape(trafo(w, g)[:, k], parts[k].shape))
    return gridops.merge(comps)


def _nonparametric_objective(bk, kernels, reg, domain, coef, Rc, y_ref, dtype, device):
    xp = bk.xp
    reg_diag = reg.diagonal(domain, xp, dtype=dtype, device=device)

    def gauss_newton(y):
        dT, Tc, W = kernels["linearise"](y, coef, Rc)
        diagonal = kernels["gn_diagonal"](dT, W) + reg_diag
        return LinearOperator(
            matvec=lambda v: kernels["gn_matvec"](v, dT, Tc, W, Rc), diagonal=diagonal
        )

    return Objective(
        bk=bk,
        value=lambda y: kernels["J"](y, coef, Rc, y_ref),
        value_and_grad=lambda y: kernels["value_and_grad"](y, coef, Rc, y_ref),
        hessian=gauss_newton,
        exact_hessian=lambda y: LinearOperator(
            matvec=lambda v: kernels["hvp"](y, v, coef, Rc, y_ref)
        ),
        curvature="gauss-newton",
    )
