"""Super-resolution: a high-resolution image f and the frame motions w_k from low-res frames.

Forward model (Herring, Nagy & Ruthotto, arXiv:1705.09992, §4; Watson, Cherry & Lang,
arXiv:2411.02806): frame k is d_k ≈ K · f(y(w_k, x)), where f(·) is the d-linear image model of
the fine image f, y(w_k, ·) a rigid or affine motion (FAIR's parameter layout, about the origin
of the coordinates) and K either the cell average over each coarse cell of f at the moved fine
cell centres (``downsample="average"``, the physical default) or f at the moved coarse cell
centres (``"point"``, LAP's choice). The problem

    min_{f, w}  ½ Σ_k h_c ‖K f(y(w_k, x)) − d_k‖² + (α/2) h_f ‖L f‖²

(h_c, h_f: coarse and fine cell volumes, the midpoint quadrature of DESIGN.md §4; L the forward
difference gradient or the identity) is linear in f and nonlinear in w, and is solved with the
separable engine :mod:`multireg.separable`. Frame 0 is fixed at the identity (the gauge).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from multireg import _checks
from multireg._backend import resolve_backend
from multireg.grid import Domain, restrict, restriction_matrix
from multireg.interpolation import linear_interpolate
from multireg.problems import separable
from multireg.problems.separable.inner import check_tolerances
from multireg.problems.separable.joint import check_bounds
from multireg.transforms import Affine, Rigid

__all__ = [
    "METHODS",
    "Problem",
    "SuperResResult",
    "build",
    "forward",
    "make_problem",
    "pre_register",
    "solve",
]

Array = Any
MOTIONS = ("rigid", "affine")
DOWNSAMPLES = ("average", "point")
REGULARIZERS = ("gradient", "identity")
METHODS = ("varpro", "lap", "bcd", "full")


# ---------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Model:
    """The super-resolution residual and regulariser (hashable: kernels are cached on it)."""

    fine: Domain
    coarse: Domain
    motion: str
    downsample: str
    regularizer: str
    alpha: float

    @property
    def trafo(self):
        return Rigid(dim=2) if self.motion == "rigid" else Affine(dim=2)

    def predict(self, w: Array, f: Array, x: Array, K1: Array, K2: Array) -> Array:
        """The predicted frames, shape (N, *coarse.m): K f(y(w_k, x)) for every k."""
        xp = array_api_compat.array_namespace(w, f)
        trafo = self.trafo
        A, b = [], []
        for k in range(w.shape[0]):
            Ak, bk_ = trafo.matrix(w[k, :])
            A.append(Ak)
            b.append(bk_)
        A, b = xp.stack(A), xp.stack(b)
        y = xp.matmul(x[None, :, :], xp.matrix_transpose(A)) + b[:, None, :]  # (N, n, 2)
        image = xp.reshape(f, self.fine.m)
        values = linear_interpolate(image, self.fine, xp.reshape(y, (-1, 2)))
        if self.downsample == "point":
            return xp.reshape(values, (w.shape[0], *self.coarse.m))
        values = xp.reshape(values, (w.shape[0], *self.fine.m))
        # cell averages: K1 (mc1 × mf1) along axis 1, K2 (mc2 × mf2) along axis 2
        return xp.matmul(xp.matmul(K1[None, :, :], values), xp.matrix_transpose(K2)[None, :, :])

    def residual(self, w, f, d, x, K1, K2):
        """√h_c (K f(y(w_k, x)) − d_k), flattened per frame: shape (N, q)."""
        xp = array_api_compat.array_namespace(w, f)
        r = self.predict(w, f, x, K1, K2) - d
        return math.sqrt(self.coarse.cell_volume) * xp.reshape(r, (w.shape[0], -1))

    def regularize(self, f, d, x, K1, K2):
        """√(α h_f) L f with L the forward-difference gradient (m_k − 1 per axis) or I."""
        xp = array_api_compat.array_namespace(f)
        c = math.sqrt(self.alpha * self.fine.cell_volume)
        if self.regularizer == "identity":
            return c * f
        u = xp.reshape(f, self.fine.m)
        h1, h2 = self.fine.h
        g1 = (u[1:, :] - u[:-1, :]) / h1
        g2 = (u[:, 1:] - u[:, :-1]) / h2
        return c * xp.concat([xp.reshape(g1, (-1,)), xp.reshape(g2, (-1,))])


@functools.lru_cache(maxsize=32)
def _model(*fields: Any) -> _Model:
    """One :class:`_Model` per distinct set of fields. Bound methods compare by the identity
    of their instance, so equal models built twice would miss the engine's kernel cache (and
    recompile every kernel, ~20 s at 128²); interning the instance keeps the cache keyed by
    the model's value."""
    return _Model(*fields)


def _model_data(model: _Model, bk: Any, frames: Array) -> tuple:
    """(d, x, K1, K2): frames, the sampled points and the per-axis averaging matrices."""
    xp = bk.xp
    dtype, device = frames.dtype, array_api_compat.device(frames)
    grid = model.coarse if model.downsample == "point" else model.fine
    x = grid.cell_centers(xp, dtype=dtype, device=device)
    K1 = restriction_matrix(model.fine.m[0], model.coarse.m[0])
    K2 = restriction_matrix(model.fine.m[1], model.coarse.m[1])
    return (
        frames,
        x,
        bk.asarray(K1, dtype=dtype, device=device),
        bk.asarray(K2, dtype=dtype, device=device),
    )


def forward(
    f: Array,
    w: Array,
    omega: Any,
    m_coarse: tuple[int, int],
    *,
    motion: str = "rigid",
    downsample: str = "average",
    backend: Any = None,
) -> Array:
    """The noise-free frames K f(y(w_k, x)), shape (N, *m_coarse), of the fine image ``f``."""
    bk = resolve_backend(backend, f, w)
    f = bk.asarray(f)
    w = bk.asarray(w, dtype=f.dtype)
    _checks.choice("motion", motion, MOTIONS)
    _checks.choice("downsample", downsample, DOWNSAMPLES)
    fine = Domain(omega, tuple(f.shape))
    model = _model(fine, fine.with_m(tuple(m_coarse)), motion, downsample, "identity", 0.0)
    dummy = bk.xp.zeros((w.shape[0], *m_coarse), dtype=f.dtype)
    data = _model_data(model, bk, dummy)
    return model.predict(w, bk.xp.reshape(f, (-1,)), *data[1:])


# -------------------------------------------------------------------------------- problem


@dataclass(frozen=True)
class Problem:
    """A synthetic super-resolution problem with its truth (NumPy arrays)."""

    frames: np.ndarray
    """(N, *m_coarse) noisy low-resolution frames."""
    omega: tuple[float, ...]
    m_fine: tuple[int, int]
    f_true: np.ndarray
    """(m_fine) the high-resolution image."""
    w_true: np.ndarray
    """(N, p) the motions; row 0 is the identity."""
    motion: str
    downsample: str
    alpha: float


def make_problem(
    image: Any = None,
    *,
    m_fine: tuple[int, int] = (128, 128),
    m_coarse: tuple[int, int] = (32, 32),
    n_frames: int = 32,
    motion: str = "rigid",
    downsample: str = "average",
    rotation_sigma: float = 0.2,
    translation_sigma: float = 2.0,
    affine_sigma: float = 0.05,
    noise: float = 0.02,
    alpha: float = 1e-2,
    padding: float = 0.125,
    seed: int = 0,
) -> Problem:
    """A synthetic problem with known truth, LAP's setup by default (arXiv:1705.09992 §4).

    The image (default scikit-image's ``camera``) is cell-averaged to the inner
    (1 − 2·``padding``) part of ``m_fine``, normalised to max 1 and zero-padded (as LAP pads its
    MRI slice). ω = [−m_c1/2, m_c1/2] × [−m_c2/2, m_c2/2] (coarse pixels of unit size, centred so
    that rotations about the origin turn the image about its centre). Frame 0 is the identity;
    frames 1.. have rotation ~ N(0, ``rotation_sigma``²) rad and translation ~
    N(0, ``translation_sigma``²) coarse pixels (affine: the linear part I + N(0,
    ``affine_sigma``²) entries). Each frame gets Gaussian noise with ‖noise_k‖ = ``noise``·‖d_k‖.
    """
    _checks.choice("motion", motion, MOTIONS)
    _checks.choice("downsample", downsample, DOWNSAMPLES)
    m_fine, m_coarse = _pair("m_fine", m_fine), _pair("m_coarse", m_coarse)
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    for name, value in (
        ("rotation_sigma", rotation_sigma),
        ("translation_sigma", translation_sigma),
        ("affine_sigma", affine_sigma),
        ("noise", noise),
        ("alpha", alpha),
    ):
        _checks.positive(name, value, allow_zero=True)
    if not 0 <= padding < 0.5:
        raise ValueError(f"padding must be in [0, 0.5), got {padding!r}")
    if image is None:
        from skimage import data as skdata

        image = skdata.camera()
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    inner = tuple(max(1, round(m * (1 - 2 * padding))) for m in m_fine)
    small = restrict(image, Domain((0, 1, 0, 1), image.shape), Domain((0, 1, 0, 1), inner))
    small = small / max(float(np.max(small)), 1e-300)
    f_true = np.zeros(m_fine)
    lo = [(m - i) // 2 for m, i in zip(m_fine, inner, strict=True)]
    f_true[lo[0] : lo[0] + inner[0], lo[1] : lo[1] + inner[1]] = small
    omega = (-m_coarse[0] / 2, m_coarse[0] / 2, -m_coarse[1] / 2, m_coarse[1] / 2)

    rng = np.random.default_rng(seed)
    if motion == "rigid":
        w = np.column_stack(
            [
                rng.normal(0, rotation_sigma, n_frames),
                rng.normal(0, translation_sigma, (n_frames, 2)),
            ]
        )
    else:
        lin = np.eye(2)[None] + rng.normal(0, affine_sigma, (n_frames, 2, 2))
        t = rng.normal(0, translation_sigma, (n_frames, 2))
        w = np.column_stack([lin[:, 0, :], t[:, 0], lin[:, 1, :], t[:, 1]])
    w[0] = 0.0 if motion == "rigid" else [1, 0, 0, 0, 1, 0]
    bk = resolve_backend(None)
    frames = bk.to_numpy(
        forward(
            bk.asarray(f_true),
            bk.asarray(w),
            omega,
            m_coarse,
            motion=motion,
            downsample=downsample,
            backend=bk,
        )
    )
    e = rng.normal(size=frames.shape)
    norms_d = np.sqrt(np.sum(frames**2, axis=(1, 2), keepdims=True))
    norms_e = np.sqrt(np.sum(e**2, axis=(1, 2), keepdims=True))
    frames = frames + noise * norms_d / norms_e * e
    return Problem(frames, omega, m_fine, f_true, w, motion, downsample, float(alpha))


def _pair(name: str, value: Any) -> tuple[int, int]:
    value = tuple(value) if isinstance(value, (tuple, list)) else None
    if (
        value is None
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"{name} must be a pair of positive integers, got {value!r}")
    return value


# ---------------------------------------------------------------------------------- solve


@dataclass(frozen=True)
class SuperResResult:
    """``f`` (shape ``m_fine``) and ``w`` ((N, p), row 0 the identity), as backend arrays,
    with the separable solver's record (outer ``result``, inner CG iterations, timings)."""

    f: Array
    w: Array
    w0: Array
    f0: Array
    separable: separable.SeparableResult
    method: str
    jacobian: str
    timings: dict

    @property
    def status(self):
        return self.separable.status

    @property
    def iterations(self) -> int:
        return self.separable.iterations

    @property
    def inner_iterations(self) -> int:
        return self.separable.inner_iterations


def build(
    frames: Array,
    omega: Any,
    m_fine: tuple[int, int],
    *,
    motion: str = "rigid",
    downsample: str = "average",
    alpha: float = 1e-2,
    regularizer: str = "gradient",
    backend: Any = None,
    dtype: str = "float64",
) -> separable.SeparableProblem:
    """The separable problem of super-resolution (frame 0 fixed), for :mod:`multireg.separable`."""
    _checks.choice("motion", motion, MOTIONS)
    _checks.choice("downsample", downsample, DOWNSAMPLES)
    _checks.choice("regularizer", regularizer, REGULARIZERS)
    _checks.choice("dtype", dtype, ("float64", "float32"))
    alpha = _checks.positive("alpha", alpha, allow_zero=True)
    m_fine = _pair("m_fine", m_fine)
    frames, shape = _check_frames(frames)
    bk = resolve_backend(backend, frames)
    if not bk.differentiable:
        raise TypeError(f"backend must differentiate (torch or jax), not {bk.name!r}")
    coarse = Domain(omega, shape[1:])
    if any(f < c for f, c in zip(m_fine, coarse.m, strict=True)):
        raise ValueError(f"m_fine must be at least the frames' size {coarse.m}, got {m_fine}")
    frames = bk.asarray(frames, dtype=getattr(bk.xp, dtype))
    fine = coarse.with_m(m_fine)
    model = _model(fine, coarse, motion, downsample, regularizer, float(alpha))
    return separable.SeparableProblem(
        bk=bk,
        residual=model.residual,
        regularizer=model.regularize,
        n_frames=int(frames.shape[0]),
        n_params=model.trafo.n_params,
        n_f=fine.n,
        data=_model_data(model, bk, frames),
        fixed=(0,),
    )


def _finite(name: str, value: Any) -> tuple[int, ...]:
    """The shape of an array argument that must be real and finite."""
    try:
        host = np.asarray(_checks.to_host(value))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of real numbers") from None
    if host.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, not {host.dtype}")
    if not np.all(np.isfinite(host)):
        raise ValueError(f"{name} contains NaN or Inf")
    return tuple(int(v) for v in host.shape)


def _check_frames(frames: Any) -> tuple[Any, tuple[int, ...]]:
    """The frames (a list becomes a NumPy array) and their shape, checked: (N, m1, m2) with
    N >= 2 (frame 0 is the gauge), real and finite."""
    if isinstance(frames, (list, tuple)):
        try:
            frames = np.asarray(frames, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError("frames must be an array of real numbers") from None
    if getattr(frames, "shape", None) is None:
        raise TypeError(f"frames must be an array, not {type(frames).__name__}")
    host = _checks.to_host(frames)
    shape = tuple(int(v) for v in host.shape)
    if len(shape) != 3:
        raise ValueError(f"frames must have shape (N, m1, m2), got {shape}")
    if shape[0] < 2:
        raise ValueError(
            f"frames must hold at least 2 frames (frame 0 is the gauge), got {shape[0]}"
        )
    if host.dtype.kind not in "biuf":
        raise TypeError(f"frames must hold real numbers, not {host.dtype}")
    if not np.all(np.isfinite(host)):
        raise ValueError("frames contains NaN or Inf")
    return frames, shape


def pre_register(
    frames: Array, omega: Any, *, motion: str = "rigid", backend: Any = None
) -> np.ndarray:
    """Initial motions: each frame registered rigidly/affinely to frame 0 (SSD, spline model,
    multilevel), as LAP initialises its solvers (arXiv:1705.09992 §4)."""
    from multireg.problems.registration import register

    bk = resolve_backend(backend, frames)
    d = bk.to_numpy(bk.asarray(frames))
    trafo = Rigid(dim=2) if motion == "rigid" else Affine(dim=2)
    w = [bk.to_numpy(trafo.identity(bk.xp))]
    levels = max(1, int(math.log2(min(d.shape[1:]))) - 2)
    for k in range(1, d.shape[0]):
        res = register(
            d[0],
            d[k],
            omega,
            transform=motion,
            image_model="spline",
            levels=levels,
            backend=bk,
            max_iter=20,
        )
        w.append(bk.to_numpy(res.w))
    return np.stack(w)


def solve(
    frames: Any,
    omega: Any,
    m_fine: tuple[int, int],
    *,
    motion: str = "rigid",
    downsample: str = "average",
    alpha: float = 1e-2,
    regularizer: str = "gradient",
    method: str = "varpro",
    jacobian: str = "implicit",
    w0: Any = None,
    f0: Any = None,
    bounds: tuple[float, float] | None = None,
    inner_solver: str = "cg",
    backend: Any = None,
    dtype: str = "float64",
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-2,
    inner_rtol: float | None = None,
    inner_max_iter: int = 500,
    jacobian_rtol: float = 1e-2,
    matrix_free: bool = True,
    unrolled_iterations: int = 50,
    callback: Any = None,
    verbose: bool = False,
) -> SuperResResult:
    """Reconstruct the fine image and the frame motions from ``frames`` (N, m1, m2).

    ``method`` (the separable engine, :mod:`multireg.separable`):

    * ``"varpro"``: Gauss–Newton on the reduced function (:func:`separable.varpro`), with the
      reduced ``jacobian`` ``"implicit"``, ``"unrolled"`` (``unrolled_iterations`` CG steps),
      ``"kaufman"`` or ``"partial"``; ``jacobian_rtol`` is the tolerance of the implicit /
      Kaufman solves (1e-2 by default: the Jacobian only shapes the Gauss–Newton matrix, the
      gradient is exact); with ``matrix_free`` (default) J̃ is never formed and each product
      J̃ v or J̃ᵀu costs one inner solve, else J̃ is formed from P = 3(N−1) batched solves;
    * ``"lap"``: linearise and project (:func:`separable.lap`), with optional ``bounds`` on f
      (projected Gauss–Newton, e.g. ``(0, 1)``);
    * ``"bcd"``: block coordinate descent (:func:`separable.bcd`);
    * ``"full"``: Gauss–Newton on the joint (w, f) (:func:`separable.full_gauss_newton`), with
      optional ``bounds``.

    ``inner_solver`` (``"cg"`` or ``"lsqr"``) solves the linear problems in f (for
    ``"full"``, the joint Gauss–Newton system) to ``inner_rtol`` within ``inner_max_iter``
    steps; ``inner_rtol`` defaults to 1e-8 for varpro and bcd and 1e-3 for lap and full (an
    inexact Gauss–Newton step). For varpro it is relative to ‖Aᵀr(w, 0)‖ (the inner solve
    defines the reduced function) and capped at 0.1·``tol_g``(1 + Φ0); for bcd it is relative
    to the residual that each w-step leaves at the warm start (see :func:`separable.bcd` for
    why), so that f is updated after every step in w. ``CONVERGED`` always means a joint
    optimum: ‖∇_w Φ‖ and ‖∇_f Φ‖ both within the gradient tolerance. ``w0``
    defaults to a pre-registration of every frame to frame 0 (:func:`pre_register`); ``f0`` to
    the inner solution at ``w0`` (to 1e-8), projected onto ``bounds`` when given. The other
    options are the model's (see the module docstring) and the solvers' stopping rules
    (``callback(record)`` receives each outer iteration's :class:`multireg.optimize.Record`;
    FAIR's rules, all three must hold: ``tol_j``, ``tol_y``, ``tol_g``). ``tol_g`` is 1e-2 here,
    not the engine's 1e-4 (LAP's own super-resolution runs use 1e-1): with noisy frames this
    is a large-residual problem, every Gauss–Newton model here drops the residual-weighted
    second-order terms (the joint methods also the mixed one Σ r_i ∂²r_i/∂w∂f), so near the
    solution the methods converge linearly with short Armijo steps, and on the default
    problem the gradient levels off at a few 1e-3·(1 + Φ0) while Φ has settled to seven
    digits. Non-convergence is reported in ``result.status``, never raised.
    """
    _checks.choice("method", method, METHODS)
    if jacobian not in separable.JACOBIANS:
        raise ValueError(f"jacobian must be one of {separable.JACOBIANS}, got {jacobian!r}")
    _checks.choice("inner_solver", inner_solver, separable.INNER_SOLVERS)
    if bounds is not None and method not in ("lap", "full"):
        raise ValueError(f"bounds are supported by method 'lap' and 'full', not {method!r}")
    check_bounds(bounds)
    if not isinstance(matrix_free, bool):
        raise TypeError(f"matrix_free must be True or False, not {matrix_free!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, not {type(callback).__name__}")
    if inner_rtol is None:
        inner_rtol = 1e-3 if method in ("lap", "full") else 1e-8
    check_tolerances(inner_rtol, inner_max_iter, "inner_rtol", "inner_max_iter")
    # the outer options too, before the pre-registration (seconds to minutes)
    for name, value in (("tol_j", tol_j), ("tol_y", tol_y), ("tol_g", tol_g)):
        check_tolerances(value, max_iter, name, "max_iter")
    check_tolerances(jacobian_rtol, unrolled_iterations, "jacobian_rtol", "unrolled_iterations")
    if not isinstance(verbose, bool):
        raise TypeError(f"verbose must be True or False, not {verbose!r}")
    problem = build(
        frames,
        omega,
        m_fine,
        motion=motion,
        downsample=downsample,
        alpha=alpha,
        regularizer=regularizer,
        backend=backend,
        dtype=dtype,
    )
    bk, xp = problem.bk, problem.bk.xp
    data = problem.data[0]
    if w0 is not None:
        shape = _finite("w0", w0)
        if shape != (problem.n_frames, problem.n_params):
            raise ValueError(
                f"w0 must have shape ({problem.n_frames}, {problem.n_params}) (frames, "
                f"{motion} parameters), got {shape}"
            )
        w0 = problem.check_w(bk.asarray(w0, dtype=data.dtype))
    if f0 is not None:
        shape = _finite("f0", f0)
        if shape not in (tuple(m_fine), (problem.n_f,)):
            raise ValueError(f"f0 must have shape m_fine = {tuple(m_fine)}, got {shape}")
        f0 = problem.check_f(xp.reshape(bk.asarray(f0, dtype=data.dtype), (-1,)), data)
    t = time.perf_counter()
    if w0 is None:
        w0 = problem.check_w(
            bk.asarray(pre_register(data, omega, motion=motion, backend=bk), dtype=data.dtype)
        )
    t_pre = time.perf_counter() - t
    t = time.perf_counter()
    if f0 is None:
        f0 = separable.solve_linear(
            problem, w0, rtol=1e-8, max_iter=inner_max_iter, solver=inner_solver
        ).f
    t_f0 = time.perf_counter() - t
    options = dict(
        max_iter=max_iter,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        verbose=verbose,
        callback=callback,
        inner_rtol=inner_rtol,
        inner_max_iter=inner_max_iter,
        inner_solver=inner_solver,
    )
    if method == "varpro":
        res = separable.varpro(
            problem,
            w0,
            f0,
            jacobian=jacobian,
            jacobian_rtol=jacobian_rtol,
            matrix_free=matrix_free,
            unrolled_iterations=unrolled_iterations,
            **options,
        )
    elif method == "bcd":
        res = separable.bcd(problem, w0, f0, **options)
    elif method == "lap":
        res = separable.lap(problem, w0, f0, bounds=bounds, **options)
    else:
        res = separable.full_gauss_newton(problem, w0, f0, bounds=bounds, **options)
    if bounds is not None:
        f0 = xp.clip(f0, min=float(bounds[0]), max=float(bounds[1]))
    return SuperResResult(
        f=xp.reshape(res.f, tuple(m_fine)),
        w=res.w,
        w0=w0,
        f0=xp.reshape(f0, tuple(m_fine)),
        separable=res,
        method=method,
        jacobian=jacobian if method == "varpro" else "-",
        timings={"pre_registration": t_pre, "f0": t_f0, **res.timings},
    )
