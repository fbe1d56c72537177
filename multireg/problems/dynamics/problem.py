"""The dynamics problem: motions, the warped-frame residual and :func:`build`.

:class:`Problem` is an instance of the separable engine (:mod:`multireg.problems.separable`):
its residual rows are frame k's warped data minus the model (with the field-of-view weights),
one row block per frame; the input checks of :func:`multireg.problems.dynamics.solve` live here
too, shared by every entry point.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from multireg import _bspline, _checks
from multireg._backend import resolve_backend
from multireg.distances import FOV_FLOOR, fov_weight
from multireg.grid import Domain
from multireg.interpolation import spline_coefficients
from multireg.problems import separable
from multireg.problems.dynamics.models import (
    Basis,
    IntensityModel,
    ModelKernel,
    Regions,
    Setting,
    _batched_cg,
    _Call,
    _forward_gradient,
)
from multireg.problems.separable.inner import batched_cg, check_tolerances

Array = Any
MOTIONS = ("affine", "rigid", "nonparametric")
METHODS = ("varpro", "lap", "bcd")
JACOBIANS = ("projected", *separable.JACOBIANS)
MODELS = ("regions", "basis")
# The default field-of-view ramp (cells, :func:`multireg.distances.fov_weight`): one cell, so
# a frame's outermost cells keep weight ½ and every other observed cell counts fully (with two,
# the basis model's CG solve lost accuracy at the border, where the weights were 0.02).
FOV_WIDTH = 1.0
# :func:`multireg.problems.dynamics.solve`'s coarse levels run this many times ``max_iter``
# Gauss–Newton iterations
COARSE_ITERATIONS = 5


# ------------------------------------------------------------------------------- motion


def _fair_b(t: np.ndarray) -> np.ndarray:
    """FAIR's cubic B-spline, b(0) = 4, b(±1) = 1 (FAIR §3.4)."""
    a = np.abs(t)
    return np.where(a < 1, (2 - a) ** 3 - 4 * (1 - a) ** 3, np.where(a < 2, (2 - a) ** 3, 0.0))


@dataclass(frozen=True)
class _Motion:
    """y(w_k, x) for every frame at once on the reference grid x (cell centres)."""

    kind: str
    domain: Domain
    p: tuple[int, int] | None = None
    beta: float = 0.0

    @property
    def n_params(self) -> int:
        if self.kind == "affine":
            return 6
        if self.kind == "rigid":
            return 3
        return 2 * self.p[0] * self.p[1]

    def identity(self) -> np.ndarray:
        if self.kind == "affine":
            return np.array([1.0, 0, 0, 0, 1, 0])
        return np.zeros(self.n_params)

    @property
    def n_arrays(self) -> int:
        return 2 if self.kind == "nonparametric" else 0

    def arrays(self) -> tuple[np.ndarray, ...]:
        """B1 (m1, p1), B2 (m2, p2): the control-grid splines at the cell centres."""
        if self.kind != "nonparametric":
            return ()
        control = Domain(self.domain.omega, self.p)
        out = []
        for k in range(2):
            x = self.domain.lower[k] + (np.arange(self.domain.m[k]) + 0.5) * self.domain.h[k]
            xi = (x - control.lower[k]) / control.h[k] - 0.5
            out.append(_fair_b(xi[:, None] - np.arange(self.p[k])[None, :]))
        return tuple(out)

    def points(self, w, x, *arrays):
        """(N, n, 2) transformed points."""
        xp = array_api_compat.array_namespace(w, x)
        N = w.shape[0]
        if self.kind == "affine":
            W = xp.reshape(w, (N, 2, 3))
            return x[None, :, :] @ xp.matrix_transpose(W[:, :, :2]) + W[:, None, :, 2]
        if self.kind == "rigid":
            c, s = xp.cos(w[:, 0:1]), xp.sin(w[:, 0:1])
            x1, x2 = x[None, :, 0], x[None, :, 1]
            return xp.stack([c * x1 - s * x2 + w[:, 1:2], s * x1 + c * x2 + w[:, 2:3]], axis=2)
        B1, B2 = arrays
        W = xp.reshape(w, (N, 2, *self.p))
        u = B1 @ W @ xp.matrix_transpose(B2)  # (N, 2, m1, m2)
        u = xp.permute_dims(xp.reshape(u, (N, 2, -1)), (0, 2, 1))
        return x[None, :, :] + u

    def regular(self, w):
        """√β (h_p1 h_p2)^½ ∇_p W_k: the diffusive regulariser on the control grid, (N, ·)."""
        xp = array_api_compat.array_namespace(w)
        N = w.shape[0]
        control = Domain(self.domain.omega, self.p)
        W = xp.reshape(w, (N, 2, *self.p))
        g = _forward_gradient(xp, W, control.h)  # (N, 2, ·)
        return math.sqrt(self.beta * control.cell_volume) * xp.reshape(g, (N, -1))


def _sample(flat: Array, y: Array, domain: Domain) -> Array:
    """The spline models of all frames at their points: flat = the zero-padded coefficient
    arrays (N, m1 + 7, m2 + 7) flattened, y (N, n, 2) physical points → (N, n).

    :func:`multireg._bspline.evaluate` with a frame offset in the flat index (one gather for all
    frames); FAIR §3.4's cubic B-spline, zero outside the data."""
    xp = array_api_compat.array_namespace(flat, y)
    N, n = y.shape[0], y.shape[1]
    m = domain.m
    M1, M2 = (
        m[0] + _bspline.PAD_LOW + _bspline.PAD_HIGH,
        m[1] + _bspline.PAD_LOW + _bspline.PAD_HIGH,
    )
    strides = (M2, 1)
    itype = _bspline.index_dtype(xp, y)
    frame = xp.arange(N, dtype=itype, device=array_api_compat.device(y)) * (M1 * M2)
    corner = xp.broadcast_to(frame[:, None], (N, n))
    weight = []
    for k in range(2):
        xi = (y[:, :, k] - domain.lower[k]) / domain.h[k] - 0.5
        s = xp.clip(xi, -2.0, float(m[k] + 1))
        p = xp.floor(s)
        p_int = xp.clip(xp.astype(p, itype), -2, m[k] + 1)
        corner = corner + (p_int + (_bspline.PAD_LOW - 1)) * strides[k]
        weight.append([xp.reshape(v, (-1,)) for v in _bspline.weights(s - p)])
    corner = xp.reshape(corner, (-1,))

    def axis_sum(k, shift):
        total = None
        for o in range(4):
            at = shift + o * strides[k]
            inner = flat[at:][corner] if k == 1 else axis_sum(k + 1, at)
            term = weight[k][o] * inner
            total = term if total is None else total + term
        return total

    return xp.reshape(axis_sum(0, 0), (N, n))


def _padded_coefficients(bk: Any, frames: Array, theta: float) -> Array:
    """Spline coefficients of every frame, zero-padded as :func:`_sample` expects, flattened."""
    xp = bk.xp
    out = []
    for k in range(frames.shape[0]):
        c = spline_coefficients(frames[k, ...], theta)
        out.append(_bspline._pad(xp, c))
    return xp.reshape(xp.stack(out), (-1,))


# ---------------------------------------------------------------------------- residual


@dataclass(frozen=True)
class _Residual:
    """The separable problem's r(w, c) and L c (hashable: the engine caches kernels on it).

    Data layout: (coef_flat, x, *motion arrays, *model arrays)."""

    domain: Domain
    motion: _Motion
    kernel: Any
    fov: float = 0.0
    """Width (cells) of the field-of-view ramp (:func:`multireg.distances.fov_weight`); 0:
    every cell counts."""

    def _split(self, rest):
        k = self.motion.n_arrays
        return rest[:k], rest[k:]

    def warp(self, w, coef, x, *rest):
        """d_k(y(w_k, x)) for every frame, (N, n)."""
        motion_arrays, _ = self._split(rest)
        return _sample(coef, self.motion.points(w, x, *motion_arrays), self.domain)

    def view(self, y):
        """(q, s): the residual weights q_k(x) (N, n) of the points y
        (:func:`multireg.distances.fov_weight`) and each frame's weighted in-view fraction
        s_k = mean_x q_k² (N, 1), floored at :data:`multireg.distances.FOV_FLOOR` (as
        :class:`multireg.distances.SSDInView`)."""
        xp = array_api_compat.array_namespace(y)
        q = fov_weight(y, self.domain, self.fov)
        s = xp.mean(q * q, axis=1, keepdims=True)
        return q, xp.where(s > FOV_FLOOR, s, FOV_FLOOR)

    def weights(self, w, coef, x, *rest):
        """q_k²/s_k (N, n): each cell's weight in frame k's data term (1 without ``fov``)."""
        xp = array_api_compat.array_namespace(w)
        motion_arrays, _ = self._split(rest)
        y = self.motion.points(w, x, *motion_arrays)
        if not self.fov:
            return xp.ones_like(y[..., 0])
        q, s = self.view(y)
        return q * q / s

    def residual(self, w, c, coef, x, *rest):
        xp = array_api_compat.array_namespace(w, c)
        motion_arrays, model_arrays = self._split(rest)
        y = self.motion.points(w, x, *motion_arrays)
        b = _sample(coef, y, self.domain)
        r = math.sqrt(self.domain.cell_volume) * (b - self.kernel.predict(c, *model_arrays))
        if self.fov:
            # the mean over the cells the frame observes (× |ω|): see :func:`solve`, ``fov``
            q, s = self.view(y)
            r = r * q / xp.sqrt(s)
        if self.motion.kind == "nonparametric":
            r = xp.concat([r, self.motion.regular(w)], axis=1)
        return r

    def regularize(self, c, coef, x, *rest):
        return self.kernel.regularizer(c, *self._split(rest)[1])

    def model_rows(self, c, *model_arrays):
        """A c = √h (predict(c) − predict(0)): the linear part of the image rows, (N, n)."""
        xp = array_api_compat.array_namespace(c)
        h = math.sqrt(self.domain.cell_volume)
        return h * (
            self.kernel.predict(c, *model_arrays)
            - self.kernel.predict(xp.zeros_like(c), *model_arrays)
        )


@dataclass(frozen=True)
class _ModelNormal:
    """v ↦ (h AᵀA + LᵀL) v for every row of V: the generic normal operator of a model (by a
    vjp of the linear part, A c = predict(c) − predict(0)); hashable for the CG kernel cache."""

    bk: Any
    residual: _Residual

    def __call__(self, V, *model_arrays):
        bk, xp, residual = self.bk, self.bk.xp, self.residual

        def lin(c):
            r = xp.reshape(residual.model_rows(c, *model_arrays), (-1,))
            g = xp.reshape(residual.kernel.regularizer(c, *model_arrays), (-1,))
            return xp.concat([r, g])

        def one(v):
            out, pullback = bk.vjp(lin, v)
            return pullback(out)

        return bk.vmap(one)(V)


# ---------------------------------------------------------------------------- problems


@dataclass(frozen=True, eq=False)
class Problem:
    """A bound dynamics problem: the engine's :class:`~multireg.separable.SeparableProblem`
    (``separable``) and what the dynamics solvers need besides (use :func:`build`)."""

    separable: separable.SeparableProblem
    residual: _Residual
    model_arrays: tuple
    names: tuple[str, ...]
    ref: int | None
    times: np.ndarray
    inner_rtol: float = 1e-10
    inner_max_iter: int = 500

    @property
    def bk(self):
        return self.separable.bk

    @property
    def kernel(self):
        return self.residual.kernel

    @property
    def domain(self) -> Domain:
        return self.residual.domain

    @property
    def data(self) -> tuple:
        return self.separable.data

    def normal_solve(self, V: Array) -> Array:
        """N⁻¹V row by row (the model's own solve, or CG on the generic normal operator)."""
        k = self.kernel
        opts = dict(rtol=self.inner_rtol, max_iter=self.inner_max_iter)
        if hasattr(k, "normal_solve"):
            return k.normal_solve(self.bk, V, *self.model_arrays, **opts)
        return _batched_cg(
            self.bk, _ModelNormal(self.bk, self.residual), V, self.model_arrays, **opts
        )[0]

    @property
    def fov(self) -> float:
        return self.residual.fov

    def weights(self, w: Array) -> Array:
        """Each cell's weight in each frame's data term at the motions w, (N, n)."""
        return _weights_kernel(self.bk, self.residual)(w, *self.data)

    def solve_at(self, w: Array, V: Array) -> Array:
        """N(w)⁻¹V row by row, N(w) = J_fᵀJ_f the linear part's normal matrix at the motions w
        (it depends on w through the field-of-view weights): the model's exact weighted solve,
        or the engine's CG on J_fᵀJ_f to ``inner_rtol``; without ``fov``, :meth:`normal_solve`."""
        if not self.fov:
            return self.normal_solve(V)
        k = self.kernel
        if hasattr(k, "weighted_normal_solve"):
            return k.weighted_normal_solve(self.bk, V, self.weights(w), *self.model_arrays)
        X, _, _ = batched_cg(
            self.separable, w, V, self.bk.xp.zeros_like(V), self.inner_rtol, self.inner_max_iter
        )
        return X

    def inner(self, w: Array) -> Array:
        """c(w) = N(w)⁻¹ Aᵀ b(w): the linear fit at the motions w."""
        xp = self.bk.xp
        zero = xp.zeros((self.kernel.n_coef,), dtype=w.dtype, device=array_api_compat.device(w))
        rhs = -self.separable.kernels["grad_f"](w, zero, *self.data)
        return self.solve_at(w, rhs[None, :])[0, :]

    def reduced_gram(self, w: Array, c: Array, free: Array) -> Array:
        """J̃ᵀJ̃ over the free parameters, J̃ the reduced (VarPro) Jacobian of w ↦ F(w, c(w)) at
        c = c(w), exactly (with the relative 1e-12 diagonal floor of :func:`_assemble_gram`).

        Without ``fov`` A is constant: J̃ᵀJ̃ = J_bᵀJ_b − (AᵀJ_b)ᵀN⁻¹(AᵀJ_b). With it the weights
        make A depend on w, and implicit differentiation of the normal equations (dc/dw =
        −N⁻¹M, M = ∂_w ∇_c Φ, B = J_cᵀJ_w; Golub & Pereyra 2003, §3) gives
        J̃ᵀJ̃ = J_wᵀJ_w − BᵀN⁻¹M − MᵀN⁻¹B + MᵀN⁻¹M. M and B come from p directional
        derivatives for all frames at once where frame k's rows touch only its own coefficients
        (the regions model, :meth:`_RegionsKernel.coefficient_frames`), else one per free
        parameter."""
        bk, xp = self.bk, self.bk.xp
        H, J = _blocks_kernel(bk, self.residual)(w, c, *self.data)
        if not self.fov:
            return _assemble_gram(bk, H, self.projected_gram(J), free)
        sp = self.separable
        N, p = sp.n_frames, sp.n_params
        dev = array_api_compat.device(w)
        frames_of = getattr(self.kernel, "coefficient_frames", None)
        if frames_of is not None:
            E = np.zeros((p, N, p))
            for j in range(p):
                E[j, list(sp.free), j] = 1.0
            V = bk.asarray(E, dtype=w.dtype, device=dev)
            owner = frames_of()
            # (N p, n_coef): row (k, j) keeps frame k's coefficients of direction j's result
            sel = bk.asarray(
                (np.arange(N)[:, None] == owner[None, :]).astype(np.float64), dtype=w.dtype,
                device=dev,
            )  # fmt: skip

            def expand(Z):
                return xp.reshape(sel[:, None, :] * Z[None, :, :], (N * p, -1))
        else:
            E = np.zeros((N * p, N, p))
            for k in sp.free:
                for j in range(p):
                    E[k * p + j, k, j] = 1.0
            V = bk.asarray(E, dtype=w.dtype, device=dev)

            def expand(Z):
                return Z

        kern = sp.kernels
        M = expand(kern["mixed"](w, c, V, *self.data))
        B = expand(kern["mixed_kaufman"](w, c, V, *self.data))
        Y = self.solve_at(w, M)  # rows N⁻¹ M[i]
        C1 = B @ xp.matrix_transpose(Y)
        C = C1 + xp.matrix_transpose(C1) - M @ xp.matrix_transpose(Y)
        return _assemble_gram(bk, H, C, free)

    def warped(self, w: Array) -> Array:
        """The frames at the motions w on the reference grid, (N, *m)."""
        return self.bk.xp.reshape(
            _warp_kernel(self.bk, self.residual)(w, *self.data),
            (w.shape[0], *self.domain.m),
        )

    def projected_gram(self, J: Array) -> Array:
        """(AᵀJ)ᵀ N⁻¹ (AᵀJ) for the frame-wise columns J (N, n, p)."""
        k = self.kernel
        opts = dict(rtol=self.inner_rtol, max_iter=self.inner_max_iter)
        if hasattr(k, "projected_gram"):
            return k.projected_gram(self.bk, J, *self.model_arrays, **opts)
        # generic: B = Aᵀ J column by column (frame by frame), X = N⁻¹ B, BᵀX
        xp = self.bk.xp
        N = J.shape[0]
        adjoint = _adjoint_kernel(self.bk, self.residual)
        B = []
        for k_ in range(N):
            onehot = xp.astype(xp.arange(N, device=array_api_compat.device(J)) == k_, J.dtype)
            B.append(adjoint(J, onehot, *self.model_arrays))
        B = xp.concat(B, axis=0)  # (N p, n_coef)
        X = self.normal_solve(B)
        return B @ xp.matrix_transpose(X)


@functools.lru_cache(maxsize=32)
def _warp_kernel(bk: Any, residual: _Residual) -> Callable:
    return bk.jit(lambda w, *data: residual.warp(w, *data))


@functools.lru_cache(maxsize=32)
def _weights_kernel(bk: Any, residual: _Residual) -> Callable:
    return bk.jit(lambda w, *data: residual.weights(w, *data))


@functools.lru_cache(maxsize=32)
def _adjoint_kernel(bk: Any, residual: _Residual) -> Callable:
    """Aᵀ(e_k ⊗ J[k, :, i]) for i < p, frame k selected by ``onehot``: shape (p, n_coef)."""
    xp = bk.xp

    def adjoint(J, onehot, *model_arrays):
        n_coef = residual.kernel.n_coef
        zero = xp.zeros((n_coef,), dtype=J.dtype, device=array_api_compat.device(J))
        _, pullback = bk.vjp(lambda c: residual.model_rows(c, *model_arrays), zero)
        U = xp.permute_dims(J * onehot[:, None, None], (2, 0, 1))  # (p, N, n)
        return bk.vmap(pullback)(U)

    return bk.jit(adjoint)


@functools.lru_cache(maxsize=32)
def _blocks_kernel(bk: Any, residual: _Residual) -> Callable:
    """The frame blocks of J_wᵀJ_w (N, p, p) and the image rows of J_w (N, n, p) at (w, c), from
    p forward products for all frames at once (frame k's rows depend on w_k only). Without
    ``fov`` J_w does not depend on c."""
    xp = bk.xp

    def blocks(w, c, *data):
        p = w.shape[1]
        n = math.prod(residual.domain.m)
        cols = []
        for j in range(p):
            e = xp.astype(xp.arange(p, device=array_api_compat.device(w)) == j, w.dtype)
            V = xp.broadcast_to(e[None, :], w.shape)
            cols.append(bk.jvp(lambda v: residual.residual(v, c, *data), w, V)[1])
        Jb = xp.stack(cols, axis=2)  # (N, q, p)
        H = xp.matrix_transpose(Jb) @ Jb
        return H, Jb[:, :n, :]

    return bk.jit(blocks)


def build(
    frames: Any,
    times: Any,
    omega: Any,
    *,
    motion: str = "affine",
    model: str | IntensityModel = "regions",
    masks: Any = None,
    ref: int | str = 0,
    w0: Any = None,
    alpha: float | None = None,
    n_basis: int = 3,
    basis: Any = "pca",
    p: tuple[int, int] = (6, 6),
    beta: float = 1.0,
    theta: float = 0.0,
    backend: Any = None,
    dtype: str = "float64",
    inner_rtol: float = 1e-10,
    inner_max_iter: int = 500,
    fov: bool | float = True,
) -> Problem:
    """The dynamics problem as a :class:`Problem` (its ``separable`` member is the engine's
    :class:`~multireg.separable.SeparableProblem`), with the options of :func:`solve`.

    ``w0`` (default the identity) only matters for ``basis="pca"`` (the modes are those of the
    frames at ``w0``)."""
    return _build(
        _validate(frames, times, omega, masks, backend, dtype, motion, ref),
        motion=motion,
        model=_model_spec(model, alpha, n_basis, basis),
        w0=w0,
        p=p,
        beta=beta,
        theta=theta,
        inner_rtol=inner_rtol,
        inner_max_iter=inner_max_iter,
        fov=fov,
    )


def _model_spec(model: Any, alpha: float | None, n_basis: int, basis: Any) -> IntensityModel:
    if isinstance(model, str):
        _checks.choice("model", model, MODELS)
        if model == "regions":
            return Regions() if alpha is None else Regions(alpha=alpha)
        kw = {} if alpha is None else {"alpha": alpha}
        return Basis(basis=basis, n_basis=n_basis, **kw)
    if not isinstance(model, IntensityModel):
        raise TypeError(
            "model must be 'regions', 'basis' or an object with bind(setting), "
            f"not {type(model).__name__}"
        )
    return model


@dataclass(frozen=True, eq=False)
class _Input:
    bk: Any
    frames: Array
    times: np.ndarray
    domain: Domain
    masks: np.ndarray | None
    names: tuple[str, ...]
    ref: int | None


def _validate(frames, times, omega, masks, backend, dtype, motion, ref):
    """Check the user's input before any work; returns the pieces every entry point needs."""
    _checks.choice("dtype", dtype, ("float64", "float32"))
    _checks.choice("motion", motion, MOTIONS)
    shape = getattr(frames, "shape", None)
    if shape is None:
        raise TypeError(f"frames must be an array, not {type(frames).__name__}")
    if len(shape) != 3:
        raise ValueError(f"frames must have shape (N, m1, m2), got {tuple(shape)}")
    n_frames = int(shape[0])
    if n_frames < 2:
        raise ValueError(f"frames must hold at least 2 frames, got {n_frames}")
    host = _checks.to_host(frames)
    if host.dtype.kind not in "biuf":
        raise TypeError(f"frames must hold real numbers, not {host.dtype}")
    if not np.all(np.isfinite(host)):
        raise ValueError("frames contains NaN or Inf")
    if min(shape[1:]) < 4:
        raise ValueError(f"frames must have at least 4 cells per axis, got {tuple(shape[1:])}")
    try:
        t = np.asarray(_checks.to_host(times), dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"times must be a sequence of real numbers, not {times!r:.60}") from None
    if t.ndim != 1 or len(t) != n_frames:
        raise ValueError(
            f"times must be a 1-D sequence with one time per frame ({n_frames}), got shape "
            f"{t.shape}"
        )
    if not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
        raise ValueError("times must be finite and strictly increasing")
    domain = Domain(omega, tuple(int(s) for s in shape[1:]))
    if domain.dim != 2:
        raise ValueError(f"omega must describe a 2-D domain, got {domain.omega}")
    if isinstance(ref, str):
        _checks.choice("ref", ref, ("groupwise",))
        ref_index = None
    elif isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
        if not 0 <= ref < n_frames:
            raise ValueError(f"ref must be a frame index in [0, {n_frames}) or 'groupwise'")
        ref_index = int(ref)
    else:
        raise TypeError(f"ref must be a frame index or 'groupwise', not {ref!r}")
    mask_array, names = _masks(masks, domain.m)
    bk = resolve_backend(backend, frames)
    if not bk.differentiable:
        raise TypeError(f"backend must differentiate (torch or jax), not {bk.name!r}")
    # on the frames' device; never written to, so no copy is needed
    d = bk.asarray(frames, dtype=dtype)
    return _Input(bk, d, t, domain, mask_array, names, ref_index)


def _masks(masks: Any, m: tuple[int, ...]) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """Masks as a host array (R, *m) of weights in [0, 1] with names."""
    if masks is None:
        return None, ()
    if isinstance(masks, Mapping):
        names = tuple(str(k) for k in masks)
        items = [np.asarray(_checks.to_host(v)) for v in masks.values()]
    else:
        arr = np.asarray(_checks.to_host(masks))
        if arr.ndim == len(m):
            arr = arr[None]
        items = list(arr)
        names = tuple(f"region {i}" for i in range(len(items)))
    if not items:
        raise ValueError("masks must hold at least one region")
    out = []
    for name, a in zip(names, items, strict=True):
        if tuple(a.shape) != tuple(m):
            raise ValueError(f"masks[{name!r}] has shape {tuple(a.shape)}, the frames {tuple(m)}")
        if a.dtype.kind not in "biuf":
            raise TypeError(f"masks[{name!r}] must be boolean or real, not {a.dtype}")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
            raise ValueError(f"masks[{name!r}] must hold weights in [0, 1]")
        if a.max() == 0:
            raise ValueError(f"masks[{name!r}] is empty")
        out.append(a)
    return np.stack(out), names


def _build(
    inp: _Input,
    *,
    motion: str,
    model: IntensityModel,
    w0: Any,
    p: Any,
    beta: float,
    theta: float,
    inner_rtol: float,
    inner_max_iter: int,
    fov: float = 0.0,
) -> Problem:
    bk, xp = inp.bk, inp.bk.xp
    dtype, device = inp.frames.dtype, array_api_compat.device(inp.frames)
    mo = _checked(inp, model, motion, w0, p, beta, theta, inner_rtol, inner_max_iter)
    n_frames = inp.frames.shape[0]
    coef = _padded_coefficients(bk, inp.frames, float(theta))
    x = inp.domain.cell_centers(xp, dtype=dtype, device=device)
    motion_arrays = tuple(bk.asarray(a, dtype=dtype, device=device) for a in mo.arrays())
    w_start = _motions(bk, w0, mo, n_frames, dtype, device)
    warped = _sample(coef, mo.points(w_start, x, *motion_arrays), inp.domain)
    setting = Setting(bk, inp.domain, inp.frames, warped, inp.times, inp.ref, inp.masks, inp.names)
    kernel, model_arrays = model.bind(setting)
    if not isinstance(kernel, ModelKernel):
        raise TypeError("model.bind must return a ModelKernel (n_coef, predict, regularizer)")
    try:
        hash(kernel)
    except TypeError:
        raise TypeError("the model's kernel must be hashable (a frozen dataclass)") from None
    residual = _Residual(inp.domain, mo, kernel, _fov_width(fov))
    problem = separable.SeparableProblem(
        bk=bk,
        residual=_Call(residual, "residual"),
        regularizer=_Call(residual, "regularize"),
        n_frames=n_frames,
        n_params=mo.n_params,
        n_f=int(kernel.n_coef),
        data=(coef, x, *motion_arrays, *model_arrays),
        fixed=(0 if inp.ref is None else inp.ref,),
    )
    return Problem(
        problem,
        residual,
        tuple(model_arrays),
        inp.names,
        inp.ref,
        inp.times,
        float(inner_rtol),
        int(inner_max_iter),
    )


def _checked(
    inp: _Input,
    model: IntensityModel,
    motion: str,
    w0: Any,
    p: Any,
    beta: float,
    theta: float,
    inner_rtol: float,
    inner_max_iter: int,
) -> _Motion:
    """Every argument of the problem checked against the input, before any work (a missing
    region mask used to surface only after the pre-registration, 30–40 s later); returns the
    motion model. ``w0``: None, "identity" or an (N, p) array."""
    _checks.positive("theta", theta, allow_zero=True)
    _checks.positive("beta", beta, allow_zero=True)
    check_tolerances(inner_rtol, inner_max_iter, "inner_rtol", "inner_max_iter")
    if motion == "nonparametric":
        mo = _Motion("nonparametric", inp.domain, _pair("p", p), float(beta))
    else:
        mo = _Motion(motion, inp.domain)
    check = getattr(model, "_check", None)
    if isinstance(model, (Regions, Basis)) and check is not None:
        check(len(inp.times), inp.masks)
    if not (w0 is None or isinstance(w0, str)):
        _host_motions(w0, mo, inp.frames.shape[0], "w0")
    return mo


def _fov_width(fov: Any) -> float:
    """The field-of-view ramp width in cells: True is :data:`FOV_WIDTH`, False or 0 off."""
    if fov is True:
        return FOV_WIDTH
    if fov is False or fov is None:
        return 0.0
    if isinstance(fov, (int, float, np.integer, np.floating)) and math.isfinite(fov) and fov >= 0:
        return float(fov)
    raise ValueError(f"fov must be True, False or a ramp width in cells >= 0, got {fov!r}")


def _pair(name: str, value: Any) -> tuple[int, int]:
    v = tuple(value) if isinstance(value, (tuple, list)) else None
    if (
        v is None
        or len(v) != 2
        or not all(
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a > 0 for a in v
        )
    ):
        raise ValueError(f"{name} must be a pair of positive integers, got {value!r}")
    return (int(v[0]), int(v[1]))


def _motions(bk, w, mo: _Motion, n_frames: int, dtype, device) -> Array:
    """Motions (N, p) as a backend array; None is the identity for every frame."""
    return bk.asarray(_host_motions(w, mo, n_frames, "w"), dtype=dtype, device=device)


def _host_motions(w: Any, mo: _Motion, n_frames: int, name: str) -> np.ndarray:
    """Motions (N, p) on the host, checked; errors name the argument."""
    if w is None:
        w = np.tile(mo.identity(), (n_frames, 1))
    try:
        host = np.asarray(_checks.to_host(w), dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be an array of real numbers, not {type(w).__name__}"
        ) from None
    if host.shape != (n_frames, mo.n_params):
        raise ValueError(f"{name} must have shape ({n_frames}, {mo.n_params}), got {host.shape}")
    if not np.all(np.isfinite(host)):
        raise ValueError(f"{name} contains NaN or Inf")
    return host


@functools.lru_cache(maxsize=16)
def _gram_assembler(bk: Any) -> Callable:
    xp = bk.xp

    def assemble(H, C, free):
        N, p, _ = H.shape
        eye = xp.eye(N, dtype=H.dtype, device=array_api_compat.device(H))
        block = xp.reshape(eye[:, None, :, None] * H[:, :, None, :], (N * p, N * p))
        G = block - C
        G = 0.5 * (G + xp.matrix_transpose(G))
        G = xp.take(xp.take(G, free, axis=0), free, axis=1)
        # a relative 1e-12 floor keeps the dense solve defined where a parameter is invisible
        floor = 1e-12 * xp.max(xp.abs(xp.linalg.diagonal(G)))
        return G + floor * xp.eye(G.shape[0], dtype=G.dtype, device=array_api_compat.device(G))

    return bk.jit(assemble)


def _assemble_gram(bk, H, C, free):
    return _gram_assembler(bk)(H, C, free)
