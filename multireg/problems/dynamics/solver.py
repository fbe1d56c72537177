"""Solving the dynamics problem: projected VarPro, :func:`solve` (coarse-to-fine, field of view),
:func:`fit` and the baselines (:func:`frame_by_frame`, :func:`preregister_then_fit`),
:func:`motion_error`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from multireg import _checks
from multireg._backend import resolve_backend
from multireg.grid import Domain
from multireg.optimize import LinearOperator, Objective, Status, gauss_newton
from multireg.problems import separable
from multireg.problems.dynamics.models import IntensityModel, _host
from multireg.problems.dynamics.problem import (
    COARSE_ITERATIONS,
    JACOBIANS,
    METHODS,
    MOTIONS,
    Problem,
    _build,
    _checked,
    _fov_width,
    _Input,
    _model_spec,
    _Motion,
    _motions,
    _pair,
    _validate,
)
from multireg.problems.dynamics.search import (
    SEARCH_RADIUS,
    best_rows,
    translation_columns,
    translation_search,
)
from multireg.problems.separable.inner import check_tolerances
from multireg.problems.separable.problem import assemble_parameters, free_parameters
from multireg.problems.separable.projection import joint_check

Array = Any


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DynamicsResult:
    """The motions, the registered sequence and the fitted model.

    ``w`` (N, p): per-frame motions in FAIR's layout (reference → frame coordinates, so that
    ``registered[k] = d_k(y(w_k, x))``); ``registered`` and ``model_images`` (N, m1, m2);
    ``coefficients``: the model's (regions: ``alpha`` (N, R); basis: ``maps`` (J, m1, m2) and
    ``basis`` (N, J)); ``curves`` (N, R) with ``names`` (regions: α; basis with masks: the
    model's enhancement projected on the masks; else None); ``fit_residual``
    ‖registered − model‖ / ‖registered‖; ``history`` the outer solver's records; ``status``,
    ``message``; ``timings`` in seconds. Arrays belong to the backend that computed them.
    """

    w: Array
    registered: Array
    model_images: Array
    coefficients: dict
    curves: Array | None
    names: tuple[str, ...]
    fit_residual: float
    objective: float
    method: str
    jacobian: str
    motion: str
    status: Status
    message: str
    iterations: int
    history: tuple = ()
    timings: dict = field(default_factory=dict)
    separable: separable.SeparableResult | None = None

    @property
    def success(self) -> bool:
        return self.status is Status.CONVERGED


def _result(
    P: Problem, w, c, *, method, jacobian, status, message, iterations, history, timings, sep
) -> DynamicsResult:
    bk, xp, k = P.bk, P.bk.xp, P.kernel
    registered = P.warped(w)
    m = P.domain.m
    images = xp.reshape(k.predict(c, *P.model_arrays), (w.shape[0], *m))
    diff = xp.reshape(registered - images, (-1,))
    num, den = _host(bk, xp.stack([xp.sum(diff * diff), xp.sum(registered * registered)]))
    curves = k.curves(c, *P.model_arrays) if hasattr(k, "curves") else None
    coefficients = k.coefficients(c, *P.model_arrays) if hasattr(k, "coefficients") else {"c": c}
    return DynamicsResult(
        w=w,
        registered=registered,
        model_images=images,
        coefficients=coefficients,
        curves=curves,
        names=P.names,
        fit_residual=math.sqrt(num / max(den, 1e-300)),
        objective=P.separable.value(w, c),
        method=method,
        jacobian=jacobian,
        motion=P.residual.motion.kind,
        status=status,
        message=message,
        iterations=iterations,
        history=tuple(history),
        timings=dict(timings),
        separable=sep,
    )


# -------------------------------------------------------------------- projected VarPro


def _free_index(P: Problem) -> list[int]:
    p = P.separable.n_params
    return [k * p + i for k in P.separable.free for i in range(p)]


def varpro_projected(
    P: Problem,
    w0: Array,
    *,
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
    callback: Callable | None = None,
    verbose: bool = False,
) -> separable.SeparableResult:
    """VarPro (Golub & Pereyra 1973) with the exact reduced Gauss–Newton matrix of a constant A:
    J̃ᵀJ̃ = J_bᵀJ_b − (AᵀJ_b)ᵀN⁻¹(AᵀJ_b) (see the module docstring), the envelope gradient
    J_bᵀ r(w, c(w)) and c(w) = N⁻¹Aᵀb(w) from the model's exact or CG solve. The outer loop is
    :func:`multireg.optimize.gauss_newton` (Armijo, FAIR's stopping rules); non-convergence is
    reported in the status, never raised."""
    sp = P.separable
    bk, xp, k, data = P.bk, P.bk.xp, sp.kernels, P.data
    w0 = sp.check_w(w0)
    free = _free_index(P)
    device = array_api_compat.device(w0)
    free_arr = xp.asarray(free, device=device)
    state = {"key": None, "c": None, "inner": 0}
    timings = {"jacobian": 0.0}

    def inner(x):
        if state["key"] is not x:
            state["c"] = P.inner(assemble_parameters(sp, w0, x))
            state["key"] = x
            state["inner"] += 1
        return state["c"]

    def value(x):
        return k["value"](assemble_parameters(sp, w0, x), inner(x), *data)[0]

    def value_and_grad(x):
        w = assemble_parameters(sp, w0, x)
        c = inner(x)
        return k["value"](w, c, *data)[0], free_parameters(sp, k["grad_w"](w, c, *data))

    def hessian(x):
        t = time.perf_counter()
        w = assemble_parameters(sp, w0, x)
        G = P.reduced_gram(w, inner(x), free_arr)
        timings["jacobian"] += time.perf_counter() - t
        return LinearOperator.from_matrix(G)

    objective = Objective(
        bk=bk,
        value=value,
        value_and_grad=value_and_grad,
        hessian=hessian,
        exact_hessian=hessian,
        curvature="gauss-newton",
    )
    x0 = free_parameters(sp, w0)
    res = gauss_newton(
        objective,
        x0,
        max_iter=max_iter,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        callback=callback,
        verbose=verbose,
    )
    w, c = assemble_parameters(sp, w0, res.x), inner(res.x)
    # the generic weighted solve is CG to inner_rtol: a claimed convergence must also be a
    # joint optimum (‖∇_c Φ‖ small), else the status says why
    j0 = float(_host(bk, value(x0))[0])
    res = joint_check(sp, w, c, res, tol_g * (1 + abs(j0)), P.inner_max_iter,
                                 "varpro")  # fmt: skip
    return separable.SeparableResult(
        w=w,
        f=c,
        result=res,
        inner_iterations=state["inner"],
        jacobian_iterations=0,
        timings={**res.timings, **timings},
    )


# --------------------------------------------------------------------------------- solve


def solve(
    frames: Any,
    times: Any,
    omega: Any,
    *,
    motion: str = "affine",
    model: str | IntensityModel = "regions",
    masks: Any = None,
    n_basis: int = 3,
    basis: Any = "pca",
    alpha: float | None = None,
    method: str = "varpro",
    ref: int | str = 0,
    jacobian: str = "projected",
    w0: Any = None,
    p: tuple[int, int] = (6, 6),
    beta: float = 1.0,
    theta: float = 0.0,
    backend: Any = None,
    dtype: str = "float64",
    max_iter: int = 20,
    tol_j: float = 1e-4,
    tol_y: float = 1e-3,
    tol_g: float = 1e-2,
    inner_rtol: float = 1e-10,
    inner_max_iter: int = 500,
    unrolled_iterations: int = 50,
    fov: bool | float = True,
    levels: int | None = None,
    search: bool | float | None = None,
    callback: Callable | None = None,
    verbose: bool = False,
) -> DynamicsResult:
    """Register a sequence with changing intensities: motions and intensity model jointly.

    ``frames`` (N, m1, m2) at ``times`` (N,) on the domain ``omega``; minimises the problem of
    the module docstring. Options (keyword-only; a misspelt one is an error):

    motion
        ``"affine"``, ``"rigid"`` (FAIR's layouts, reference → frame coordinates) or
        ``"nonparametric"`` (a cubic B-spline displacement on a ``p`` control grid with the
        diffusive control-grid regulariser weighted by ``beta``; p·2 parameters per frame,
        keep p small: the per-frame blocks are dense).
    model, masks, alpha, n_basis, basis
        ``"regions"`` (:class:`Regions`: needs ``masks``, a dict name → (m1, m2) boolean or
        weight array, or an array (R, m1, m2); ``alpha`` its temporal weight), ``"basis"``
        (:class:`Basis` with ``basis``, ``n_basis`` and spatial weight ``alpha``; masks
        optional, for its curves) or an object with ``bind`` (:class:`IntensityModel`).
    method, jacobian
        ``"varpro"`` (Gauss–Newton on the reduced function; ``jacobian="projected"`` is the
        exact closed form for this constant-A problem, or one of the engine's
        ``"implicit"``, ``"kaufman"``, ``"unrolled"``, ``"partial"`` through
        :func:`multireg.separable.varpro`), ``"bcd"`` (:func:`multireg.separable.bcd`) or
        ``"lap"`` (:func:`multireg.separable.lap`, when the installed engine has it).
    ref
        A frame index: that frame's motion is the identity and (regions) its data is d_ref.
        ``"groupwise"``: the regions model's reference image becomes an unknown (estimated
        from all frames); the gauge is still frame 0's motion fixed at the identity: the mean
        motion is not fixed (a mean-motion gauge would couple the frames, which the engine's
        frame-by-frame block solves do not allow).
    w0
        Starting motions (N, p), ``"identity"`` or ``"ssd"``. Default (None): the identity,
        refined coarse to fine by the coupled solve itself (``levels``), so that nothing
        relies on contrast-free early frames. ``"ssd"``: :func:`frame_by_frame` registration to
        the reference frame (SSD; affine and rigid only), which contrast changes bias. The
        reference frame's row is set to the identity whatever is given (the gauge).
    fov
        Respect the frames' field of view (default True): a frame is unknown, not dark, outside its
        own domain ω, so cells whose point y(w_k, x) leaves ω are left out of frame k's data term,
        with a C¹ ramp ``fov`` cells wide (True: :data:`FOV_WIDTH`) at ω's edge
        (:func:`multireg.distances.fov_weight`, q_k(x) ∈ [0, 1]). Each frame's term is normalised by
        its in-view fraction, D_k = |ω| · Σ_x h q_k² e_k² / Σ_x h q_k²: the mean squared misfit over
        the cells it observes, as ITK's and elastix's mean-squares metrics average over the samples
        that map inside the moving image (Klein et al., IEEE TMI 29 (2010) 196–205, §II; Ibáñez et
        al., The ITK Software Guide, "Mean Squares metric"). Without the normalisation, moving
        tissue out of view lowers the sum simply by dropping cells; with it, dropping cells lowers
        D_k only where they fit worse than the frame's mean, which at the true motion is the noise
        level everywhere. With everything in view (q ≡ 1) D_k is the plain SSD. The linear fit's
        normal matrix then depends on w (solved exactly for ``"regions"``, by CG otherwise) and
        VarPro's Gauss–Newton matrix includes the weights' derivatives
        (:meth:`Problem.reduced_gram`). False: every cell counts, zero read outside ω (the study's
        objective). A known limit of the normalised form (ITK's too): far from the truth a
        small overlap of uniform tissue can score well; an exhaustive translation search at the
        coarsest level (24×10 cells) picked such shifts (±24 mm) for some frames when trusted
        alone, so ``search`` refines several candidates and compares refined minima.
    levels
        Coarse-to-fine levels of the coupled solve (FAIR's multilevel strategy, §9.4): the
        frames and masks averaged onto grids halved per level (:func:`multireg.grid.restrict`),
        each level's motions starting the next; the coarse levels may take
        :data:`COARSE_ITERATIONS` × ``max_iter`` iterations (they are cheap). Default: down
        to about 8 cells on the shorter axis when starting from the identity (w0 None),
        else 1.
    search
        Globalisation of every frame's motion on the coarsest level
        (:mod:`multireg.problems.dynamics.search`): after that level's coupled solve, each
        frame's translation is searched exhaustively on a one-cell grid within ± ``search`` ×
        ω's extent per axis (the linear fit redone per candidate, all frames at once), the
        coupled solve run again from the best offsets, and each frame keeps whichever local
        minimum has the lower data term (FLIRT's coarse search then local optimisation, Jenkinson
        & Smith 2001). Measured on ±20 mm phantoms (bench/dynamics.py, development seeds): the
        coarse Gauss–Newton path alone left single frames 25 mm off in another basin, which ruined
        the curves (48 % cortex error). Default (None): :data:`SEARCH_RADIUS` (a third of the
        field of view) when starting from the identity (``w0`` None), else off; False or 0:
        off. Affine and rigid motion only.
    theta
        The frames' spline smoothing weight (FAIR §3.6; 0 interpolates).
    max_iter, tol_j, tol_y, tol_g, inner_rtol, inner_max_iter, unrolled_iterations
        The outer solver's stopping rules (FAIR's, relative to the start; ``tol_j`` tighter
        than FAIR's 1e-3 so that a noise-free problem is solved to its accuracy) and the
        inner solves' (the linear fit's CG where the model needs one). With noise the
        Gauss–Newton tail is linear (the noise's interpolated second derivatives are the
        dropped term), so the gradient rule decides when it stops. ``unrolled_iterations``:
        the engine differentiates that many CG steps (steps past the inner solve's
        convergence, here within about N steps for regions, leave it unchanged).

    Non-convergence is reported in the result's ``status``, never raised.
    """
    _checks.choice("method", method, METHODS)
    _checks.choice("jacobian", jacobian, JACOBIANS)
    if method != "varpro" and jacobian not in ("projected", "implicit"):
        raise ValueError(f"jacobian applies to method='varpro' only, got {jacobian!r}")
    if method == "lap" and not hasattr(separable, "lap"):
        raise ValueError("method='lap' needs multireg.separable.lap, which this engine lacks")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, not {type(callback).__name__}")
    inp = _validate(frames, times, omega, masks, backend, dtype, motion, ref)
    spec = _model_spec(model, alpha, n_basis, basis)
    check_tolerances(tol_j, max_iter, "tol_j", "max_iter")
    for name, value in (("tol_y", tol_y), ("tol_g", tol_g)):
        _checks.positive(name, value, allow_zero=True)
    if (
        isinstance(unrolled_iterations, bool)
        or not isinstance(unrolled_iterations, (int, np.integer))
        or unrolled_iterations < 0
    ):
        raise ValueError(
            f"unrolled_iterations must be an integer >= 0, got {unrolled_iterations!r}"
        )
    if not isinstance(verbose, bool):
        raise TypeError(f"verbose must be True or False, not {verbose!r}")
    if isinstance(w0, str):
        _checks.choice("w0", w0, ("identity", "ssd"))
        if w0 == "ssd" and motion == "nonparametric":
            raise ValueError("w0='ssd' needs affine or rigid motion")
    fov = _fov_width(fov)
    radius = _search_radius(search, w0, motion)
    domains = _level_domains(inp.domain, levels, default=1 if _given(w0) else None)
    # everything else, the model's needs included, before the pre-registration's 30-40 s
    _checked(inp, spec, motion, w0, p, beta, theta, inner_rtol, inner_max_iter)
    started = time.perf_counter()
    timings = {}
    if isinstance(w0, str) and w0 == "ssd":
        pre = frame_by_frame(
            inp.frames, omega, ref=0 if inp.ref is None else inp.ref, motion=motion,
            backend=inp.bk, dtype=dtype, theta=theta,
        )  # fmt: skip
        w0 = pre.w
        timings["preregistration"] = pre.timings["total"]
    elif isinstance(w0, str):
        w0 = None
    options = dict(max_iter=max_iter, tol_j=tol_j, tol_y=tol_y, tol_g=tol_g, verbose=verbose)
    if callback is not None:
        options["callback"] = callback
    build = dict(motion=motion, model=spec, p=p, beta=beta, theta=theta, fov=fov,
                 inner_rtol=inner_rtol, inner_max_iter=inner_max_iter)  # fmt: skip
    run = dict(method=method, jacobian=jacobian, unrolled_iterations=unrolled_iterations,
               options=options)  # fmt: skip
    t_level = time.perf_counter()
    w_level, coarse = w0, []
    # the coarse levels are cheap (a quarter of the cells per level) and carry the large
    # motion: measured on large_motion_phantom (±20 mm), 20 iterations at 24×10 left frames in
    # a wrong basin that 100 left for the finer levels to refine
    coarse_run = dict(run, options=dict(options, max_iter=COARSE_ITERATIONS * max_iter))
    for i, domain in enumerate(domains):
        last = i == len(domains) - 1
        level_inp = inp if last else _restricted(inp, domain)
        level_run = run if last else coarse_run
        if last and i:
            timings["coarse_levels"] = time.perf_counter() - t_level
        P, res = _coupled(level_inp, w_level, build, level_run)
        note = ""
        if i == 0 and radius:
            t_search = time.perf_counter()
            P, res, note = _globalised(level_inp, P, res, radius, build, level_run)
            timings["search"] = time.perf_counter() - t_search
        if not last:
            w_level = res.w
            coarse.append(f"{domain.m[0]}×{domain.m[1]}: {res.status.name.lower()}, "
                          f"{res.iterations} it{note}")  # fmt: skip
        elif note:
            coarse.append(f"{domain.m[0]}×{domain.m[1]}:{note}")
    timings["solve"] = time.perf_counter() - t_level
    timings["total"] = time.perf_counter() - started
    message = res.result.message
    if coarse:
        message += " (coarse levels " + "; ".join(coarse) + ")"
    return _result(
        P,
        res.w,
        res.f,
        method=method,
        jacobian=jacobian if method == "varpro" else "-",
        status=res.status,
        message=message,
        iterations=res.iterations,
        history=res.result.history,
        timings={**timings, **{f"solver_{k}": v for k, v in res.timings.items()}},
        sep=res,
    )


def _search_radius(search: Any, w0: Any, motion: str) -> float:
    """The translation search's radius (a fraction of ω's extent; 0: no search)."""
    if search is None:
        return SEARCH_RADIUS if not _given(w0) and translation_columns(motion) else 0.0
    if search is False:
        return 0.0
    if search is True:
        search = SEARCH_RADIUS
    if not isinstance(search, (int, float, np.integer, np.floating)):
        raise TypeError(f"search must be True, False, None or a fraction, not {search!r}")
    if not math.isfinite(search) or not 0 <= search <= 1:
        raise ValueError(f"search must be a fraction in [0, 1], got {search!r}")
    if search and not translation_columns(motion):
        raise ValueError(f"search needs affine or rigid motion, not {motion!r}")
    return float(search)


def _globalised(inp: _Input, P: Problem, res, radius: float, build: dict, run: dict):
    """The translation search after a level's solve (:mod:`.search`): (problem, result, note).
    One coupled solve per start; each frame keeps the local minimum with the lowest data term;
    where they mix, the coupled solve runs once more from the mixture so that the motions and
    the fit belong together."""
    solutions = [(P, res)]
    for start in translation_search(P, res.w, radius):
        solutions.append(_coupled(inp, start, build, run))
    w, origin = best_rows([(P_j, r.w, r.f) for P_j, r in solutions])
    origin = [int(i) for i in origin[list(P.separable.free)]]
    note = "; search: frames from start " + ",".join(str(i) for i in origin)
    if len(set(origin)) == 1:
        return (*solutions[origin[0]], note)
    P_c, res_c = _coupled(inp, w, build, run)
    return P_c, res_c, note


def _given(w0: Any) -> bool:
    """Whether the caller gave starting motions (an array or 'ssd')."""
    return w0 is not None and not (isinstance(w0, str) and w0 == "identity")


def _level_domains(domain: Domain, levels: Any, *, default: int | None) -> list[Domain]:
    """The coupled solve's grids, coarsest first, finest = ``domain``; ``levels`` None: the
    ``default`` count, or (None) down to about 8 cells on the shorter axis."""
    from multireg.grid import pyramid_domains

    if levels is None:
        levels = len(pyramid_domains(domain, min_size=8)) if default is None else default
    elif isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
    grids = pyramid_domains(domain, min_size=4)
    return grids[-min(int(levels), len(grids)) :]


def _restricted(inp: _Input, domain: Domain) -> _Input:
    """The input averaged onto the coarser grid ``domain`` (same ω): frames and masks."""
    from multireg.grid import restrict

    xp = inp.bk.xp
    frames = xp.stack([restrict(inp.frames[k, ...], inp.domain, domain)
                       for k in range(inp.frames.shape[0])])  # fmt: skip
    masks = None
    if inp.masks is not None:
        masks = np.stack([np.clip(np.asarray(restrict(m_, inp.domain, domain)), 0.0, 1.0)
                          for m_ in inp.masks])  # fmt: skip
    return _Input(inp.bk, frames, inp.times, domain, masks, inp.names, inp.ref)


def _coupled(inp: _Input, w0: Any, build: dict, run: dict):
    """One coupled solve on ``inp``'s grid from w0 (None: the identity): (problem, result)."""
    P = _build(inp, w0=w0, **build)
    mo = P.residual.motion
    dtype_, device = inp.frames.dtype, array_api_compat.device(inp.frames)
    w_start = _motions(inp.bk, w0, mo, inp.frames.shape[0], dtype_, device)
    w_start = _with_identity(inp.bk, w_start, P.separable.fixed[0], mo)
    method, jacobian, options = run["method"], run["jacobian"], run["options"]
    if method == "varpro" and jacobian == "projected":
        return P, varpro_projected(P, w_start, **options)
    c0 = P.inner(w_start)
    common = dict(inner_rtol=P.inner_rtol, inner_max_iter=P.inner_max_iter, **options)
    if method == "varpro":
        res = separable.varpro(
            P.separable, w_start, c0, jacobian=jacobian,
            unrolled_iterations=run["unrolled_iterations"], **common,
        )  # fmt: skip
    elif method == "bcd":
        res = separable.bcd(P.separable, w_start, c0, **common)
    else:
        # LAP's inner tolerance is that of its projected step (an inexact Gauss–Newton
        # step, its own default), not of the linear fit
        res = separable.lap(P.separable, w_start, c0, **options)
    return P, res


def _with_identity(bk: Any, w: Array, k: int, mo: _Motion) -> Array:
    """w with row k replaced by the identity (the gauge frame)."""
    xp = bk.xp
    ident = bk.asarray(mo.identity(), dtype=w.dtype, device=array_api_compat.device(w))
    rows = xp.arange(w.shape[0], device=array_api_compat.device(w))
    return xp.where((rows == k)[:, None], ident[None, :], w)


def fit(
    frames: Any,
    times: Any,
    omega: Any,
    *,
    w: Any = None,
    motion: str = "affine",
    model: str | IntensityModel = "regions",
    masks: Any = None,
    n_basis: int = 3,
    basis: Any = "pca",
    alpha: float | None = None,
    ref: int | str = 0,
    p: tuple[int, int] = (6, 6),
    beta: float = 1.0,
    theta: float = 0.0,
    backend: Any = None,
    dtype: str = "float64",
    inner_rtol: float = 1e-10,
    inner_max_iter: int = 500,
    fov: bool | float = True,
) -> DynamicsResult:
    """The linear model fit alone at fixed motions ``w`` (N, p); ``w=None``: the identity, i.e.
    no registration. The options are :func:`solve`'s."""
    started = time.perf_counter()
    inp = _validate(frames, times, omega, masks, backend, dtype, motion, ref)
    P = _build(
        inp, motion=motion, model=_model_spec(model, alpha, n_basis, basis), w0=w, p=p,
        beta=beta, theta=theta, inner_rtol=inner_rtol, inner_max_iter=inner_max_iter,
        fov=_fov_width(fov),
    )  # fmt: skip
    mo = P.residual.motion
    device = array_api_compat.device(inp.frames)
    w = _motions(inp.bk, w, mo, inp.frames.shape[0], inp.frames.dtype, device)
    c = P.inner(w)
    return _result(
        P,
        w,
        c,
        method="fit",
        jacobian="-",
        status=Status.CONVERGED,
        message="linear fit at fixed motions",
        iterations=0,
        history=(),
        timings={"total": time.perf_counter() - started},
        sep=None,
    )


@dataclass(frozen=True)
class FrameByFrame:
    """:func:`frame_by_frame`'s result: motions ``w`` (N, p), the ``registered`` frames
    (N, m1, m2), the per-frame :class:`~multireg.RegistrationResult` and timings."""

    w: Array
    registered: Array
    results: tuple
    timings: dict


def frame_by_frame(
    frames: Any,
    omega: Any,
    *,
    ref: int = 0,
    motion: str = "affine",
    backend: Any = None,
    dtype: str = "float64",
    theta: float = 0.0,
    levels: int | None = None,
    max_iter: int = 30,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
) -> FrameByFrame:
    """The baseline: each frame registered to frame ``ref`` by SSD (:func:`multireg.register`,
    spline image model, multilevel, Gauss–Newton), contrast change and all.

    ``levels`` defaults to the pyramid down to about 8 cells per axis, as super-resolution's
    pre-registration does (LAP, arXiv:1705.09992 §4)."""
    from multireg.problems.registration import register

    _checks.choice("motion", motion, ("affine", "rigid"))
    _checks.choice("dtype", dtype, ("float64", "float32"))
    shape = getattr(frames, "shape", None)
    if shape is None or len(shape) != 3 or shape[0] < 2:
        raise ValueError("frames must have shape (N, m1, m2) with N >= 2")
    if isinstance(ref, bool) or not isinstance(ref, (int, np.integer)) or not 0 <= ref < shape[0]:
        raise ValueError(f"ref must be a frame index in [0, {shape[0]})")
    bk = resolve_backend(backend, frames)
    d = bk.asarray(frames, dtype=getattr(bk.xp, dtype))
    if levels is None:
        levels = max(1, int(math.log2(min(shape[1:]))) - 2)
    started = time.perf_counter()
    ident = _Motion(motion, Domain(omega, tuple(shape[1:]))).identity()
    ws, registered, results = [], [], []
    for k in range(shape[0]):
        if k == ref:
            ws.append(bk.asarray(ident, dtype=d.dtype))
            registered.append(d[k, ...])
            results.append(None)
            continue
        res = register(
            d[k, ...], d[ref, ...], omega, transform=motion, image_model="spline", theta=theta,
            levels=levels, backend=bk, dtype=dtype, max_iter=max_iter, tol_j=tol_j,
            tol_y=tol_y, tol_g=tol_g,
        )  # fmt: skip
        ws.append(res.w)
        registered.append(res.warped)
        results.append(res)
    xp = bk.xp
    return FrameByFrame(
        w=xp.stack(ws),
        registered=xp.stack(registered),
        results=tuple(results),
        timings={"total": time.perf_counter() - started},
    )


def preregister_then_fit(
    frames: Any,
    times: Any,
    omega: Any,
    *,
    motion: str = "affine",
    model: str | IntensityModel = "regions",
    masks: Any = None,
    ref: int | str = 0,
    backend: Any = None,
    dtype: str = "float64",
    theta: float = 0.0,
    **options: Any,
) -> DynamicsResult:
    """The second baseline: :func:`frame_by_frame` motions (to frame ``ref``; frame 0 when
    groupwise), then :func:`fit` of the model alone at them. ``options`` go to :func:`fit`."""
    started = time.perf_counter()
    _validate(frames, times, omega, masks, backend, dtype, motion, ref)
    bk = resolve_backend(backend, frames)
    pre = frame_by_frame(
        frames, omega, ref=0 if isinstance(ref, str) else ref, motion=motion, backend=bk,
        dtype=dtype, theta=theta,
    )  # fmt: skip
    out = fit(
        frames, times, omega, w=pre.w, motion=motion, model=model, masks=masks, ref=ref,
        backend=bk, dtype=dtype, theta=theta, **options,
    )  # fmt: skip
    total = time.perf_counter() - started
    return _replace(
        out,
        method="preregistered",
        timings={"preregistration": pre.timings["total"], "total": total},
    )


def _replace(res: DynamicsResult, **changes: Any) -> DynamicsResult:
    import dataclasses

    return dataclasses.replace(res, **changes)


def motion_error(
    w: Any,
    w_true: Any,
    omega: Any,
    m: tuple[int, int],
    *,
    motion: str = "affine",
    p: tuple[int, int] | None = None,
    mask: Any = None,
) -> tuple[float, float]:
    """(relative, rms) displacement error of motions w against w_true over the cell centres
    (or those where ``mask`` is true): rms = √mean_{k,x} |y(w_k, x) − y(w*_k, x)|² (physical
    units) and relative = rms / √mean_{k,x} |y(w*_k, x) − x|². A parameter-free measure: the
    affine parameters mix units (the translations scale with the domain)."""
    _checks.choice("motion", motion, MOTIONS)
    domain = Domain(omega, tuple(m))
    mo = _Motion(motion, domain, _pair("p", p) if motion == "nonparametric" else None)
    import array_api_compat.numpy as xnp

    x = np.asarray(domain.cell_centers(xnp, dtype=xnp.float64))
    arrays = mo.arrays()
    y = np.asarray(mo.points(np.asarray(_checks.to_host(w), dtype=np.float64), x, *arrays))
    y_true = np.asarray(
        mo.points(np.asarray(_checks.to_host(w_true), dtype=np.float64), x, *arrays)
    )
    sel = np.ones(len(x), bool) if mask is None else np.reshape(np.asarray(mask), (-1,)) > 0
    err = np.sum((y - y_true)[:, sel] ** 2, axis=2)
    disp = np.sum((y_true - x[None])[:, sel] ** 2, axis=2)
    rms = float(np.sqrt(np.mean(err)))
    return rms / max(float(np.sqrt(np.mean(disp))), 1e-300), rms
