"""Registration with intensity dynamics: motion and a linear intensity model, jointly.

Frames d_k at times t_k (contrast-enhanced MRI: a contrast agent arrives and washes out while
the patient moves), motions y_k = y(w_k, ·) and an intensity model I_k(x; c) linear in its
coefficients c. The problem (DESIGN.md §1; the dynamics study of Watson, Cherry & Lang,
arXiv:2411.02806, code ``solve_Dynamics.ipynb``) is

    min_{w, c}  ½ Σ_k h ‖d_k(y(w_k, x)) − I_k(x; c)‖² + ½ ‖L c‖²  (+ ½ Σ_k β ‖∇ u_k‖²)

on the cell-centred grid x of ``omega`` (h the cell volume: FAIR's midpoint quadrature), each
frame evaluated through its cubic-spline image model (coefficients computed once; FAIR §3.4).
It is linear in c and nonlinear in w, and frame k's residual depends on w only through w_k: an
instance of the separable engine :mod:`multireg.separable` (Golub & Pereyra 1973, 2003), like
super-resolution.

Intensity models (each linear in its unknowns; :class:`IntensityModel` is the protocol):

* :class:`Regions` (the study's model): I_k = d_ref + Σ_r α_{k,r} M_r(x) with given region
  masks (boolean or partial-volume weights), unknown time curves α and a temporal smoothness
  regulariser.
* :class:`Basis`: I_k(x) = Σ_j c_j(x) φ_j(t_k) with a temporal basis φ (cubic B-splines in time,
  :func:`bspline_basis`; a tracer-kinetic basis, :func:`kinetic_basis`; the leading temporal
  modes of the data, ``"pca"``; or a matrix), unknown coefficient maps c_j and a spatial
  regulariser. No masks are needed.

Both work in orthonormalised coordinates (the masks' Gram factor, the basis' QR factor), so the
data part of the linear normal matrix is the identity: its solves are exact (regions) or a few
CG steps (basis); coefficients are mapped back to α and c_j for the user.

Because the model does not depend on w, the data matrix A of the linear part is constant and
the reduced (VarPro) Gauss–Newton matrix has the closed form

    J̃ᵀJ̃ = J_bᵀJ_b − (AᵀJ_b)ᵀ (AᵀA + LᵀL)⁻¹ (AᵀJ_b),

J_b the block-diagonal Jacobian of the warped frames. ``jacobian="projected"`` (the default)
uses it. It equals the engine's ``"implicit"`` and ``"kaufman"`` Jacobians here (the term that
Kaufman drops vanishes when A is constant), at the cost of p forward products per iteration
instead of one per parameter and frame; the engine's variants remain available.

Motions: ``"affine"`` and ``"rigid"`` (FAIR layouts, about the origin of the coordinates) and
``"nonparametric"``: a cubic B-spline displacement on a coarse control grid (the layout of
``multireg.transform("bspline", omega=omega, p=p)``) with a diffusive regulariser on the
control grid appended to its frame's residual rows, so that each frame's rows still depend on
its own parameters only.

Baselines: :func:`frame_by_frame` (each frame registered to the reference by SSD with
:func:`multireg.register`), :func:`fit` (the linear fit at given motions; no registration at
the identity) and :func:`preregister_then_fit`. :func:`kidney_phantom` is a procedural synthetic
kidney DCE series with its truth; :func:`large_motion_phantom` the same in issue 14's regime
(large affine motion, organs near the edge, frames cropped after they moved).

References: G. H. Golub and V. Pereyra, SIAM J. Numer. Anal. 10 (1973) 413–432 and Inverse
Problems 19 (2003) R1–R26; L. Kaufman, BIT 15 (1975) 49–57; J. Modersitzki, FAIR, SIAM 2009;
G. A. Buonaccorsi et al., "Tracer kinetic model-driven registration for dynamic
contrast-enhanced MRI time-series data", Magn. Reson. Med. 58 (2007) 1010–1019 (motion and a
kinetic model, jointly); W. Huizinga et al., "PCA-based groupwise image registration for
quantitative MRI", Med. Image Anal. 29 (2016) 65–78 (temporal modes as the model);
S. P. Sourbron and D. L. Buckley, "Classic models for dynamic contrast-enhanced MRI", NMR
Biomed. 26 (2013) 1004–1027 (the two-compartment model).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import array_api_compat
import numpy as np

from multireg import _bspline, _checks
from multireg._backend import resolve_backend
from multireg.distances import FOV_FLOOR, fov_weight
from multireg.grid import Domain
from multireg.interpolation import spline_coefficients
from multireg.optimize import LinearOperator, Objective, Status, gauss_newton
from multireg.problems import separable

__all__ = [
    "KINETICS",
    "Basis",
    "DynamicsResult",
    "FrameByFrame",
    "IntensityModel",
    "ModelKernel",
    "Phantom",
    "Problem",
    "Regions",
    "Setting",
    "bspline_basis",
    "build",
    "fit",
    "frame_by_frame",
    "kidney_phantom",
    "kinetic_basis",
    "large_motion_phantom",
    "motion_error",
    "preregister_then_fit",
    "solve",
    "study_aif",
    "two_compartment",
    "varpro_projected",
]

Array = Any
MOTIONS = ("affine", "rigid", "nonparametric")
METHODS = ("varpro", "lap", "bcd")
JACOBIANS = ("projected", *separable.JACOBIANS)
MODELS = ("regions", "basis")
# The default field-of-view ramp (cells, :func:`multireg.distances.fov_weight`): one cell, so
# a frame's outermost cells keep weight ½ and every other observed cell counts fully (with two,
# the basis model's CG solve lost accuracy at the border, where the weights were 0.02).
FOV_WIDTH = 1.0
# :func:`solve`'s coarse levels run this many times ``max_iter`` Gauss–Newton iterations
COARSE_ITERATIONS = 5


# ------------------------------------------------------------------------ model protocol


@runtime_checkable
class ModelKernel(Protocol):
    """A bound intensity model: what the solvers call. Hashable (a frozen dataclass of static
    settings): compiled kernels are cached on it; arrays come as trailing arguments.

    Required: ``n_coef`` (length of the flat coefficient vector c); ``predict(c, *arrays)``,
    the model images I_k(x; c) of shape ``(N, n)`` (n cells of the reference grid, C order),
    affine in c; ``regularizer(c, *arrays)``, L c (any shape, weights included), linear in c.

    Optional (a generic matrix-free path replaces them): ``normal_solve(bk, V, *arrays, rtol,
    max_iter)``, N⁻¹V row by row for V of shape ``(k, n_coef)``, with N = h AᵀA + LᵀL and
    A c = predict(c) − predict(0); ``projected_gram(bk, J, *arrays, rtol, max_iter)``,
    (AᵀJ)ᵀN⁻¹(AᵀJ) for frame-wise columns J of shape ``(N, n, p)`` (J[k] is nonzero in frame k
    only; √h included), shape ``(N·p, N·p)``; ``curves(c, *arrays)``, the time curves (N, R)
    or None; ``coefficients(c, *arrays)``, a dict of the model's coefficients for the user.
    """

    n_coef: int

    def predict(self, c: Array, *arrays: Array) -> Array: ...

    def regularizer(self, c: Array, *arrays: Array) -> Array: ...


@dataclass(frozen=True, eq=False)
class Setting:
    """What a model sees when it is bound to a problem (:meth:`IntensityModel.bind`).

    ``frames`` (N, *m) and ``warped`` (the frames at the starting motions, (N, n)) are backend
    arrays; ``times`` a host array (N,); ``masks`` a host array (R, *m) of weights in [0, 1]
    (or None) with their ``names``; ``ref`` the reference frame, or None for a groupwise model.
    """

    bk: Any
    domain: Domain
    frames: Array
    warped: Array
    times: np.ndarray
    ref: int | None
    masks: np.ndarray | None
    names: tuple[str, ...]


@runtime_checkable
class IntensityModel(Protocol):
    """An intensity model before it meets the data: ``bind(setting)`` returns a
    :class:`ModelKernel` and the backend arrays its methods take as trailing arguments."""

    def bind(self, setting: Setting) -> tuple[ModelKernel, tuple]: ...


# ------------------------------------------------------------------ small linear algebra


@dataclass(frozen=True)
class _Call:
    """``obj.name`` as a callable that hashes and compares by value (bound methods compare
    their object by identity, so a cache keyed on them misses for every new, equal object)."""

    obj: Any
    name: str

    def __call__(self, *args: Any) -> Any:
        return getattr(self.obj, self.name)(*args)


def _host(bk: Any, a: Array) -> list[float]:
    return [float(v) for v in np.reshape(bk.to_numpy(a), (-1,))]


def _forward_gradient(xp: Any, u: Array, h: tuple[float, ...]) -> Array:
    """Forward differences of u (..., m1, m2) along the last two axes, flattened, stacked."""
    g1 = (u[..., 1:, :] - u[..., :-1, :]) / h[0]
    g2 = (u[..., :, 1:] - u[..., :, :-1]) / h[1]
    lead = tuple(u.shape[:-2])
    return xp.concat([xp.reshape(g1, (*lead, -1)), xp.reshape(g2, (*lead, -1))], axis=-1)


def _laplacian(xp: Any, u: Array, h: tuple[float, ...]) -> Array:
    """∇ᵀ∇ u for the forward-difference gradient of :func:`_forward_gradient` (last two axes)."""
    d1 = (u[..., 1:, :] - u[..., :-1, :]) / (h[0] * h[0])
    z1 = xp.zeros_like(u[..., :1, :])
    d2 = (u[..., :, 1:] - u[..., :, :-1]) / (h[1] * h[1])
    z2 = xp.zeros_like(u[..., :, :1])
    return (
        xp.concat([d1, z1], axis=-2)
        - xp.concat([z1, d1], axis=-2)
        + xp.concat([d2, z2], axis=-1)
        - xp.concat([z2, d2], axis=-1)
    ) * -1.0


@functools.lru_cache(maxsize=64)
def _cg_step(bk: Any, apply: Callable) -> Callable:
    """One CG step on every row of X for the SPD ``apply(X, *arrays)``, compiled."""
    xp = bk.xp

    def step(X, R, P, rr, *arrays):
        axes = tuple(range(1, X.ndim))
        shape = (-1,) + (1,) * (X.ndim - 1)
        Q = apply(P, *arrays)
        pq = xp.sum(P * Q, axis=axes)
        a = xp.where(pq > 0, rr / xp.where(pq > 0, pq, 1.0), 0.0)
        X = X + xp.reshape(a, shape) * P
        R = R - xp.reshape(a, shape) * Q
        rr_new = xp.sum(R * R, axis=axes)
        beta = xp.where(rr > 0, rr_new / xp.where(rr > 0, rr, 1.0), 0.0)
        return X, R, R + xp.reshape(beta, shape) * P, rr_new

    return bk.jit(step)


def _batched_cg(
    bk: Any, apply: Callable, B: Array, arrays: tuple, rtol: float, max_iter: int
) -> tuple[Array, int]:
    """X with apply(X, *arrays) = B row by row, by CG from 0 (Hestenes & Stiefel 1952); stops
    when every row has ‖B[i] − apply(X)[i]‖ ≤ rtol ‖B[i]‖ or after ``max_iter`` steps."""
    xp = bk.xp
    axes = tuple(range(1, B.ndim))
    b_norm = np.sqrt(np.maximum(_host(bk, xp.sum(B * B, axis=axes)), 1e-300))
    X, R, P = xp.zeros_like(B), B, B
    rr = xp.sum(R * R, axis=axes)
    step = _cg_step(bk, apply)
    it = 0
    while it < max_iter:
        worst = float(np.max(np.sqrt(np.maximum(_host(bk, rr), 0.0)) / b_norm))
        if worst <= rtol or not math.isfinite(worst):
            break
        X, R, P, rr = step(X, R, P, rr, *arrays)
        it += 1
    return X, it


def _temporal_weights(times: np.ndarray, alpha: float) -> np.ndarray:
    """√(alpha/Δt_k), k = 0 .. N−2: the rows of the temporal first-difference regulariser."""
    return np.sqrt(alpha / np.diff(times))


# ------------------------------------------------------------------------------ regions


@dataclass(frozen=True)
class Regions:
    """The study's model: I_k(x) = d_ref(x) + Σ_r α_{k,r} M_r(x) with given masks M_r.

    ``alpha`` (seconds) weighs the temporal smoothness regulariser
    (alpha/2) Σ_k Δt_k h ‖(I_{k+1} − I_k)/Δt_k‖² = (alpha/2) Σ_k Δα_kᵀ G Δα_k / Δt_k, with
    G = h MᵀM the masks' Gram matrix: a region is smoothed in proportion to its area, so alpha
    means the same for every region and grid. d_ref is the reference frame's data when ``ref``
    is an index. With ``ref="groupwise"`` d_ref is an unknown image c_0 with the spatial
    regulariser (``alpha_space``/2) h ‖∇c_0‖², and α_0 = 0 (the curves are enhancements
    relative to frame 0). Masks are boolean or partial-volume weights in [0, 1] (weights make
    the model exact at region boundaries).

    Internally α̃ = α C with G = C Cᵀ (Cholesky), so that the data part of the normal matrix is
    the identity: N = T ⊗ I_R, T = I + alpha Dᵀ diag(1/Δt) D (N × N), inverted once.
    """

    alpha: float = 0.01
    alpha_space: float = 0.0

    def _check(self, n_frames: int, masks: np.ndarray | None) -> None:
        """The model's own arguments against the input, before any work."""
        if masks is None:
            raise ValueError("model 'regions' needs masks (the region masks M_r)")
        _checks.positive("alpha", self.alpha, allow_zero=True)
        _checks.positive("alpha_space", self.alpha_space, allow_zero=True)

    def bind(self, s: Setting) -> tuple[ModelKernel, tuple]:
        self._check(len(s.times), s.masks)
        bk = s.bk
        dtype, device = s.frames.dtype, array_api_compat.device(s.frames)
        h = s.domain.cell_volume
        Mt, C_inv = _orthonormal_masks(s.masks, h)
        n_frames = len(s.times)

        def arr(a):
            return bk.asarray(np.ascontiguousarray(a), dtype=dtype, device=device)

        wt = _temporal_weights(s.times, float(self.alpha))
        if s.ref is not None:
            D = np.diff(np.eye(n_frames), axis=0)
            T = np.eye(n_frames) + (D * wt[:, None] ** 2).T @ D
            d_ref = bk.xp.reshape(s.frames[s.ref, ...], (-1,))
            kernel = _RegionsKernel(n_frames, len(Mt), h)
            return kernel, (arr(Mt), arr(C_inv), arr(wt), arr(np.linalg.inv(T)), d_ref)
        kernel = _RegionsGroupwise(
            n_frames, len(Mt), h, s.domain.m, s.domain.h, float(self.alpha_space)
        )
        return kernel, (arr(Mt), arr(C_inv), arr(wt))


def _orthonormal_masks(masks: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """(M̃, C⁻¹) with M = C M̃, h M̃ M̃ᵀ = I, G = h M Mᵀ = C Cᵀ (masks flattened to rows)."""
    M = np.reshape(masks, (masks.shape[0], -1)).astype(np.float64)
    G = h * M @ M.T
    try:
        C = np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        raise ValueError("masks must be linearly independent and not empty") from None
    if np.min(np.diag(C)) ** 2 < 1e-10 * np.max(np.diag(G)):
        raise ValueError("masks must be linearly independent and not empty")
    return np.linalg.solve(C, M), np.linalg.inv(C)


@dataclass(frozen=True)
class _RegionsKernel:
    """Regions with a fixed reference frame; c = α̃ (N, R) flattened."""

    n_frames: int
    n_regions: int
    h: float

    @property
    def n_coef(self) -> int:
        return self.n_frames * self.n_regions

    def _a(self, c):
        xp = array_api_compat.array_namespace(c)
        return xp.reshape(c, (self.n_frames, self.n_regions))

    def predict(self, c, Mt, C_inv, wt, T_inv, d_ref):
        return d_ref[None, :] + self._a(c) @ Mt

    def regularizer(self, c, Mt, C_inv, wt, T_inv, d_ref):
        a = self._a(c)
        return wt[:, None] * (a[1:, :] - a[:-1, :])

    def normal_solve(self, bk, V, Mt, C_inv, wt, T_inv, d_ref, *, rtol=0.0, max_iter=0):
        """N⁻¹ = T⁻¹ ⊗ I_R, exact."""
        xp = bk.xp
        X = xp.reshape(V, (V.shape[0], self.n_frames, self.n_regions))
        return xp.reshape(T_inv[None, :, :] @ X, (V.shape[0], -1))

    def projected_gram(self, bk, J, Mt, C_inv, wt, T_inv, d_ref, *, rtol=0.0, max_iter=0):
        """β_k = √h M̃ J_k (R × p per frame); result[(k,i),(l,j)] = T⁻¹_kl β_k,i · β_l,j."""
        return _regions_gram(bk, self.h)(J, Mt, T_inv)

    def weighted_normal_solve(self, bk, V, Wt, Mt, C_inv, wt, T_inv, d_ref):
        """N(w)⁻¹V row by row for the field-of-view weights Wt (N, n) (:meth:`_Residual.weights`):
        N = blockdiag_k(h M̃ diag(Wt_k) M̃ᵀ) + (T − I) ⊗ I_R, formed ((N R)² entries) and solved
        exactly."""
        return _regions_weighted_solve(bk, self.h)(V, Wt, Mt, wt)

    def coefficient_frames(self) -> np.ndarray:
        """The frame each coefficient belongs to (frame k's rows of A touch only its α̃_k)."""
        return np.repeat(np.arange(self.n_frames), self.n_regions)

    def curves(self, c, Mt, C_inv, wt, T_inv, d_ref):
        return self._a(c) @ C_inv

    def coefficients(self, c, Mt, C_inv, wt, T_inv, d_ref):
        return {"alpha": self.curves(c, Mt, C_inv, wt, T_inv, d_ref)}


@functools.lru_cache(maxsize=16)
def _regions_gram(bk: Any, h: float) -> Callable:
    xp = bk.xp

    def gram(J, Mt, T_inv):
        N, _, p = J.shape
        beta = math.sqrt(h) * (Mt[None, :, :] @ J)  # (N, R, p)
        flat = xp.reshape(xp.permute_dims(beta, (0, 2, 1)), (N * p, Mt.shape[0]))
        inner = flat @ xp.matrix_transpose(flat)
        scale = xp.reshape(xp.broadcast_to(T_inv[:, None, :, None], (N, p, N, p)), (N * p, N * p))
        return scale * inner

    return bk.jit(gram)


@functools.lru_cache(maxsize=16)
def _regions_weighted_solve(bk: Any, h: float) -> Callable:
    xp = bk.xp

    def solve(V, Wt, Mt, wt):
        N, R = Wt.shape[0], Mt.shape[0]
        dev = array_api_compat.device(V)
        G = h * (Mt[None, :, :] * Wt[:, None, :]) @ xp.matrix_transpose(Mt)  # (N, R, R)
        eye_n = xp.eye(N, dtype=V.dtype, device=dev)
        D = eye_n[1:, :] - eye_n[:-1, :]
        TmI = xp.matrix_transpose(D) @ ((wt * wt)[:, None] * D)
        eye_r = xp.eye(R, dtype=V.dtype, device=dev)
        Nm = eye_n[:, None, :, None] * G[:, :, None, :]
        Nm = Nm + TmI[:, None, :, None] * eye_r[None, :, None, :]
        Nm = xp.reshape(Nm, (N * R, N * R))
        return xp.matrix_transpose(xp.linalg.solve(Nm, xp.matrix_transpose(V)))

    return bk.jit(solve)


@dataclass(frozen=True)
class _RegionsGroupwise:
    """Regions with an unknown reference image: c = [ĉ_0 (n), α̃_1.. (N−1, R)], c_0 = ĉ_0/√N
    (so that the data part of its normal block is the identity); α̃_0 = 0."""

    n_frames: int
    n_regions: int
    h: float
    m: tuple[int, ...]
    hs: tuple[float, ...]
    alpha_space: float

    @property
    def n_coef(self) -> int:
        return math.prod(self.m) + (self.n_frames - 1) * self.n_regions

    def _split(self, c):
        xp = array_api_compat.array_namespace(c)
        n = math.prod(self.m)
        c0 = c[:n] / math.sqrt(self.n_frames)
        a = xp.reshape(c[n:], (self.n_frames - 1, self.n_regions))
        a = xp.concat([xp.zeros_like(a[:1, :]), a], axis=0)
        return c0, a

    def predict(self, c, Mt, C_inv, wt):
        c0, a = self._split(c)
        return c0[None, :] + a @ Mt

    def regularizer(self, c, Mt, C_inv, wt):
        xp = array_api_compat.array_namespace(c)
        c0, a = self._split(c)
        g = math.sqrt(self.alpha_space * self.h) * _forward_gradient(
            xp, xp.reshape(c0, self.m), self.hs
        )
        t = wt[:, None] * (a[1:, :] - a[:-1, :])
        return xp.concat([g, xp.reshape(t, (-1,))])

    def curves(self, c, Mt, C_inv, wt):
        return self._split(c)[1] @ C_inv

    def coefficients(self, c, Mt, C_inv, wt):
        xp = array_api_compat.array_namespace(c)
        c0, a = self._split(c)
        return {"alpha": a @ C_inv, "baseline": xp.reshape(c0, self.m)}


# -------------------------------------------------------------------------------- basis


@dataclass(frozen=True, eq=False)
class Basis:
    """I_k(x) = Σ_j c_j(x) φ_j(t_k): a temporal basis φ and unknown coefficient maps c_j.

    ``basis``: ``"pca"`` (default: the ``n_basis`` leading temporal singular vectors of the
    frames at the starting motions, fixed during the solve; Huizinga et al. 2016 use such
    modes), ``"bspline"`` (``n_basis`` cubic B-splines in time, :func:`bspline_basis`), or a
    matrix of shape (N, J) (e.g. :func:`kinetic_basis`).

    A basis flexible enough to fit every frame also fits motion: a frame's motion signal is a
    spike in time, and the fraction ‖Q_k‖² ≈ J/N of it that lies in the basis' span is
    absorbed by the model instead of corrected. Use few functions (J ≪ N), but enough for
    the intensity dynamics (a model error is also "corrected" by moving the frames).

    ``alpha`` (area units, e.g. mm²) weighs the spatial
    regulariser (alpha/2) Σ_k h ‖∇_h I_k‖² (forward differences): in the orthonormalised
    coordinates c̃ = R c (Φ = Q R, QR factorisation) it is (alpha/2) h Σ_j ‖∇_h c̃_j‖², so that
    N = h (I_J ⊗ S), S = I + alpha ∇_hᵀ∇_h, solved by CG (κ ≤ 1 + 8 alpha/min h²).

    With masks, the model's time curves are its enhancement I_k − I_ref projected onto the
    masks in least squares (for disjoint binary masks: the mean over each region).
    """

    basis: Any = "pca"
    n_basis: int = 3
    alpha: float = 0.1

    def _check(self, n_frames: int, masks: np.ndarray | None) -> np.ndarray | None:
        """The model's own arguments against the input, before any work; returns the basis
        matrix when one is given (None for "bspline" and "pca")."""
        _checks.positive("alpha", self.alpha, allow_zero=True)
        if isinstance(self.basis, str):
            _checks.choice("basis", self.basis, ("bspline", "pca"))
            if isinstance(self.n_basis, bool) or not isinstance(self.n_basis, (int, np.integer)):
                raise TypeError(f"n_basis must be an integer, got {self.n_basis!r}")
            if not 1 <= self.n_basis <= n_frames:
                raise ValueError(f"n_basis must be in [1, {n_frames}], got {self.n_basis}")
            return None
        try:
            Phi = np.asarray(_checks.to_host(self.basis), dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"basis must be 'bspline', 'pca' or a real matrix, not {self.basis!r}"
            ) from None
        if Phi.ndim != 2 or Phi.shape[0] != n_frames or not 1 <= Phi.shape[1] <= n_frames:
            raise ValueError(
                f"basis must be 'bspline', 'pca' or a matrix of shape ({n_frames}, J) with "
                f"1 <= J <= {n_frames}, got shape {Phi.shape}"
            )
        if not np.all(np.isfinite(Phi)):
            raise ValueError("basis contains NaN or Inf")
        _independent(Phi)
        return Phi

    def bind(self, s: Setting) -> tuple[ModelKernel, tuple]:
        bk, xp = s.bk, s.bk.xp
        dtype, device = s.frames.dtype, array_api_compat.device(s.frames)
        n_frames = len(s.times)
        Phi = self._check(n_frames, s.masks)
        if Phi is None and self.basis == "bspline":
            Phi = bspline_basis(s.times, int(self.n_basis))
        elif Phi is None:
            U, _, _ = xp.linalg.svd(s.warped, full_matrices=False)
            Phi = bk.to_numpy(U)[:, : int(self.n_basis)]
        Q, R = _independent(Phi)

        def arr(a):
            return bk.asarray(np.ascontiguousarray(a), dtype=dtype, device=device)

        has_masks = s.masks is not None
        kernel = _BasisKernel(
            n_frames, Phi.shape[1], s.domain.m, s.domain.h, s.domain.cell_volume,
            float(self.alpha), has_masks, 0 if s.ref is None else s.ref,
        )  # fmt: skip
        arrays = (arr(Q), arr(np.linalg.inv(R)), arr(Phi))
        if has_masks:
            Mt, C_inv = _orthonormal_masks(s.masks, s.domain.cell_volume)
            arrays = (*arrays, arr(Mt), arr(C_inv))
        return kernel, arrays


def _independent(Phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The QR factors of the basis matrix, which must have linearly independent columns."""
    Q, R = np.linalg.qr(Phi)
    if np.min(np.abs(np.diag(R))) <= 1e-10 * np.max(np.abs(np.diag(R))):
        raise ValueError("basis must have linearly independent columns")
    return Q, R


@dataclass(frozen=True)
class _BasisKernel:
    n_frames: int
    n_basis: int
    m: tuple[int, ...]
    hs: tuple[float, ...]
    h: float
    alpha: float
    has_masks: bool
    ref: int

    @property
    def n_coef(self) -> int:
        return self.n_basis * math.prod(self.m)

    def _c(self, c):
        xp = array_api_compat.array_namespace(c)
        return xp.reshape(c, (self.n_basis, -1))

    def predict(self, c, Q, R_inv, Phi, *masks):
        return Q @ self._c(c)

    def regularizer(self, c, Q, R_inv, Phi, *masks):
        xp = array_api_compat.array_namespace(c)
        u = xp.reshape(c, (self.n_basis, *self.m))
        return math.sqrt(self.alpha * self.h) * _forward_gradient(xp, u, self.hs)

    def _S(self, U, *arrays):
        """S U = U + alpha ∇ᵀ∇ U for maps U (k, m1, m2)."""
        xp = array_api_compat.array_namespace(U)
        return U + self.alpha * _laplacian(xp, U, self.hs)

    def _S_inv(self, bk, U, rtol, max_iter):
        if self.alpha == 0:
            return U
        return _batched_cg(bk, _Call(self, "_S"), U, (), rtol, max_iter)[0]

    def normal_solve(self, bk, V, *arrays, rtol=1e-10, max_iter=500):
        xp = bk.xp
        k = V.shape[0]
        U = xp.reshape(V, (k * self.n_basis, *self.m))
        return xp.reshape(self._S_inv(bk, U, rtol, max_iter), (k, -1)) / self.h

    def projected_gram(self, bk, J, Q, R_inv, Phi, *masks, rtol=1e-10, max_iter=500):
        """result[(k,i),(l,j)] = (Q_k·Q_l) J_k,iᵀ S⁻¹ J_l,j (h cancels)."""
        xp = bk.xp
        N, n, p = J.shape
        flat = xp.reshape(xp.permute_dims(J, (0, 2, 1)), (N * p, n))
        Z = xp.reshape(self._S_inv(bk, xp.reshape(flat, (N * p, *self.m)), rtol, max_iter),
                       (N * p, n))  # fmt: skip
        return _basis_gram(bk)(flat, Z, Q, p)

    def curves(self, c, Q, R_inv, Phi, *masks):
        if not self.has_masks:
            return None
        Mt, C_inv = masks
        I = Q @ self._c(c)
        E = I - I[self.ref : self.ref + 1, :]
        return (self.h * E @ _transpose(Mt)) @ C_inv

    def coefficients(self, c, Q, R_inv, Phi, *masks):
        xp = array_api_compat.array_namespace(c)
        maps = R_inv @ self._c(c)  # c = R⁻¹ c̃ in the user's basis
        return {"maps": xp.reshape(maps, (self.n_basis, *self.m)), "basis": Phi}


def _transpose(a):
    return array_api_compat.array_namespace(a).matrix_transpose(a)


@functools.lru_cache(maxsize=16)
def _basis_gram(bk: Any) -> Callable:
    xp = bk.xp

    def gram(flat, Z, Q, p):
        N = Q.shape[0]
        inner = flat @ xp.matrix_transpose(Z)
        QQ = Q @ xp.matrix_transpose(Q)
        return xp.reshape(xp.broadcast_to(QQ[:, None, :, None], (N, p, N, p)), inner.shape) * inner

    return gram


def bspline_basis(times: Any, n_basis: int) -> np.ndarray:
    """Clamped B-splines in time at ``times``, shape (N, n_basis), degree min(3, n_basis − 1).

    Uniform interior knots on [t_0, t_{N−1}], end knots repeated (de Boor, *A Practical Guide
    to Splines*, 1978, ch. IX: the Cox–de Boor recursion); the functions sum to 1 at every t.
    """
    t = np.asarray(times, dtype=np.float64)
    if isinstance(n_basis, bool) or not isinstance(n_basis, int) or n_basis < 1:
        raise ValueError(f"n_basis must be a positive integer, got {n_basis!r}")
    if t.ndim != 1 or len(t) < 2 or not np.all(np.diff(t) > 0):
        raise ValueError("times must be a strictly increasing 1-D sequence of at least 2")
    k = min(3, n_basis - 1)
    a, b = t[0], t[-1]
    n_inner = n_basis - k - 1
    inner = np.linspace(a, b, n_inner + 2)[1:-1]
    knots = np.concatenate([[a] * (k + 1), inner, [b] * (k + 1)])
    # degree 0, the last interval closed at b
    B = np.zeros((len(t), len(knots) - 1))
    for i in range(len(knots) - 1):
        lo, hi = knots[i], knots[i + 1]
        if hi > lo:
            B[:, i] = (t >= lo) & ((t < hi) | ((hi == b) & (t == b)))
    for d in range(1, k + 1):
        nxt = np.zeros((len(t), len(knots) - d - 1))
        for i in range(len(knots) - d - 1):
            left = knots[i + d] - knots[i]
            right = knots[i + d + 1] - knots[i + 1]
            if left > 0:
                nxt[:, i] += (t - knots[i]) / left * B[:, i]
            if right > 0:
                nxt[:, i] += (knots[i + d + 1] - t) / right * B[:, i + 1]
        B = nxt
    return B


def kinetic_basis(
    times: Any, aif_times: Any, aif: Any, rates: Any = (0.01, 0.05, 0.2, 1.0)
) -> np.ndarray:
    """A tracer-kinetic temporal basis, shape (N, 2 + len(rates)): [1, c_a(t), (c_a ⊛ e^{−λt})].

    Linear compartment models give tissue curves C(t) = Σ_i A_i (c_a ⊛ e^{−λ_i t})(t)
    (Sourbron & Buckley 2013, §2: the two-compartment impulse response is biexponential); a
    grid of ``rates`` λ (1/s) and the arterial input c_a itself (the λ → ∞ limit, plasma
    signal) span such curves approximately. ``aif`` is sampled at ``aif_times`` (a fine grid
    starting at or before ``times[0]``), linear in between; the convolutions are exact for that
    interpolant, then interpolated to ``times``. The constant is the baseline.
    """
    t = np.asarray(times, dtype=np.float64)
    ta = np.asarray(aif_times, dtype=np.float64)
    ca = np.asarray(aif, dtype=np.float64)
    if ta.ndim != 1 or ca.shape != ta.shape or len(ta) < 2 or not np.all(np.diff(ta) > 0):
        raise ValueError("aif_times must be increasing and aif must have its shape")
    lams = np.asarray(rates, dtype=np.float64)
    if lams.ndim != 1 or not np.all(np.isfinite(lams)) or not np.all(lams > 0):
        raise ValueError(f"rates must be positive numbers, got {rates!r}")
    cols = [np.ones_like(t), np.interp(t, ta, ca)]
    dt = np.diff(ta)
    slope = np.diff(ca) / dt
    for lam in lams:
        # y' = c_a − λ y, y(0) = 0, integrated exactly for the piecewise-linear c_a
        decay = np.exp(-lam * dt)
        i0 = -np.expm1(-lam * dt) / lam  # ∫_0^dt e^{−λ(dt−u)} du
        i1 = dt / lam - i0 / lam  # ∫_0^dt u e^{−λ(dt−u)} du
        y = np.zeros_like(ta)
        for i in range(1, len(ta)):
            y[i] = y[i - 1] * decay[i - 1] + ca[i - 1] * i0[i - 1] + slope[i - 1] * i1[i - 1]
        cols.append(np.interp(t, ta, y))
    return np.stack(cols, axis=1)


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
        X, _, _ = separable._batched_cg(
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
    separable._check_tolerances(inner_rtol, inner_max_iter, "inner_rtol", "inner_max_iter")
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
            state["c"] = P.inner(separable._assemble(sp, w0, x))
            state["key"] = x
            state["inner"] += 1
        return state["c"]

    def value(x):
        return k["value"](separable._assemble(sp, w0, x), inner(x), *data)[0]

    def value_and_grad(x):
        w = separable._assemble(sp, w0, x)
        c = inner(x)
        return k["value"](w, c, *data)[0], separable._free(sp, k["grad_w"](w, c, *data))

    def hessian(x):
        t = time.perf_counter()
        w = separable._assemble(sp, w0, x)
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
    x0 = separable._free(sp, w0)
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
    w, c = separable._assemble(sp, w0, res.x), inner(res.x)
    # the generic weighted solve is CG to inner_rtol: a claimed convergence must also be a
    # joint optimum (‖∇_c Φ‖ small), else the status says why
    j0 = float(_host(bk, value(x0))[0])
    res = separable._joint_check(sp, w, c, res, tol_g * (1 + abs(j0)), P.inner_max_iter,
                                 "varpro")  # fmt: skip
    return separable.SeparableResult(
        w=w,
        f=c,
        result=res,
        inner_iterations=state["inner"],
        jacobian_iterations=0,
        timings={**res.timings, **timings},
    )


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
        coarsest level (24×10 cells) picked such shifts (±24 mm) for some frames, so the solve
        relies on the coarse-to-fine Gauss–Newton path instead.
    levels
        Coarse-to-fine levels of the coupled solve (FAIR's multilevel strategy, §9.4): the
        frames and masks averaged onto grids halved per level (:func:`multireg.grid.restrict`),
        each level's motions starting the next; the coarse levels may take
        :data:`COARSE_ITERATIONS` × ``max_iter`` iterations (they are cheap). Default: down
        to about 8 cells on the shorter axis when starting from the identity (w0 None),
        else 1.
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
    separable._check_tolerances(tol_j, max_iter, "tol_j", "max_iter")
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
    for domain in domains[:-1]:
        P, res = _coupled(_restricted(inp, domain), w_level, build, coarse_run)
        w_level = res.w
        coarse.append(f"{domain.m[0]}×{domain.m[1]}: {res.status.name.lower()}, "
                      f"{res.iterations} it")  # fmt: skip
    if coarse:
        timings["coarse_levels"] = time.perf_counter() - t_level
    P, res = _coupled(inp, w_level, build, run)
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


# ------------------------------------------------------------------------------- phantom


def study_aif(t: Any) -> np.ndarray:
    """The arterial input function of the dynamics study (paper-and-code.md §C.1):
    AIF(t) = 4 t^0.1 (e^{−(t−50)/50})² + 20 t/(t+1) e^{1/(t+1)} + sin(t/10) for t > 0, else 0
    (t in seconds; this reading reproduces the study's curve peaks 31.64 and 46.24)."""
    t = np.asarray(t, dtype=np.float64)
    tp = np.maximum(t, 1e-300)
    value = (
        4 * tp**0.1 * np.exp(-(tp - 50) / 50) ** 2
        + 20 * tp / (tp + 1) * np.exp(1 / (tp + 1))
        + np.sin(tp / 10)
    )
    return np.where(t > 0, value, 0.0)


def two_compartment(
    times: Any,
    *,
    flow: float,
    blood_volume: float,
    ps: float,
    ve: float,
    delay: float = 4.5,
    hematocrit: float = 0.4,
    aif: Callable[[np.ndarray], np.ndarray] = study_aif,
    dt: float = 0.005,
) -> np.ndarray:
    """Tissue concentration Q_P + Q_I of the study's two-compartment model at ``times``
    (paper-and-code.md §C.1; Sourbron & Buckley 2013):

        dQ_P/dt = F/(1−h) c_a(t−δ) − (PS + F)/(V_b(1−h)) Q_P + PS/V_e Q_I
        dQ_I/dt = PS/(V_b(1−h)) Q_P − PS/V_e Q_I,           Q(0) = 0,

    integrated by classical Runge–Kutta with step ``dt`` (s)."""
    t_out = np.asarray(times, dtype=np.float64)
    n = math.ceil(t_out.max() / dt) + 1
    grid = np.arange(n + 1) * dt
    h = hematocrit
    a11, a12 = -(ps + flow) / (blood_volume * (1 - h)), ps / ve
    a21, a22 = ps / (blood_volume * (1 - h)), -ps / ve
    A = np.array([[a11, a12], [a21, a22]])

    def source(t):
        return flow / (1 - h) * aif(np.asarray(t) - delay) * (np.asarray(t) > delay)

    Q = np.zeros(2)
    total = np.zeros(len(grid))
    for i in range(n):
        t = grid[i]
        s0, s1, s2 = source(t), source(t + dt / 2), source(t + dt)
        k1 = A @ Q + np.array([s0, 0.0])
        k2 = A @ (Q + dt / 2 * k1) + np.array([s1, 0.0])
        k3 = A @ (Q + dt / 2 * k2) + np.array([s1, 0.0])
        k4 = A @ (Q + dt * k3) + np.array([s2, 0.0])
        Q = Q + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        total[i + 1] = Q.sum()
    return np.interp(t_out, grid, total)


# (flow F_T, blood volume V_b, PS, V_e): the study's medulla and cortex (§C.1); the liver's are
# this project's choice (slow uptake)
KINETICS = {
    "medulla": (20.0, 0.40, 7.0, 0.15),
    "cortex": (30.0, 0.45, 12.0, 0.30),
    "liver": (2.0, 0.20, 0.08, 0.30),
}


@dataclass(frozen=True)
class Phantom:
    """A synthetic DCE series with its truth (NumPy arrays; see :func:`kidney_phantom`)."""

    frames: np.ndarray
    """(N, m1, m2) the data: moved, with noise."""
    times: np.ndarray
    omega: tuple[float, ...]
    masks: dict
    """name → (m1, m2) bool: the regions (partial-volume weight > ½) in the reference frame."""
    weights: dict
    """name → (m1, m2) partial-volume weights in [0, 1] (the exact model masks)."""
    curves: dict
    """name → (N,) the true enhancement α_r(t_k) added to the region."""
    w: np.ndarray
    """(N, 6) the true affine motions (FAIR layout, reference → frame); row 0 the identity."""
    clean: np.ndarray
    """(N, m1, m2) the noise-free frames in the reference frame: f_k = reference + Σ α W."""
    moved: np.ndarray
    """(N, m1, m2) the noise-free data: d_k(y(w_k, x)) = f_k(x)."""
    reference: np.ndarray
    """(m1, m2) the pre-contrast image."""
    aif_times: np.ndarray
    aif: np.ndarray
    """The tissue's arterial input c_a(t − δ) on a fine time grid (for :func:`kinetic_basis`)."""
    sigma: float
    """The noise's standard deviation (noise × the clean data's maximum)."""
    in_view: np.ndarray | None = None
    """(N, m1, m2) bool: whether y(w_k, x) lies inside the frames' field of view ω, i.e. whether
    frame k observes reference cell x at all (outside it the frame is unknown, not tissue)."""


def _ellipse_weight(points, centre, axes, angle, eps):
    """Smooth indicator of an ellipse: ½(1 + tanh(s/ε)), s ≈ the signed distance to the
    boundary (first order: −(ρ² − 1)/|∇ρ²|)."""
    c, s = math.cos(angle), math.sin(angle)
    d = points - np.asarray(centre)
    u1 = c * d[:, 0] + s * d[:, 1]
    u2 = -s * d[:, 0] + c * d[:, 1]
    f = (u1 / axes[0]) ** 2 + (u2 / axes[1]) ** 2 - 1
    grad = 2 * np.sqrt((u1 / axes[0] ** 2) ** 2 + (u2 / axes[1] ** 2) ** 2)
    dist = -f / np.maximum(grad, 1e-12)
    return 0.5 * (1 + np.tanh(np.clip(dist / eps, -50, 50)))


def _anatomy(points, L, eps, texture, organs):
    """(base, region weights) at physical points (n, 2): painter's layers of smooth ellipses."""
    tex = 1 + texture(points)
    layers = [("body", 70.0, _ellipse_weight(points, (0, 0), (0.42 * L, 0.31 * L), 0, eps))]
    if organs:
        layers += [
            ("liver", 60.0, _ellipse_weight(points, (-0.17 * L, -0.08 * L),
                                            (0.16 * L, 0.12 * L), 0.35, eps)),
            ("spine", 30.0, _ellipse_weight(points, (0, 0.19 * L), (0.05 * L, 0.05 * L), 0, eps)),
            ("aorta", 50.0, _ellipse_weight(points, (0.035 * L, 0.085 * L),
                                            (0.028 * L, 0.028 * L), 0, eps)),
        ]  # fmt: skip
    for side in (-1, 1):
        centre, angle = (side * 0.2 * L, 0.12 * L), side * 0.45
        layers.append(
            ("cortex", 100.0, _ellipse_weight(points, centre, (0.09 * L, 0.05 * L), angle, eps))
        )
        layers.append(
            ("medulla", 80.0, _ellipse_weight(points, centre, (0.055 * L, 0.027 * L), angle, eps))
        )
    effective = []
    for i, (name, value, W) in enumerate(layers):
        e = W.copy()
        for _, _, later in layers[i + 1 :]:
            e = e * (1 - later)
        effective.append((name, value, e))
    base = sum(v * e * tex for _, v, e in effective)
    regions = {}
    for name, _, e in effective:
        if name in ("body", "spine"):
            continue
        regions[name] = regions.get(name, 0) + e
    return base, regions


def kidney_phantom(
    m: tuple[int, int] = (128, 128),
    n_frames: int = 25,
    dt: float = 2.4,
    noise: float = 0.0,
    motion: bool = True,
    seed: int = 0,
    *,
    fov: float = 320.0,
    rotation: float = 6.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translation: float = 5.0,
    contrast: float = 1.0,
    organs: bool = True,
    texture: float = 0.05,
    edge: float = 1.0,
    window: tuple[float, float, float, float] | None = None,
    onset: float = 0.0,
) -> Phantom:
    """A procedural synthetic kidney DCE-MRI series with its truth (written for multireg).

    Anatomy (an axial slice, ``fov`` mm square, ω centred at 0): a body ellipse, two kidneys
    each with cortex and medulla and, with ``organs``, the liver, the spine and the aorta;
    smooth random textures (multiplicative, relative amplitude ``texture``) and smooth edges
    (tanh of the distance, width ``edge`` cells), so that spline interpolation is accurate and
    the partial-volume ``weights`` make the regions model exact. Intensities: pre-contrast
    70 (body) … 100 (cortex); enhancement α_r(t) added uniformly in each region: cortex and
    medulla from the study's two-compartment model and arterial input (paper-and-code.md §C.1,
    :func:`two_compartment`, :func:`study_aif`: peaks 46.2 and 31.6 at 7.2 s), the aorta the
    delayed arterial input, the liver a slow uptake. ``contrast`` scales every curve.

    ``n_frames`` frames ``dt`` s apart (the study's 25 × 2.4 s). Frame 0 is the reference;
    frames k ≥ 1 (with ``motion``) move by a random affine map y_k(x) = A_k x + b_k:
    A_k = R(φ) diag(s1, s2), φ ~ U(±``rotation``°), s_i ~ U(``scale``), b ~ U(±``translation``)
    mm. The data are d_k = f_k ∘ y_k⁻¹ evaluated exactly (procedurally), so that
    d_k(y(w_k, x)) = f_k(x) (the registration convention); ``noise`` adds Gaussian noise of
    standard deviation ``noise`` × the maximum of the noise-free data.

    ``window`` (ω = (a1, b1, a2, b2) mm, anatomy coordinates; default the full ``fov`` square)
    is the frames' own field of view: every frame is evaluated on the cells of ω *after* it
    moved, so a window that cuts through the body crops tissue differently in every frame
    (:attr:`Phantom.in_view` marks the reference cells a frame still observes). ``onset`` (s)
    delays the bolus arrival of every curve (more contrast-free early frames).
    """
    m = _pair("m", m)
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 2:
        raise ValueError(f"n_frames must be an integer >= 2, got {n_frames!r}")
    for name, value in (("dt", dt), ("fov", fov), ("edge", edge)):
        _checks.positive(name, value)
    for name, value in (
        ("noise", noise), ("rotation", rotation), ("translation", translation),
        ("contrast", contrast), ("texture", texture),
    ):  # fmt: skip
        _checks.positive(name, value, allow_zero=True)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be a range (lo, hi) with 0 < lo <= hi, got {scale!r}")
    rng_anatomy, rng_motion, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    _checks.positive("onset", onset, allow_zero=True)
    L = float(fov)
    if window is None:
        omega = (-L / 2, L / 2, -L / 2, L / 2)
    else:
        if len(window) != 4 or not (window[0] < window[1] and window[2] < window[3]):
            raise ValueError(f"window must be (a1, b1, a2, b2) with a_i < b_i, got {window!r}")
        omega = tuple(float(v) for v in window)
    domain = Domain(omega, m)
    eps = edge * min(domain.h)

    # texture: a few random plane waves, wavelengths 15–60 mm, unit standard deviation
    n_waves = 12
    k_dir = rng_anatomy.uniform(0, 2 * np.pi, n_waves)
    k_len = 2 * np.pi / rng_anatomy.uniform(15, 60, n_waves)
    phase = rng_anatomy.uniform(0, 2 * np.pi, n_waves)
    K = np.stack([np.cos(k_dir), np.sin(k_dir)], axis=1) * k_len[:, None]

    def tex(points):
        return texture * np.sqrt(2 / n_waves) * np.sum(np.cos(points @ K.T + phase), axis=1)

    times = np.arange(n_frames) * float(dt)
    curves = {
        "cortex": two_compartment(times, **_kin("cortex"), delay=4.5 + onset),
        "medulla": two_compartment(times, **_kin("medulla"), delay=4.5 + onset),
    }
    if organs:
        curves["liver"] = two_compartment(times, **_kin("liver"), delay=4.5 + onset)
        curves["aorta"] = study_aif(times - 4.5 - onset)
    curves = {k: contrast * v for k, v in curves.items()}

    import array_api_compat.numpy as xnp

    x = np.asarray(domain.cell_centers(xnp, dtype=xnp.float64))
    base, regions = _anatomy(x, L, eps, tex, organs)
    names = [n for n in ("cortex", "medulla", "aorta", "liver") if n in curves]
    weights = {n: np.reshape(regions[n], m) for n in names}

    w = np.tile([1.0, 0, 0, 0, 1, 0], (n_frames, 1))
    clean, moved, in_view = [], [], []
    lo, hi = np.array(omega[0::2]), np.array(omega[1::2])
    for k in range(n_frames):
        if motion and k > 0:
            phi = np.deg2rad(rng_motion.uniform(-rotation, rotation))
            s = rng_motion.uniform(scale[0], scale[1], 2)
            b = rng_motion.uniform(-translation, translation, 2)
            A = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]]) @ np.diag(s)
            w[k] = [A[0, 0], A[0, 1], b[0], A[1, 0], A[1, 1], b[1]]
        A = np.array([[w[k, 0], w[k, 1]], [w[k, 3], w[k, 4]]])
        b = np.array([w[k, 2], w[k, 5]])
        f = base + sum(curves[n][k] * regions[n] for n in names)
        clean.append(np.reshape(f, m))
        y = x @ A.T + b
        in_view.append(np.reshape(np.all((y >= lo) & (y <= hi), axis=1), m))
        # d_k(z) = f_k(y_k⁻¹(z)) at the cell centres z
        pts = np.linalg.solve(A, (x - b).T).T
        base_k, regions_k = _anatomy(pts, L, eps, tex, organs)
        moved.append(np.reshape(base_k + sum(curves[n][k] * regions_k[n] for n in names), m))
    clean, moved = np.stack(clean), np.stack(moved)
    sigma = float(noise) * float(np.max(moved))
    frames = moved + sigma * rng_noise.standard_normal(moved.shape)
    aif_times = np.arange(0.0, times[-1] + 1e-9, 0.05)
    return Phantom(
        frames=frames,
        times=times,
        omega=omega,
        masks={n: weights[n] > 0.5 for n in names},
        weights=weights,
        curves=curves,
        w=w,
        clean=clean,
        moved=moved,
        reference=np.reshape(base, m),
        aif_times=aif_times,
        aif=study_aif(aif_times - 4.5 - onset),
        sigma=sigma,
        in_view=np.stack(in_view),
    )


LARGE_MOTION_PATTERNS = ("study", "kidneys", "late", "weak")


def large_motion_phantom(
    m: tuple[int, int] = (96, 40),
    n_frames: int = 25,
    noise: float = 0.01,
    seed: int = 0,
    *,
    pattern: str = "study",
    rotation: float = 6.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translation: float = 12.0,
    dt: float = 2.4,
) -> Phantom:
    """The kidney phantom in the regime of issue 14 (written for multireg): large random affine
    motion per frame (rotation ±``rotation``° and scaling ``scale`` about the body's centre,
    translation ±``translation`` mm), the organs near the edge of a field of view that is
    *smaller than the body* (ω = [−96, 96] × [−20, 60] mm of the 320 mm anatomy: the kidneys
    reach within ~3 mm of the upper edge, the body is cut on every side), and every frame
    cropped to ω *after* it moved, so that each frame misses different tissue
    (:attr:`Phantom.in_view`). Modelled on the study's own test data (paper-and-code.md §C;
    issue 14: 25 frames, ±6°, 0.9–1.1, crops after motion).

    ``pattern`` picks the enhancement: ``"study"`` the four regions of :func:`kidney_phantom`;
    ``"kidneys"`` contrast (and anatomy) only in cortex and medulla, as in the study;
    ``"late"`` a bolus 3 frames later (five contrast-free early frames); ``"weak"`` half the
    contrast. ``seed`` fixes anatomy texture, motion and noise."""
    if pattern not in LARGE_MOTION_PATTERNS:
        raise ValueError(f"pattern must be one of {LARGE_MOTION_PATTERNS}, got {pattern!r}")
    _checks.positive("dt", dt)
    return kidney_phantom(
        m,
        n_frames,
        dt=dt,
        noise=noise,
        seed=seed,
        fov=320.0,
        rotation=rotation,
        scale=scale,
        translation=translation,
        contrast=0.5 if pattern == "weak" else 1.0,
        organs=pattern != "kidneys",
        window=(-96.0, 96.0, -20.0, 60.0),
        onset=3 * dt if pattern == "late" else 0.0,
    )


def _kin(name: str) -> dict:
    F, Vb, PS, Ve = KINETICS[name]
    return dict(flow=F, blood_volume=Vb, ps=PS, ve=Ve)
