"""Intensity models of :mod:`multireg.problems.dynamics`: the protocol, regions and temporal bases.

Each model is linear in its unknowns and binds to a :class:`Setting` (grid, times, masks) as a
:class:`ModelKernel` and its arrays: :class:`Regions` (region masks, time curves, temporal
smoothness) and :class:`Basis` (temporal basis, coefficient maps, spatial smoothness), both in
orthonormalised coordinates (see the package docstring), with the small batched linear algebra
they share.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import array_api_compat
import numpy as np

from multireg import _checks
from multireg.grid import Domain

Array = Any


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
