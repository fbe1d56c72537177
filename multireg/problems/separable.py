"""The separable least-squares engine: problems linear in f and nonlinear in w.

A separable problem is

    Φ(w, f) = ½ ‖F(w, f)‖²,    F(w, f) = [ r(w, f) ; L f ],

where the data residual ``r(w, f)`` (shape ``(N, q)``: one row per frame) is affine in f, and
row k depends on w only through ``w[k]`` (shape ``(N, p)``: p parameters per frame), and the
regulariser ``L`` is linear (any weights, e.g. √α and quadrature, are folded into r and L). The
engine never forms A(w) = ∂r/∂f: it reaches A(w) v and A(w)ᵀ u by ``bk.jvp`` / ``bk.vjp`` in f.

What it provides:

* :func:`solve_linear`: the inner regularised least squares f(w) = argmin_f Φ(w, f), by CG on
  the normal equations (AᵀA + LᵀL) f = −Aᵀ r(w, 0) or by LSQR on the stacked system
  [A; L] f ≈ −[r(w, 0); 0] (Paige & Saunders 1982), warm-started, matrix-free.
* :func:`varpro`: Gauss–Newton on the reduced function Φ(w, f(w)) (variable projection, Golub
  & Pereyra 1973, 2003), with the reduced Jacobian J̃ = ∂F/∂w + ∂F/∂f · df/dw from

  - ``"implicit"``: implicit differentiation of the normal equations,
    df/dw = −N⁻¹ ∂_w(∇_f Φ), N = J_fᵀJ_f: one inner solve per product, memory independent of
    the inner iteration count (the mixed derivative ∂_w ∇_f Φ by jvp-of-vjp);
  - ``"unrolled"``: forward-mode differentiation through a fixed number of CG iterations
    (Watson, Cherry & Lang, arXiv:2411.02806, "Diff All");
  - ``"kaufman"``: Kaufman's (1975) approximation J̃ ≈ P⊥ ∂F/∂w, which drops the term of the
    mixed derivative that is multiplied by the residual (O'Leary & Rust 2013, §2);
  - ``"partial"``: ∂F/∂w with f frozen (df/dw := 0; the paper's "No Diff").

  The gradient of the reduced objective is the partial one, J_wᵀF (Golub & Pereyra's envelope
  result: it is exact when the inner solve is), for every variant. The implicit and Kaufman
  Gauss–Newton matrices are either formed (P batched solves) or applied matrix-free
  (``matrix_free=True``: one inner solve per product J̃v or J̃ᵀu, the outer system by PCG).
* :func:`bcd`: block coordinate descent (one inner solve in f, then one Gauss–Newton step in w
  with the per-frame p×p blocks solved by batched Cholesky).
* :func:`lap`: linearise and project (Herring, Nagy & Ruthotto 2018): the joint Gauss–Newton
  step with δw eliminated frame by frame, the projected system in δf solved by CG or LSQR;
  optional bounds on f (projected Gauss–Newton).
* :func:`full_gauss_newton`: Gauss–Newton on the joint (w, f), the joint normal equations
  solved by block-Jacobi preconditioned CG (or LSQR on the column-scaled stacked system).

The block-diagonal Gauss–Newton matrix in w (p×p per frame) is formed with p forward products,
one per parameter index for all frames at once (the frames' columns do not overlap), and solved
by a batched Cholesky factorisation. Kernels are compiled once per (backend, residual,
regulariser) with ``bk.jit``; data are their arguments, never captured.

References: G. H. Golub and V. Pereyra, SIAM J. Numer. Anal. 10 (1973) 413–432 and Inverse
Problems 19 (2003) R1–R26; L. Kaufman, BIT 15 (1975) 49–57; D. P. O'Leary and B. W. Rust,
Comput. Optim. Appl. 54 (2013) 579–593; J. L. Herring, J. G. Nagy and L. Ruthotto, "LAP: a
linearize and project method for solving inverse problems with coupled variables",
arXiv:1705.09992 (2018); C. C. Paige and M. A. Saunders, ACM Trans. Math. Softw. 8 (1982)
43–71 (LSQR); M. R. Hestenes and E. Stiefel, J. Res. Nat. Bur. Standards 49 (1952) 409–436 (CG).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from multireg import _checks
from multireg.optimize import Objective, Record, Result, Status, gauss_newton
from multireg.optimize._objective import LinearOperator

__all__ = [
    "INNER_SOLVERS",
    "JACOBIANS",
    "InnerSolve",
    "SeparableProblem",
    "SeparableResult",
    "bcd",
    "cholesky_solve",
    "full_gauss_newton",
    "lap",
    "reduced_jacobian",
    "solve_linear",
    "varpro",
]

Array = Any
JACOBIANS = ("implicit", "unrolled", "kaufman", "partial")
INNER_SOLVERS = ("cg", "lsqr")


@dataclass(frozen=True)
class SeparableProblem:
    """Φ(w, f) = ½‖r(w, f)‖² + ½‖L f‖² with ``r`` affine in f and frame k depending on w[k].

    ``residual(w, f, *data)``: w of shape ``(N, p)``, f 1-D of length ``n_f``; returns
    shape ``(N, q)``. ``regularizer(f, *data)``: the linear L f (any shape). Both must be
    hashable (module functions or methods of frozen dataclasses): compiled kernels are cached
    on them. ``data``: arrays passed to both as trailing arguments. ``fixed``: frames whose
    parameters stay as given (a gauge, e.g. frame 0 at the identity).
    """

    bk: Any
    residual: Callable
    regularizer: Callable
    n_frames: int
    n_params: int
    n_f: int
    data: tuple = ()
    fixed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not getattr(self.bk, "differentiable", False):
            raise TypeError("bk must be a differentiating backend (torch or jax)")
        for name in ("residual", "regularizer"):
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be callable")
        for name in ("n_frames", "n_params", "n_f"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        fixed = tuple(sorted(set(self.fixed)))
        if any(not isinstance(k, int) or not 0 <= k < self.n_frames for k in fixed):
            raise ValueError(f"fixed must hold frame indices in [0, {self.n_frames}), got {fixed}")
        if len(fixed) == self.n_frames:
            raise ValueError("fixed holds every frame: nothing is left to estimate")
        object.__setattr__(self, "fixed", fixed)

    @property
    def free(self) -> tuple[int, ...]:
        """The frames whose parameters are estimated."""
        return tuple(k for k in range(self.n_frames) if k not in self.fixed)

    @property
    def kernels(self) -> dict[str, Callable]:
        return _kernels(self.bk, self.residual, self.regularizer)

    def check_w(self, w: Array) -> Array:
        """w as a backend array of shape (N, p); errors name the argument."""
        w = self.bk.asarray(w)
        if tuple(w.shape) != (self.n_frames, self.n_params):
            raise ValueError(
                f"w must have shape ({self.n_frames}, {self.n_params}), got {tuple(w.shape)}"
            )
        return w

    def check_f(self, f: Array | None, like: Array) -> Array:
        xp = self.bk.xp
        if f is None:
            return xp.zeros((self.n_f,), dtype=like.dtype, device=array_api_compat.device(like))
        f = self.bk.asarray(f)
        if tuple(f.shape) != (self.n_f,):
            raise ValueError(f"f must have shape ({self.n_f},), got {tuple(f.shape)}")
        return f

    def value(self, w: Array, f: Array) -> float:
        """Φ(w, f) as a Python float."""
        return _host(self.bk, self.kernels["value"](w, f, *self.data))[0]


# ------------------------------------------------------------------------------- kernels


@functools.lru_cache(maxsize=32)
def _kernels(bk: Any, residual: Callable, regularizer: Callable) -> dict[str, Callable]:
    """Compiled kernels of one separable problem; data are arguments (jax.jit traces once)."""
    xp = bk.xp

    def stacked(w, f, *data):
        """F(w, f) = [r(w, f); L f] flattened."""
        r = xp.reshape(residual(w, f, *data), (-1,))
        return xp.concat([r, xp.reshape(regularizer(f, *data), (-1,))])

    def value(w, f, *data):
        F = stacked(w, f, *data)
        return xp.reshape(0.5 * xp.sum(F * F), (1,))

    def grad_f(w, f, *data):
        """∇_f Φ = J_fᵀ F = Aᵀ r + LᵀL f."""
        F, pullback = bk.vjp(lambda g: stacked(w, g, *data), f)
        return pullback(F)

    def grad_w(w, f, *data):
        """∇_w Φ at frozen f, J_wᵀ F (the envelope gradient), shape (N, p)."""
        F, pullback = bk.vjp(lambda v: stacked(v, f, *data), w)
        return pullback(F)

    def normal(w, u, *data):
        """N u = J_fᵀ J_f u. F is affine in f, so J_f u = F(w, u) − F(w, 0) exactly (up to
        rounding, relative to ‖F(w, 0)‖): one forward pass instead of a forward-mode product,
        which costs ~50× more under torch.func; J_fᵀ is the vjp in f."""
        zero = xp.zeros_like(u)
        F0, pullback = bk.vjp(lambda g: stacked(w, g, *data), zero)
        return pullback(stacked(w, u, *data) - F0)

    def normal_batch(w, U, *data):
        """N U[i] for every row; one row (the inner solve) without the vmap's overhead."""
        if U.shape[0] == 1:
            return normal(w, U[0, :], *data)[None, :]
        return bk.vmap(lambda u: normal(w, u, *data))(U)

    def cg_start(w, X, B, *data):
        R = B - normal_batch(w, X, *data)
        return R, xp.sum(R * R, axis=1)

    def cg_step(w, X, R, P, rr, *data):
        Q = normal_batch(w, P, *data)
        pq = xp.sum(P * Q, axis=1)
        alpha = xp.where(pq > 0, rr / xp.where(pq > 0, pq, 1.0), 0.0)
        X = X + alpha[:, None] * P
        R = R - alpha[:, None] * Q
        rr_new = xp.sum(R * R, axis=1)
        beta = xp.where(rr > 0, rr_new / xp.where(rr > 0, rr, 1.0), 0.0)
        return X, R, R + beta[:, None] * P, rr_new

    def cg_state_step(z, shape, n, *data):
        """One CG step on the packed state z = [w, x, r, p, rᵀr, r₀ᵀr₀] (w carried along
        unchanged, so that a forward tangent of z carries the direction in w through every
        step). A step whose rᵀr is at rounding level relative to r₀ᵀr₀ leaves the state as it
        is: past convergence, α and β are ratios of rounding errors, and their tangents would
        grow without bound (the unrolled Jacobian would diverge as steps are added)."""
        nw = shape[0] * shape[1]
        w = xp.reshape(z[:nw], shape)
        x, r, p = z[nw : nw + n], z[nw + n : nw + 2 * n], z[nw + 2 * n : nw + 3 * n]
        rr, rr0 = z[nw + 3 * n : nw + 3 * n + 1], z[nw + 3 * n + 1 :]
        tiny = (100 * xp.finfo(z.dtype).eps) ** 2
        active = rr > tiny * rr0
        q = normal(w, p, *data)
        pq = xp.sum(p * q)
        alpha = xp.where(active & (pq > 0), rr / xp.where(pq > 0, pq, 1.0), 0.0)
        x, r = x + alpha * p, r - alpha * q
        rr_new = xp.where(active, xp.reshape(xp.sum(r * r), (1,)), rr)
        beta = xp.where(active & (rr > 0), rr_new / xp.where(rr > 0, rr, 1.0), 0.0)
        p = xp.where(active, r + beta * p, p)
        return xp.concat([z[:nw], x, r, p, rr_new, rr0])

    def cg_state_start(wflat, shape, x0, *data):
        """The packed CG state at x0 (held fixed) for N(w) x = −Aᵀ r(w, 0)."""
        w = xp.reshape(wflat, shape)
        r = -grad_f(w, xp.zeros_like(x0), *data) - normal(w, x0, *data)
        rr = xp.reshape(xp.sum(r * r), (1,))
        return xp.concat([wflat, x0, r, r, rr, rr])

    def unrolled_start(w, x0, V, *data):
        """The CG start state and its tangents along every direction V[i]."""
        shape, wflat = w.shape, xp.reshape(w, (-1,))

        def start(u):
            return cg_state_start(u, shape, x0, *data)

        def one(v):
            return bk.jvp(start, wflat, xp.reshape(v, (-1,)))[1]

        return start(wflat), bk.vmap(one)(V)

    def unrolled_step(z, Z, w, *data):
        """One CG step of the state z and of its tangents Z (forward-mode AD of the step)."""
        shape, n = w.shape, (z.shape[0] - w.shape[0] * w.shape[1] - 2) // 3

        def step(u):
            return cg_state_step(u, shape, n, *data)

        def one(t):
            return bk.jvp(step, z, t)[1]

        return step(z), bk.vmap(one)(Z)

    def unrolled_columns(z, Z, w, *data):
        """F at the unrolled iterate and the reduced Jacobian's columns (as rows)."""
        nw = w.shape[0] * w.shape[1]
        n = (z.shape[0] - nw - 2) // 3
        f = z[nw : nw + n]

        def one(t):
            return _joint_jvp(bk, stacked, w, f, xp.reshape(t[:nw], w.shape), t[nw : nw + n], data)

        return bk.vmap(one)(Z)

    def w_jacobian_blocks(w, f, *data):
        """∂r_k/∂w_k for every frame, shape (N, q, p), from p forward products."""
        p = w.shape[1]
        cols = []
        for j in range(p):
            e = xp.zeros_like(w[0, :])
            e = xp.where(xp.arange(p, device=array_api_compat.device(w)) == j, 1.0, e)
            V = xp.broadcast_to(e[None, :], w.shape)
            _, jv = bk.jvp(lambda v: residual(v, f, *data), w, V)
            cols.append(jv)
        return xp.stack(cols, axis=2)

    def w_blocks(w, f, *data):
        """The frame blocks of J_wᵀJ_w (N, p, p) and of J_wᵀF (N, p)."""
        Jb = w_jacobian_blocks(w, f, *data)
        r = residual(w, f, *data)
        H = xp.sum(Jb[:, :, :, None] * Jb[:, :, None, :], axis=1)
        g = xp.sum(Jb * r[:, :, None], axis=1)
        return H, g

    def mixed(w, f, V, *data):
        """∂_w(∇_f Φ)[V] for each direction V[i] (shape (k, N, p)) → (k, n_f): jvp of a vjp."""

        def one(v):
            return bk.jvp(lambda u: grad_f(u, f, *data), w, v)[1]

        return bk.vmap(one)(V)

    def mixed_kaufman(w, f, V, *data):
        """J_fᵀ [J_w V; 0]: the mixed derivative without the term multiplied by F."""

        def one(v):
            _, jv = bk.jvp(lambda u: stacked(u, f, *data), w, v)
            _, pullback = bk.vjp(lambda g: stacked(w, g, *data), f)
            return pullback(jv)

        return bk.vmap(one)(V)

    def w_pullback(w, f, u, *data):
        """J_wᵀ u, shape (N, p)."""
        _, pullback = bk.vjp(lambda v: stacked(v, f, *data), w)
        return pullback(u)

    def mixed_t(w, f, y, *data):
        """Mᵀ y = ∂_w ⟨∇_f Φ(w, f), y⟩, shape (N, p): a vjp (in w) of the vjp ∇_f Φ."""
        _, pullback = bk.vjp(lambda u: grad_f(u, f, *data), w)
        return pullback(y)

    # --- operators for LSQR, LAP's projected system and the joint (w, f) system. ``Q``
    # (N, q, p) holds an orthonormal basis of each frame's J_w block (None: no projection);
    # ``mask`` (n_f,) zeroes the frozen (active) image variables (None: all free).

    def project(v, Q):
        """[P⊥ v_d; v_L], P⊥ = I − Q_k Q_kᵀ on each frame's rows of the data part."""
        if Q is None:
            return v
        nd = Q.shape[0] * Q.shape[1]
        vd = xp.reshape(v[:nd], Q.shape[:2])
        c = xp.sum(Q * vd[:, :, None], axis=1)
        vd = vd - xp.sum(Q * c[:, None, :], axis=2)
        return xp.concat([xp.reshape(vd, (-1,)), v[nd:]])

    def masked(u, mask):
        return u if mask is None else mask * u

    def op(w, u, F0, Q, mask, *data):
        """[P⊥ A; L] (mask u), with A u = F(w, u) − F(w, 0) (F is affine in f; F0 = F(w, 0))."""
        return project(stacked(w, masked(u, mask), *data) - F0, Q)

    def op_t(w, f, v, Q, mask, *data):
        """mask · [P⊥ A; L]ᵀ v (the vjp in f at 0; ``f`` only gives the shape)."""
        _, pullback = bk.vjp(lambda g: stacked(w, g, *data), xp.zeros_like(f))
        return masked(pullback(project(v, Q)), mask)

    def normal_op(w, u, Q, mask, *data):
        """mask (AᵀP⊥A + LᵀL) mask u: LAP's projected normal operator (Q = None: N)."""
        u = masked(u, mask)
        F0, pullback = bk.vjp(lambda g: stacked(w, g, *data), xp.zeros_like(u))
        return masked(pullback(project(stacked(w, u, *data) - F0, Q)), mask)

    def joint_split(z, Jb):
        nw = Jb.shape[0] * Jb.shape[2]
        return xp.reshape(z[:nw], (Jb.shape[0], Jb.shape[2])), z[nw:]

    def joint_forward(w, z, F0, Jb, mask, *data):
        """J [δw; δf] = [J_w δw + A δf; L δf] from the frame blocks of J_w (N, q, p)."""
        dw, df = joint_split(z, Jb)
        Fu = stacked(w, masked(df, mask), *data) - F0
        nd = Jb.shape[0] * Jb.shape[1]
        jw = xp.reshape(xp.sum(Jb * dw[:, None, :], axis=2), (-1,))
        return xp.concat([Fu[:nd] + jw, Fu[nd:]])

    def joint_adjoint(w, f, v, Jb, mask, *data):
        """Jᵀ v = [J_wᵀ v_d; mask J_fᵀ v], packed like z."""
        nd = Jb.shape[0] * Jb.shape[1]
        gw = xp.sum(Jb * xp.reshape(v[:nd], Jb.shape[:2])[:, :, None], axis=1)
        _, pullback = bk.vjp(lambda g: stacked(w, g, *data), xp.zeros_like(f))
        return xp.concat([xp.reshape(gw, (-1,)), masked(pullback(v), mask)])

    def joint_normal(w, z, Jb, mask, *data):
        """JᵀJ z for the joint Gauss–Newton system (one forward pass and one pullback)."""
        dw, df = joint_split(z, Jb)
        df = masked(df, mask)
        F0, pullback = bk.vjp(lambda g: stacked(w, g, *data), xp.zeros_like(df))
        Jz = stacked(w, df, *data) - F0
        nd = Jb.shape[0] * Jb.shape[1]
        Jz = xp.concat([Jz[:nd] + xp.reshape(xp.sum(Jb * dw[:, None, :], axis=2), (-1,)), Jz[nd:]])
        gw = xp.sum(Jb * xp.reshape(Jz[:nd], Jb.shape[:2])[:, :, None], axis=1)
        return xp.concat([xp.reshape(gw, (-1,)), masked(pullback(Jz), mask)])

    def linearise(w, f, *data):
        """What one LAP / full Gauss–Newton step needs at (w, f): F(w, f), F(w, 0), the frame
        blocks of J_w (N, q, p), ∇_w Φ = J_wᵀF (N, p) and ∇_f Φ = J_fᵀF."""
        F0, pullback = bk.vjp(lambda g: stacked(w, g, *data), xp.zeros_like(f))
        F = stacked(w, f, *data)
        Jb = w_jacobian_blocks(w, f, *data)
        nd = Jb.shape[0] * Jb.shape[1]
        gw = xp.sum(Jb * xp.reshape(F[:nd], Jb.shape[:2])[:, :, None], axis=1)
        return F, F0, Jb, gw, pullback(F)

    def columns(w, f, V, DF, *data):
        """J_w V[i] + J_f DF[i] for each i: the reduced Jacobian's columns (as rows)."""

        def one(v, df):
            return _joint_jvp(bk, stacked, w, f, v, df, data)

        return bk.vmap(one)(V, DF)

    jit = bk.jit
    return dict(
        stacked=jit(stacked),
        value=jit(value),
        grad_f=jit(grad_f),
        grad_w=jit(grad_w),
        normal=jit(normal),
        cg_start=jit(cg_start),
        cg_step=jit(cg_step),
        w_blocks=jit(w_blocks),
        mixed=jit(mixed),
        mixed_kaufman=jit(mixed_kaufman),
        columns=jit(columns),
        unrolled_start=jit(unrolled_start),
        unrolled_step=jit(unrolled_step),
        unrolled_columns=jit(unrolled_columns),
        w_pullback=jit(w_pullback),
        mixed_t=jit(mixed_t),
        op=jit(op),
        op_t=jit(op_t),
        normal_op=jit(normal_op),
        project=jit(project),
        joint_forward=jit(joint_forward),
        joint_adjoint=jit(joint_adjoint),
        joint_normal=jit(joint_normal),
        linearise=jit(linearise),
    )


def _joint_jvp(bk, stacked, w, f, v, df, data):
    """J_w v + J_f df via one jvp of F over the concatenated (w, f)."""
    xp = bk.xp
    nw = w.shape[0] * w.shape[1]
    shape = w.shape

    def F(z):
        return stacked(xp.reshape(z[:nw], shape), z[nw:], *data)

    z = xp.concat([xp.reshape(w, (-1,)), f])
    t = xp.concat([xp.reshape(v, (-1,)), df])
    return bk.jvp(F, z, t)[1]


def _host(bk: Any, a: Array) -> list[float]:
    return [float(v) for v in np.reshape(bk.to_numpy(a), (-1,))]


# --------------------------------------------------------------------------- inner solve


@dataclass(frozen=True)
class InnerSolve:
    """The inner solution f ≈ argmin_f Φ(w, f) and how it was reached.

    ``residual_norm`` is ‖∇_f Φ(w, f)‖ / ‖Aᵀ r(w, 0)‖ (the relative normal-equation residual).
    """

    f: Array
    iterations: int
    residual_norm: float
    converged: bool


def _batched_cg(
    problem: SeparableProblem, w: Array, B: Array, X0: Array, rtol: float, max_iter: int
) -> tuple[Array, int, float]:
    """CG on N X[i] = B[i] for every row i, from X0; stops when every row has
    ‖B[i] − N X[i]‖ ≤ rtol ‖B[i]‖ (Hestenes & Stiefel 1952). Returns X, iterations, worst ratio.
    """
    bk, xp, k = problem.bk, problem.bk.xp, problem.kernels
    b_norm = np.sqrt(np.maximum(_host(bk, xp.sum(B * B, axis=1)), 1e-300))
    R, rr = k["cg_start"](w, X0, B, *problem.data)
    X, P = X0, R
    worst = float(np.max(np.sqrt(np.maximum(_host(bk, rr), 0.0)) / b_norm))
    it = 0
    while worst > rtol and it < max_iter:
        X, R, P, rr = k["cg_step"](w, X, R, P, rr, *problem.data)
        it += 1
        worst = float(np.max(np.sqrt(np.maximum(_host(bk, rr), 0.0)) / b_norm))
        if not math.isfinite(worst):
            break
    return X, it, worst


def solve_linear(
    problem: SeparableProblem,
    w: Array,
    f0: Array | None = None,
    *,
    rtol: float = 1e-6,
    max_iter: int = 500,
    solver: str = "cg",
) -> InnerSolve:
    """f(w) = argmin_f ½‖r(w, f)‖² + ½‖L f‖², matrix-free, warm-started at f0.

    ``solver="cg"``: CG on the normal equations (AᵀA + LᵀL) f = −Aᵀ r(w, 0) from f0 (Hestenes
    & Stiefel 1952). ``solver="lsqr"``: LSQR (Paige & Saunders 1982) on the stacked system
    [A; L] δ ≈ −F(w, f0) for the correction δ = f − f0 (a warm start for a method that starts
    at zero), with A v = F(w, v) − F(w, 0) (F is affine in f) and Aᵀu by a vjp in f. Both stop
    when ‖∇_f Φ‖ ≤ ``rtol``·‖Aᵀ r(w, 0)‖ (CG: its recursive residual; LSQR: its estimate
    φ̄ α |c| of ‖[A; L]ᵀ(residual)‖) or after ``max_iter`` iterations. Non-convergence is
    reported in the result, never raised.

    The tolerance is relative to the cold start's residual ‖Aᵀ r(w, 0)‖, so that f(w) means the
    same thing wherever the warm start comes from (what VarPro's reduced function needs). The
    outer methods that warm-start it from their own iterates choose their own absolute target
    (:func:`bcd`: relative to the residual at the warm start; :func:`varpro`: no looser than
    its outer gradient tolerance).
    """
    _check_tolerances(rtol, max_iter, "rtol", "max_iter")
    _checks.choice("solver", solver, INNER_SOLVERS)
    w = problem.check_w(w)
    f0 = problem.check_f(f0, w)
    return _solve_linear(
        problem, w, f0, target=lambda b_norm: rtol * b_norm, max_iter=max_iter, solver=solver
    )


def _solve_linear(
    problem: SeparableProblem,
    w: Array,
    f0: Array,
    *,
    target: Callable[[float], float],
    max_iter: int,
    solver: str,
) -> InnerSolve:
    """:func:`solve_linear` to the absolute tolerance ‖∇_f Φ‖ ≤ ``target(‖Aᵀ r(w, 0)‖)``
    (arguments already checked); ``residual_norm`` stays relative to ‖Aᵀ r(w, 0)‖."""
    xp, k, data = problem.bk.xp, problem.kernels, problem.data
    b = -k["grad_f"](w, xp.zeros_like(f0), *data)
    (b_norm,) = _host(problem.bk, xp.linalg.vector_norm(b))
    rtol = target(b_norm) / max(b_norm, 1e-300)
    if solver == "cg":
        X, it, worst = _batched_cg(problem, w, b[None, :], f0[None, :], rtol, max_iter)
        return InnerSolve(f=X[0, :], iterations=it, residual_norm=worst, converged=worst <= rtol)
    F0 = k["stacked"](w, xp.zeros_like(f0), *data)
    delta, it, ratio = _lsqr(
        problem.bk,
        lambda u: k["op"](w, u, F0, None, None, *data),
        lambda v: k["op_t"](w, f0, v, None, None, *data),
        -k["stacked"](w, f0, *data),
        rtol=rtol,
        max_iter=max_iter,
        scale=b_norm,
    )
    return InnerSolve(f=f0 + delta, iterations=it, residual_norm=ratio, converged=ratio <= rtol)


# The attainable accuracy of ‖∇_f Φ‖, relative to ‖Aᵀ r(w, 0)‖, in units of the dtype's eps:
# an inner target below it would only spend iterations on rounding noise.
_ROUNDING = 100.0


def _eps(like: Array) -> float:
    return float(array_api_compat.array_namespace(like).finfo(like.dtype).eps)


def _lsqr(
    bk: Any,
    A: Callable,
    At: Callable,
    b: Array,
    *,
    rtol: float,
    max_iter: int,
    scale: float,
) -> tuple[Array, int, float]:
    """min_x ‖A x − b‖ by LSQR from x = 0 (Paige & Saunders, ACM TOMS 8 (1982), Alg. LSQR §4,
    without reorthogonalisation). Stops when the recurrence's estimate φ̄_{k+1} α_{k+1} |c_k| of
    ‖Aᵀ(b − A x_k)‖ is at most ``rtol``·``scale``, or after ``max_iter`` steps. Returns x, the
    steps taken and that estimate over ``scale``. One host read per step."""
    xp = bk.xp

    def normalise(v):
        n = xp.linalg.vector_norm(v)
        return v / xp.where(n > 0, n, 1.0), n

    u, beta = normalise(b)
    v, alpha = normalise(At(u))
    x = xp.zeros_like(v)
    d, phibar, rhobar = v, beta, alpha
    if not scale > 0:
        return x, 0, 0.0
    (estimate,) = _host(bk, alpha * beta)
    ratio, it = estimate / scale, 0
    while ratio > rtol and it < max_iter:
        u, beta = normalise(A(v) - alpha * u)
        v, alpha = normalise(At(u) - beta * v)
        rho = xp.sqrt(rhobar * rhobar + beta * beta)
        rho = xp.where(rho > 0, rho, 1.0)
        c, s = rhobar / rho, beta / rho
        theta, rhobar = s * alpha, -c * alpha
        phi, phibar = c * phibar, s * phibar
        x = x + (phi / rho) * d
        d = v - (theta / rho) * d
        it += 1
        (estimate,) = _host(bk, phibar * alpha * xp.abs(c))
        ratio = estimate / scale
        if not math.isfinite(ratio):
            break
    return x, it, ratio


def _pcg(
    bk: Any,
    apply: Callable,
    b: Array,
    *,
    rtol: float,
    max_iter: int,
    precond: Callable | None = None,
) -> tuple[Array, int, float]:
    """S x = b for SPD S (``apply``) by preconditioned CG from x = 0 (Hestenes & Stiefel 1952;
    Saad, Iterative Methods, 2nd ed., Alg. 9.1). Stops when ‖b − S x‖ ≤ ``rtol``‖b‖ or after
    ``max_iter`` steps, or at a direction of non-positive curvature (rounding). Returns x, the
    steps taken and ‖b − S x‖/‖b‖. One host read per step."""
    xp = bk.xp
    x = xp.zeros_like(b)
    (b_norm,) = _host(bk, xp.linalg.vector_norm(b))
    if not b_norm > 0 or not math.isfinite(b_norm):
        return x, 0, 0.0 if b_norm == 0 else math.inf
    r = b
    z = r if precond is None else precond(r)
    p, rz = z, xp.sum(r * z)
    ratio, it = 1.0, 0
    while ratio > rtol and it < max_iter:
        q = apply(p)
        pq = xp.sum(p * q)
        alpha = xp.where(pq > 0, rz / xp.where(pq > 0, pq, 1.0), 0.0)
        x, r = x + alpha * p, r - alpha * q
        z = r if precond is None else precond(r)
        rz_new = xp.sum(r * z)
        p = z + xp.where(rz > 0, rz_new / xp.where(rz > 0, rz, 1.0), 0.0) * p
        rz = rz_new
        it += 1
        r_norm, curvature = _host(bk, xp.stack([xp.linalg.vector_norm(r), pq]))
        ratio = r_norm / b_norm
        if not curvature > 0 or not math.isfinite(ratio):
            break
    return x, it, ratio


def _check_tolerances(rtol: Any, max_iter: Any, rname: str, iname: str) -> None:
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0:
        raise ValueError(f"{rname} must be a number >= 0, got {rtol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"{iname} must be an integer >= 0, got {max_iter!r}")


# ---------------------------------------------------------------------- reduced Jacobian


def _directions(problem: SeparableProblem, like: Array) -> Array:
    """Unit tangents of the free parameters, shape (P, N, p) with P = (#free frames)·p."""
    N, p = problem.n_frames, problem.n_params
    E = np.zeros((len(problem.free) * p, N, p))
    for i, (k, j) in enumerate((k, j) for k in problem.free for j in range(p)):
        E[i, k, j] = 1.0
    return problem.bk.asarray(E, dtype=like.dtype, device=array_api_compat.device(like))


def reduced_jacobian(
    problem: SeparableProblem,
    w: Array,
    f: Array,
    jacobian: str = "implicit",
    *,
    rtol: float = 1e-8,
    max_iter: int = 500,
    unrolled_iterations: int = 50,
    f_start: Array | None = None,
    df_start: Array | None = None,
) -> tuple[Array, int]:
    """The reduced Jacobian J̃ of w ↦ F(w, f(w)) over the free parameters, shape (M, P).

    ``f`` must be the inner solution at ``w``. ``jacobian``: ``"implicit"`` (df/dw from the
    normal equations, solved by CG to ``rtol``, warm-started at ``df_start`` (P, n_f) when
    given, e.g. the previous outer iteration's df/dw), ``"kaufman"``, ``"partial"``, or
    ``"unrolled"`` (forward AD through ``unrolled_iterations`` CG steps from the fixed
    ``f_start``, default 0, as Watson, Cherry & Lang do; F is then evaluated at the unrolled
    iterate, which needs enough steps to reach the inner tolerance). Returns J̃ and the CG
    iterations spent (the implicit solve for all P right-hand sides runs as one batched CG).
    Columns follow the free frames in order, p parameters each.
    """
    J, iterations, _ = _reduced_jacobian(
        problem,
        w,
        f,
        jacobian,
        rtol=rtol,
        max_iter=max_iter,
        unrolled_iterations=unrolled_iterations,
        f_start=f_start,
        df_start=df_start,
    )
    return J, iterations


def _reduced_jacobian(
    problem, w, f, jacobian, *, rtol, max_iter, unrolled_iterations, f_start, df_start
):
    """:func:`reduced_jacobian`, also returning df/dw (P, n_f) for the next warm start."""
    if jacobian not in JACOBIANS:
        raise ValueError(f"jacobian must be one of {JACOBIANS}, got {jacobian!r}")
    w = problem.check_w(w)
    f = problem.check_f(f, w)
    xp, k, data = problem.bk.xp, problem.kernels, problem.data
    V = _directions(problem, w)
    iterations = 0
    if jacobian == "unrolled":
        # A fixed start away from the solution: CG started at the solution has r ≈ 0, so its
        # directions are rounding noise and so are their derivatives.
        start = problem.check_f(f_start, w)
        z, Z = k["unrolled_start"](w, start, V, *data)
        for _ in range(unrolled_iterations):
            z, Z = k["unrolled_step"](z, Z, w, *data)
        J = xp.matrix_transpose(k["unrolled_columns"](z, Z, w, *data))
        return J, unrolled_iterations, None
    if jacobian == "partial":
        DF = xp.zeros((V.shape[0], f.shape[0]), dtype=f.dtype, device=array_api_compat.device(f))
    else:
        M = (k["mixed"] if jacobian == "implicit" else k["mixed_kaufman"])(w, f, V, *data)
        if df_start is None:
            df_start = xp.zeros_like(M)
        elif tuple(df_start.shape) != tuple(M.shape):
            raise ValueError(f"df_start must have shape {tuple(M.shape)}, got {df_start.shape}")
        DF, iterations, _ = _batched_cg(problem, w, -M, df_start, rtol, max_iter)
    return xp.matrix_transpose(k["columns"](w, f, V, DF, *data)), iterations, DF


# ---------------------------------------------------------------------------- batched GN


def cholesky_solve(H: Array, g: Array) -> Array:
    """x with H[k] x[k] = g[k] for every block k: H (K, p, p) SPD, g (K, p), by a batched
    Cholesky factorisation and forward / back substitution over the p (few) rows."""
    xp = array_api_compat.array_namespace(H)
    L = xp.linalg.cholesky(H)
    p = H.shape[-1]
    y = []
    for i in range(p):
        s = g[:, i] - sum((L[:, i, j] * y[j] for j in range(i)), start=xp.zeros_like(g[:, i]))
        y.append(s / L[:, i, i])
    x = [None] * p
    for i in reversed(range(p)):
        s = y[i] - sum((L[:, j, i] * x[j] for j in range(i + 1, p)), start=xp.zeros_like(g[:, i]))
        x[i] = s / L[:, i, i]
    return xp.stack(x, axis=1)


def _block_step(problem: SeparableProblem, w: Array, f: Array, damping: float) -> Array:
    """The Gauss–Newton step in w at frozen f, solved frame by frame (fixed frames: 0)."""
    xp = problem.bk.xp
    H, g = problem.kernels["w_blocks"](w, f, *problem.data)
    p = problem.n_params
    eye = xp.eye(p, dtype=w.dtype, device=array_api_compat.device(w))
    scale = xp.max(xp.abs(xp.linalg.diagonal(H)), axis=1)
    H = H + (damping * scale + 1e-300)[:, None, None] * eye
    mask = xp.asarray(
        [k in problem.fixed for k in range(problem.n_frames)],
        dtype=xp.bool,
        device=array_api_compat.device(w),
    )
    H = xp.where(mask[:, None, None], eye, H)
    g = xp.where(mask[:, None], 0.0, g)
    return -cholesky_solve(H, g)


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SeparableResult:
    """The outcome of a separable solve: ``w`` (N, p), ``f`` (n_f,), the outer optimiser's
    :class:`Result` (its ``x`` holds the free parameters), and the inner work."""

    w: Array
    f: Array
    result: Result
    inner_iterations: int
    jacobian_iterations: int
    timings: dict = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return self.result.status

    @property
    def iterations(self) -> int:
        return self.result.iterations


class _Inner:
    """The inner solution at the last w asked for, warm-starting the next solve (held by one
    call of :func:`varpro`, never shared). Each solve reaches ‖∇_f Φ‖ ≤ min(rtol·‖Aᵀr(w, 0)‖,
    ``cap``), the cap floored at the rounding level (see :func:`varpro`)."""

    def __init__(self, problem, w0, f0, rtol, max_iter, solver="cg"):
        self.problem, self.w0, self.f, self.rtol, self.max_iter = problem, w0, f0, rtol, max_iter
        self.solver, self.key, self.iterations = solver, None, 0
        self.cap, self.eps, self.converged = math.inf, _eps(f0), True

    def target(self, b_norm: float) -> float:
        return min(self.rtol * b_norm, max(self.cap, _ROUNDING * self.eps * b_norm))

    def at(self, x: Array) -> Array:
        """f(w) at the free parameters x (re-solved only when x is a new array)."""
        if self.key is not x:
            w = _assemble(self.problem, self.w0, x)
            s = _solve_linear(
                self.problem,
                w,
                self.f,
                target=self.target,
                max_iter=self.max_iter,
                solver=self.solver,
            )
            self.f, self.key, self.converged = s.f, x, s.converged
            self.iterations += s.iterations
        return self.f


def _assemble(problem: SeparableProblem, w_fixed: Array, x: Array) -> Array:
    """The full (N, p) parameters from the fixed frames' values and the free vector x."""
    xp = problem.bk.xp
    free = problem.free
    X = xp.reshape(x, (len(free), problem.n_params))
    rows = []
    for k in range(problem.n_frames):
        rows.append(X[free.index(k), :] if k in free else w_fixed[k, :])
    return xp.stack(rows)


def _free(problem: SeparableProblem, w: Array) -> Array:
    xp = problem.bk.xp
    return xp.reshape(xp.stack([w[k, :] for k in problem.free]), (-1,))


def varpro(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None = None,
    *,
    jacobian: str = "implicit",
    inner_rtol: float = 1e-8,
    inner_max_iter: int = 500,
    inner_solver: str = "cg",
    jacobian_rtol: float | None = None,
    matrix_free: bool = False,
    unrolled_iterations: int = 50,
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
    callback: Callable | None = None,
    verbose: bool = False,
) -> SeparableResult:
    """Variable projection: Gauss–Newton on Φ(w, f(w)) over the free frames' parameters.

    Golub & Pereyra (1973, 2003); Kaufman (1975); O'Leary & Rust (2013). Each evaluation solves
    the inner problem (:func:`solve_linear` with ``inner_solver``, warm-started from the last
    one, to ``inner_rtol``); the Gauss–Newton matrix is J̃ᵀJ̃ with J̃ from
    :func:`reduced_jacobian` (``jacobian``; the batched CG of ``"implicit"`` and ``"kaufman"``
    runs to ``jacobian_rtol``, default ``inner_rtol``, warm-started at the previous outer
    iteration's df/dw: the Jacobian only shapes the step, the gradient is exact), and the
    gradient is the envelope gradient J_wᵀF.

    ``matrix_free=True`` (``"implicit"`` and ``"kaufman"`` only; the unrolled Jacobian is
    always formed, by P forward-mode columns, and the partial one's J_wᵀJ_w is formed
    block-diagonal from its p×p frame blocks, p forward products): J̃ is never formed; the
    Gauss–Newton system is solved by the outer optimiser's PCG (Jacobi-preconditioned with
    diag J_wᵀJ_w, to its relative residual 0.1) with products J̃ᵀJ̃ v that cost one inner
    solve per Jacobian product, J̃ v = J_w v − J_f N⁻¹ M v and J̃ᵀu = J_wᵀu − Mᵀ N⁻¹ J_fᵀ u
    (M = ∂_w ∇_f Φ, by jvp and vjp of the vjp ∇_f Φ; N = J_fᵀJ_f; Kaufman needs only the
    first, as its J̃ v is orthogonal to the range of J_f). Memory is that of one inner solve;
    the cost per outer iteration is (1 or 2)·(PCG steps) inner solves instead of P.

    The outer loop is :func:`multireg.optimize.gauss_newton` (Armijo, FAIR's stopping rules
    with ``tol_j``, ``tol_y``, ``tol_g``, ``max_iter`` and Jstop = Φ(w0, f(w0))); non-convergence
    is reported, never raised.

    Inner tolerance. f(w) is the inner solution to ‖∇_f Φ‖ ≤ ``inner_rtol``·‖Aᵀr(w, 0)‖ (the
    same definition at every w, whatever the warm start: the Armijo test compares the reduced
    function at different w), but never looser than 0.1·``tol_g``(1 + |Φ0|) (nor tighter than
    the rounding level): the envelope gradient J_wᵀF that the outer rules test is the reduced
    gradient only up to a term proportional to ∇_f Φ, so a loose ``inner_rtol`` would let the
    outer loop stop at a point that is not a joint optimum. ``CONVERGED`` therefore means both
    ‖∇_w Φ‖ (the outer STOP3) and ‖∇_f Φ‖ are at most ``tol_g``(1 + |Φ0|); should the inner
    solve stop at ``inner_max_iter`` short of its target at the end, the status is
    ``MAX_ITERATIONS`` with a message that says why.
    """
    if jacobian not in JACOBIANS:
        raise ValueError(f"jacobian must be one of {JACOBIANS}, got {jacobian!r}")
    _check_tolerances(inner_rtol, inner_max_iter, "inner_rtol", "inner_max_iter")
    _checks.choice("inner_solver", inner_solver, INNER_SOLVERS)
    jacobian_rtol = inner_rtol if jacobian_rtol is None else jacobian_rtol
    _check_tolerances(jacobian_rtol, inner_max_iter, "jacobian_rtol", "inner_max_iter")
    if isinstance(unrolled_iterations, bool) or not isinstance(unrolled_iterations, int):
        raise ValueError(f"unrolled_iterations must be an integer, got {unrolled_iterations!r}")
    if not isinstance(matrix_free, bool):
        raise TypeError(f"matrix_free must be True or False, not {matrix_free!r}")
    for name, value in (("tol_j", tol_j), ("tol_y", tol_y), ("tol_g", tol_g)):
        _check_tolerances(value, max_iter, name, "max_iter")
    w0 = problem.check_w(w0)
    f0 = problem.check_f(f0, w0)
    bk, k, data = problem.bk, problem.kernels, problem.data
    inner = _Inner(problem, w0, f0, inner_rtol, inner_max_iter, inner_solver)
    jac_iterations = [0]
    df_dw = [None]  # the last df/dw: the next Jacobian solve's warm start
    timings = {"jacobian": 0.0}

    def value(x):
        w = _assemble(problem, w0, x)
        return k["value"](w, inner.at(x), *data)[0]

    def value_and_grad(x):
        w = _assemble(problem, w0, x)
        f = inner.at(x)
        return k["value"](w, f, *data)[0], _free(problem, k["grad_w"](w, f, *data))

    def hessian(x):
        t = time.perf_counter()
        w = _assemble(problem, w0, x)
        if matrix_free and jacobian in ("implicit", "kaufman"):
            op = _reduced_gauss_newton(
                problem, w, inner.at(x), jacobian, jacobian_rtol, inner_max_iter, jac_iterations
            )

            def matvec(v):
                t = time.perf_counter()
                out = op.matvec(v)
                timings["jacobian"] += time.perf_counter() - t
                return out

            timings["jacobian"] += time.perf_counter() - t
            return LinearOperator(matvec=matvec, diagonal=op.diagonal)
        if jacobian == "partial":
            H = _block_diagonal(problem, k["w_blocks"](w, inner.at(x), *data)[0])
            timings["jacobian"] += time.perf_counter() - t
            return LinearOperator.from_matrix(H)
        J, it, df_dw[0] = _reduced_jacobian(
            problem,
            w,
            inner.at(x),
            jacobian,
            rtol=jacobian_rtol,
            max_iter=inner_max_iter,
            unrolled_iterations=unrolled_iterations,
            f_start=None,
            df_start=df_dw[0],
        )
        jac_iterations[0] += it
        H = _gram(J)
        timings["jacobian"] += time.perf_counter() - t
        return LinearOperator.from_matrix(H)

    objective = Objective(
        bk=bk,
        value=value,
        value_and_grad=value_and_grad,
        hessian=hessian,
        exact_hessian=hessian,
        curvature="gauss-newton",
    )
    x0 = _free(problem, w0)
    # Φ0 = Φ(w0, f(w0)) is the outer rules' Jstop; only then is the inner cap known
    j_stop = problem.value(w0, inner.at(x0))
    if tol_g > 0:
        inner.cap = 0.1 * tol_g * (1 + abs(j_stop))
    res = gauss_newton(
        objective,
        x0,
        max_iter=max_iter,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        j_stop=j_stop,
        callback=callback,
        verbose=verbose,
    )
    w = _assemble(problem, w0, res.x)
    f = inner.at(res.x)
    res = _joint_check(problem, w, f, res, tol_g * (1 + abs(j_stop)), inner.max_iter, "varpro")
    return SeparableResult(
        w=w,
        f=f,
        result=res,
        inner_iterations=inner.iterations,
        jacobian_iterations=jac_iterations[0],
        timings={**res.timings, **timings},
    )


def _joint_check(
    problem: SeparableProblem, w: Array, f: Array, res: Result, bound: float, max_iter: int, name
) -> Result:
    """``res``, unless it claims convergence while ‖∇_f Φ(w, f)‖ exceeds ``bound`` (the outer
    gradient tolerance tol_g(1 + |Φ0|), floored at the rounding level): then (w, f) is not a
    joint optimum (the inner solve stopped at its iteration cap before its target, so the
    envelope gradient that the outer rules tested is not the reduced one), and the result
    says so with status ``MAX_ITERATIONS``."""
    if res.status is not Status.CONVERGED:
        return res
    xp, k, data = problem.bk.xp, problem.kernels, problem.data
    gf, b = _host(
        problem.bk,
        xp.stack(
            [
                xp.linalg.vector_norm(k["grad_f"](w, f, *data)),
                xp.linalg.vector_norm(k["grad_f"](w, xp.zeros_like(f), *data)),
            ]
        ),
    )
    bound = max(bound, _ROUNDING * _eps(f) * b)
    if gf <= bound:
        return res
    message = (
        f"{name}: not a joint optimum: the outer rules hold, but ‖∇_f Φ‖ = {gf:.3e} > "
        f"{bound:.3e} (the inner solve stopped at inner_max_iter = {max_iter} before its "
        "tolerance)"
    )
    return dataclasses.replace(res, status=Status.MAX_ITERATIONS, message=message)


def _reduced_gauss_newton(
    problem: SeparableProblem,
    w: Array,
    f: Array,
    jacobian: str,
    rtol: float,
    max_iter: int,
    counter: list[int],
) -> LinearOperator:
    """The reduced Gauss–Newton matrix J̃ᵀJ̃ over the free parameters as a matrix-free operator
    (implicit or Kaufman J̃): each product runs inner solves N⁻¹ (CG to ``rtol``) for
    J̃ v = J_w v − J_f N⁻¹ M v and J̃ᵀu = J_wᵀu − Mᵀ N⁻¹ J_fᵀu, with M = ∂_w ∇_f Φ (implicit:
    two solves) or J_fᵀJ_w (Kaufman: J_fᵀJ̃ v = 0, one solve). Its diagonal attribute is
    diag J_wᵀJ_w (a Jacobi preconditioner; J̃ᵀJ̃ ≤ J_wᵀJ_w). CG steps go to ``counter[0]``."""
    xp, k, data = problem.bk.xp, problem.kernels, problem.data
    mixed = k["mixed"] if jacobian == "implicit" else k["mixed_kaufman"]
    zero_w, zero_f = xp.zeros_like(w), xp.zeros_like(f)[None, :]

    def solve(b):
        X, it, _ = _batched_cg(problem, w, b[None, :], zero_f, rtol, max_iter)
        counter[0] += it
        return X[0, :]

    def matvec(x):
        v = _assemble(problem, zero_w, x)
        df = -solve(mixed(w, f, v[None, :, :], *data)[0, :])
        Jv = k["columns"](w, f, v[None, :, :], df[None, :], *data)[0, :]
        g = k["w_pullback"](w, f, Jv, *data)
        if jacobian == "implicit":
            g = g - k["mixed_t"](w, f, solve(k["op_t"](w, f, Jv, None, None, *data)), *data)
        # Kaufman: J̃ v = P⊥J_w v is orthogonal to the range of J_f, so J̃ᵀJ̃ v = J_wᵀJ̃ v
        return _free(problem, g)

    H, _ = k["w_blocks"](w, f, *data)
    return LinearOperator(matvec=matvec, diagonal=_free(problem, xp.linalg.diagonal(H)))


def _block_diagonal(problem: SeparableProblem, H: Array) -> Array:
    """The (P, P) matrix with the free frames' (p, p) blocks of H (N, p, p) on its diagonal:
    J_wᵀJ_w from p forward products, instead of the P columns of J_w (whose vmap over P
    fine-grid forward models needs P times the memory of one)."""
    xp = problem.bk.xp
    blocks = xp.stack([H[k, :, :] for k in problem.free])  # (K, p, p)
    K, p = blocks.shape[0], blocks.shape[1]
    eye = xp.eye(K, dtype=H.dtype, device=array_api_compat.device(H))
    return xp.reshape(blocks[:, :, None, :] * eye[:, None, :, None], (K * p, K * p))


def _gram(J: Array) -> Array:
    """JᵀJ."""
    xp = array_api_compat.array_namespace(J)
    return xp.matrix_transpose(J) @ J


def _loop_result(problem, w, f, fun, history, it, nfev, status, message, inner_total, start):
    """The :class:`SeparableResult` of a hand-written outer loop (BCD, LAP, full GN)."""
    total = time.perf_counter() - start
    res = Result(
        x=_free(problem, w),
        fun=fun,
        grad_norm=history[-1].grad_norm,
        iterations=it,
        nfev=nfev,
        status=status,
        message=message,
        history=tuple(history),
        timings={"total": total},
    )
    return SeparableResult(
        w=w,
        f=f,
        result=res,
        inner_iterations=inner_total,
        jacobian_iterations=0,
        timings={"total": total},
    )


def bcd(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None = None,
    *,
    inner_rtol: float = 1e-8,
    inner_max_iter: int = 500,
    inner_solver: str = "cg",
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
    ls_max_trials: int = 10,
    callback: Callable | None = None,
    verbose: bool = False,
) -> SeparableResult:
    """Block coordinate descent (LAP's CoordDescent, arXiv:1705.09992 §3): per iteration, f by
    the inner solve (``inner_solver``) at the current w (warm-started), then one Gauss–Newton
    step in w at frozen f, frame by frame (p×p blocks, batched Cholesky) with Armijo
    backtracking on Φ.

    Inner tolerance. Each f-update reduces ‖∇_f Φ‖ to ``inner_rtol``·s with
    s = max(‖∇_f Φ(w, f_warm)‖, ``tol_g``(1 + |Φ_ref|)): relative to the residual that the
    w-step left at the warm start, which is what this block step has to remove, so that
    ∇_f Φ → 0 as the w-steps vanish (an inexact block method converges when each block step
    removes a fixed fraction of its block's gradient). A tolerance relative to ‖Aᵀr(w, 0)‖
    (the cold start's residual, the scale of the whole image) let a good f0 pass every test
    with 0 inner steps, so f never moved; the residual at the warm start alone collapses at
    a good start (it would ask for rounding noise), hence the second term, a fraction
    ``inner_rtol`` of what the outer gradient test accepts (Φ_ref = Jstop below; Φ at the start
    for the first solve), and a floor at the rounding level.

    Stops (``CONVERGED``) when the joint optimality rules hold: |ΔΦ| ≤ ``tol_j``(1 + |Jstop|),
    ‖Δw‖ ≤ ``tol_y``(1 + ‖w0‖), ‖Δf‖ ≤ ``tol_y``(1 + ‖f₁‖) and
    ‖(∇_w Φ, ∇_f Φ)‖ ≤ ``tol_g``(1 + |Jstop|) (Jstop, f₁: Φ and f after the first inner
    solve; the recorded gradient norm is the joint one), or after ``max_iter`` iterations (status
    ``MAX_ITERATIONS``); a failed line search gives ``LINE_SEARCH_FAILED``. Nothing is raised
    on non-convergence.
    """
    _check_tolerances(inner_rtol, inner_max_iter, "inner_rtol", "inner_max_iter")
    for name, value in (("tol_j", tol_j), ("tol_y", tol_y), ("tol_g", tol_g)):
        _check_tolerances(value, max_iter, name, "max_iter")
    if isinstance(ls_max_trials, bool) or not isinstance(ls_max_trials, int) or ls_max_trials < 1:
        raise ValueError(f"ls_max_trials must be an integer >= 1, got {ls_max_trials!r}")
    _checks.choice("inner_solver", inner_solver, INNER_SOLVERS)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None")
    w = problem.check_w(w0)
    f = problem.check_f(f0, w)
    bk, xp, k, data = problem.bk, problem.bk.xp, problem.kernels, problem.data
    eps = _eps(f)
    start = time.perf_counter()

    def solve_f(w, f, phi_ref):
        (r_warm,) = _host(bk, xp.linalg.vector_norm(k["grad_f"](w, f, *data)))
        scale = max(r_warm, tol_g * (1 + abs(phi_ref)))
        return _solve_linear(
            problem,
            w,
            f,
            target=lambda b_norm: max(inner_rtol * scale, _ROUNDING * eps * b_norm),
            max_iter=inner_max_iter,
            solver=inner_solver,
        )

    def norms(w, f):
        """The joint gradient norm ‖(∇_w Φ (free frames), ∇_f Φ)‖."""
        gw = _free(problem, k["grad_w"](w, f, *data))
        gf = k["grad_f"](w, f, *data)
        return _host(bk, xp.sqrt(xp.sum(gw * gw) + xp.sum(gf * gf)))[0]

    s = solve_f(w, f, problem.value(w, f))
    f, inner_total = s.f, s.iterations
    f_norm = _host(bk, xp.linalg.vector_norm(f))[0]
    fun = problem.value(w, f)
    j_stop = fun
    w_norm = float(np.linalg.norm(bk.to_numpy(w)))
    history = []
    status, message, it, nfev = Status.MAX_ITERATIONS, "", 0, 2

    def report(rec):
        history.append(rec)
        if verbose:
            print(
                f"bcd it={rec.iteration:3d} J={rec.fun:.6e} |dJ|={rec.grad_norm:.3e} "
                f"inner={rec.cg_iterations}"
            )
        if callback is not None:
            callback(rec)

    report(Record(0, fun, norms(w, f), 0.0, 0.0, s.iterations, 0.0))
    while it < max_iter:
        d = _block_step(problem, w, f, 0.0)
        g = k["grad_w"](w, f, *data)
        slope = _host(bk, xp.sum(g * d))[0]
        t, accepted = 1.0, False
        for _ in range(ls_max_trials):
            trial = w + t * d
            nfev += 1
            trial_fun = problem.value(trial, f)
            if trial_fun < fun + 1e-4 * t * slope:
                accepted = True
                break
            t /= 2
        if not accepted or not math.isfinite(slope):
            status, message = Status.LINE_SEARCH_FAILED, f"no decrease in w at iteration {it + 1}"
            break
        step_norm = t * _host(bk, xp.linalg.vector_norm(xp.reshape(d, (-1,))))[0]
        w = trial
        s = solve_f(w, f, j_stop)
        df_norm = _host(bk, xp.linalg.vector_norm(s.f - f))[0]
        f, inner_total = s.f, inner_total + s.iterations
        fun_old, fun = fun, problem.value(w, f)
        nfev += 1
        it += 1
        gn = norms(w, f)
        report(Record(it, fun, gn, step_norm, t, s.iterations, time.perf_counter() - start))
        if not (math.isfinite(fun) and math.isfinite(gn)):
            status = Status.NOT_FINITE
            message = f"Φ or its gradient is not finite at iteration {it}"
            break
        if (
            abs(fun_old - fun) <= tol_j * (1 + abs(j_stop))
            and step_norm <= tol_y * (1 + w_norm)
            and df_norm <= tol_y * (1 + f_norm)
            and gn <= tol_g * (1 + abs(j_stop))
        ):
            status, message = Status.CONVERGED, "stopping rules hold"
            break
    else:
        message = f"stopped at max_iter = {max_iter}"
    return _loop_result(
        problem, w, f, fun, history, it, nfev, status, f"bcd: {message}", inner_total, start
    )


# ------------------------------------------------------------- joint (w, f) Gauss–Newton


def _tri_lower(L: Array, b: Array) -> Array:
    """x with L[k] x[k] = b[k] (L lower triangular, (K, p, p); b (K, p)): forward substitution."""
    xp = array_api_compat.array_namespace(L, b)
    x = []
    for i in range(L.shape[-1]):
        s = b[:, i] - sum((L[:, i, j] * x[j] for j in range(i)), start=xp.zeros_like(b[:, i]))
        x.append(s / L[:, i, i])
    return xp.stack(x, axis=1)


def _tri_upper_t(L: Array, b: Array) -> Array:
    """x with L[k]ᵀ x[k] = b[k] (L lower triangular): back substitution."""
    xp = array_api_compat.array_namespace(L, b)
    p = L.shape[-1]
    x = [None] * p
    for i in reversed(range(p)):
        s = b[:, i] - sum(
            (L[:, j, i] * x[j] for j in range(i + 1, p)), start=xp.zeros_like(b[:, i])
        )
        x[i] = s / L[:, i, i]
    return xp.stack(x, axis=1)


def _fixed_mask(problem: SeparableProblem, like: Array) -> Array:
    xp = problem.bk.xp
    return xp.asarray(
        [k in problem.fixed for k in range(problem.n_frames)],
        dtype=xp.bool,
        device=array_api_compat.device(like),
    )


def _frame_factors(problem: SeparableProblem, Jb: Array) -> tuple[Array, Array, Array]:
    """The frame blocks J_k of J_w with the fixed frames' set to 0, G_k = J_kᵀJ_k (+ 1e-12 of
    its largest diagonal entry, so that a frame that sees nothing stays solvable; I for fixed
    frames) and the lower Cholesky factor L_k of G_k."""
    xp = problem.bk.xp
    fixed = _fixed_mask(problem, Jb)
    Jb = xp.where(fixed[:, None, None], 0.0, Jb)
    p = Jb.shape[2]
    eye = xp.eye(p, dtype=Jb.dtype, device=array_api_compat.device(Jb))
    G = xp.sum(Jb[:, :, :, None] * Jb[:, :, None, :], axis=1)
    scale = xp.max(xp.abs(xp.linalg.diagonal(G)), axis=1)
    G = G + (1e-12 * scale + xp.where(scale > 0, 0.0, 1.0))[:, None, None] * eye
    G = xp.where(fixed[:, None, None], eye, G)
    return Jb, G, xp.linalg.cholesky(G)


def _frame_basis(Jb: Array, L: Array) -> Array:
    """Q_k = J_k L_k⁻ᵀ (N, q, p): orthonormal columns spanning each frame's J_w block, so that
    P⊥ = I − Q_k Q_kᵀ = I − J_k G_k⁻¹ J_kᵀ (forward substitution over the p columns)."""
    xp = array_api_compat.array_namespace(Jb, L)
    Q = []
    for i in range(Jb.shape[2]):
        s = Jb[:, :, i] - sum(
            (L[:, i, j, None] * Q[j] for j in range(i)), start=xp.zeros_like(Jb[:, :, i])
        )
        Q.append(s / L[:, i, i, None])
    return xp.stack(Q, axis=2)


def _check_bounds(bounds: Any) -> tuple[float, float] | None:
    if bounds is None:
        return None
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"bounds must be None or a pair (lo, hi) of numbers, got {bounds!r}"
        ) from None
    if not lo < hi:
        raise ValueError(f"bounds must have lo < hi, got {bounds!r}")
    return lo, hi


def _lap_step(problem, w, f, lin, mask, solver, rtol, max_iter):
    """LAP's step (Herring, Nagy & Ruthotto 2018, §3): with r + J_w δw + A δf linearised at
    (w, f), δw_k = −G_k⁻¹ J_kᵀ (r_k + (A δf)_k) minimises over δw for any δf; substituted,
    δf solves min ‖P⊥(r + A δf)‖² + ‖L(f + δf)‖² (on the free image variables), by CG on its
    normal equations or by LSQR on the stacked projected system."""
    bk, xp, k, data = problem.bk, problem.bk.xp, problem.kernels, problem.data
    F, F0, Jb, _, _ = lin
    Jb, G, Lc = _frame_factors(problem, Jb)
    Q = _frame_basis(Jb, Lc)
    if solver == "cg":
        b = -k["op_t"](w, f, F, Q, mask, *data)
        df, it, _ = _pcg(
            bk,
            lambda u: k["normal_op"](w, u, Q, mask, *data),
            b,
            rtol=rtol,
            max_iter=max_iter,
        )
    else:

        def At(v):
            return k["op_t"](w, f, v, Q, mask, *data)

        b = -k["project"](F, Q)
        (scale,) = _host(bk, xp.linalg.vector_norm(At(b)))
        df, it, _ = _lsqr(
            bk,
            lambda u: k["op"](w, u, F0, Q, mask, *data),
            At,
            b,
            rtol=rtol,
            max_iter=max_iter,
            scale=scale,
        )
    if mask is not None:
        df = mask * df
    nd = Jb.shape[0] * Jb.shape[1]
    r_lin = xp.reshape(F[:nd] + k["op"](w, df, F0, None, None, *data)[:nd], Jb.shape[:2])
    dw = -cholesky_solve(G, xp.sum(Jb * r_lin[:, :, None], axis=1))
    return dw, df, it


def _full_step(problem, w, f, lin, mask, solver, rtol, max_iter, f_scale):
    """The joint Gauss–Newton step: JᵀJ [δw; δf] = −JᵀF with J = [J_w J_f], by CG
    preconditioned with the block diagonal diag(G_1 … G_N, s·I) (the exact p×p frame blocks
    of J_wᵀJ_w, Cholesky; s ≈ mean diagonal of J_fᵀJ_f), or by LSQR on J M⁻¹ with
    M = diag(L_1ᵀ … L_Nᵀ, √s·I) (the same scaling, applied to the columns)."""
    bk, xp, k, data = problem.bk, problem.bk.xp, problem.kernels, problem.data
    F, F0, Jb, gw, gf = lin
    Jb, G, Lc = _frame_factors(problem, Jb)
    gw = xp.where(_fixed_mask(problem, gw)[:, None], 0.0, gw)
    N, p = Jb.shape[0], Jb.shape[2]
    nw = N * p

    def split(z):
        return xp.reshape(z[:nw], (N, p)), z[nw:]

    if solver == "cg":

        def precond(z):
            zw, zf = split(z)
            return xp.concat([xp.reshape(cholesky_solve(G, zw), (-1,)), zf / f_scale])

        rhs = -xp.concat([xp.reshape(gw, (-1,)), gf if mask is None else mask * gf])
        z, it, _ = _pcg(
            bk,
            lambda z: k["joint_normal"](w, z, Jb, mask, *data),
            rhs,
            rtol=rtol,
            max_iter=max_iter,
            precond=precond,
        )
    else:
        root = math.sqrt(f_scale)

        def Minv(y):
            yw, yf = split(y)
            return xp.concat([xp.reshape(_tri_upper_t(Lc, yw), (-1,)), yf / root])

        def Minv_t(x):
            xw, xf = split(x)
            return xp.concat([xp.reshape(_tri_lower(Lc, xw), (-1,)), xf / root])

        def At(v):
            return Minv_t(k["joint_adjoint"](w, f, v, Jb, mask, *data))

        (scale,) = _host(bk, xp.linalg.vector_norm(At(F)))
        y, it, _ = _lsqr(
            bk,
            lambda y: k["joint_forward"](w, Minv(y), F0, Jb, mask, *data),
            At,
            -F,
            rtol=rtol,
            max_iter=max_iter,
            scale=scale,
        )
        z = Minv(y)
    dw, df = split(z)
    return dw, (df if mask is None else mask * df), it


def _mean_diagonal(problem: SeparableProblem, w: Array, f: Array, probes: int = 4) -> float:
    """trace(J_fᵀJ_f)/n_f by Hutchinson's estimator with fixed Rademacher probes (the same on
    every backend): the scale of the image block in :func:`full_gauss_newton`'s
    preconditioner (M. F. Hutchinson, Commun. Stat. Simul. Comput. 18 (1989) 1059–1076)."""
    bk, k = problem.bk, problem.kernels
    Z = np.random.default_rng(0).choice([-1.0, 1.0], size=(probes, problem.n_f))
    total = 0.0
    for z in Z:
        zb = bk.asarray(z, dtype=f.dtype, device=array_api_compat.device(f))
        total += _host(bk, bk.xp.sum(zb * k["normal_op"](w, zb, None, None, *problem.data)))[0]
    return max(total / (probes * problem.n_f), 1e-300)


def _joint(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None,
    name: str,
    step: Callable,
    *,
    bounds: Any,
    inner_solver: str,
    inner_rtol: float,
    inner_max_iter: int,
    max_iter: int,
    tol_j: float,
    tol_y: float,
    tol_g: float,
    ls_max_trials: int,
    callback: Callable | None,
    verbose: bool,
    setup: Callable | None = None,
) -> SeparableResult:
    """The outer loop of :func:`lap` and :func:`full_gauss_newton`: (projected) Gauss–Newton
    on (w, f) with Armijo backtracking, stopping rules as in :func:`bcd`."""
    _check_tolerances(inner_rtol, inner_max_iter, "inner_rtol", "inner_max_iter")
    _check_tolerances(tol_j, max_iter, "tol_j", "max_iter")
    _check_tolerances(tol_y, 0, "tol_y", "max_iter")
    _check_tolerances(tol_g, 0, "tol_g", "max_iter")
    if isinstance(ls_max_trials, bool) or not isinstance(ls_max_trials, int) or ls_max_trials < 1:
        raise ValueError(f"ls_max_trials must be an integer >= 1, got {ls_max_trials!r}")
    _checks.choice("inner_solver", inner_solver, INNER_SOLVERS)
    box = _check_bounds(bounds)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None")
    w = problem.check_w(w0)
    bk, xp, k, data = problem.bk, problem.bk.xp, problem.kernels, problem.data
    start = time.perf_counter()
    inner_total = 0
    if f0 is None:
        s = solve_linear(
            problem, w, None, rtol=inner_rtol, max_iter=inner_max_iter, solver=inner_solver
        )
        f, inner_total = s.f, s.iterations
    else:
        f = problem.check_f(f0, w)
    if box is not None:
        f = xp.clip(f, min=box[0], max=box[1])
    fixed = _fixed_mask(problem, w)
    if box is not None:
        width = box[1] - box[0]
        eps0 = 1e-3 * width if math.isfinite(width) else 1e-3
    context = None if setup is None else setup(w, f)
    fun = problem.value(w, f)
    j_stop = fun
    w_norm, f_norm = _host(
        bk, xp.stack([xp.linalg.vector_norm(xp.reshape(w, (-1,))), xp.linalg.vector_norm(f)])
    )
    history: list[Record] = []
    status, message, it, nfev = Status.MAX_ITERATIONS, "", 0, 1
    dw_norm = df_norm = t = 0.0
    fun_old, cg_its = fun, 0
    while True:
        F, F0, Jb, gw, gf = k["linearise"](w, f, *data)
        gw = xp.where(fixed[:, None], 0.0, gw)
        mask = None
        if box is not None:
            # Bertsekas' ε-active set: within ε of a bound, ε = min(ε0, ‖f − P(f − ∇_f Φ)‖∞),
            # so that variables about to hit a bound are frozen before the step is clipped
            eps = xp.minimum(xp.max(xp.abs(f - xp.clip(f - gf, min=box[0], max=box[1]))), eps0)
            active = ((f <= box[0] + eps) & (gf > 0)) | ((f >= box[1] - eps) & (gf < 0))
            mask = xp.where(active, 0.0, 1.0)
        g_free = gf if mask is None else mask * gf
        (grad_norm,) = _host(bk, xp.sqrt(xp.sum(gw * gw) + xp.sum(g_free * g_free)))
        rec = Record(
            it,
            fun,
            grad_norm,
            math.hypot(dw_norm, df_norm),
            t,
            cg_its,
            time.perf_counter() - start,
        )
        history.append(rec)
        if verbose:
            print(
                f"{name} it={it:3d} J={fun:.6e} |dJ|={grad_norm:.3e} "
                f"|dw|={dw_norm:.2e} |df|={df_norm:.2e} t={t:.3g} inner={cg_its}"
            )
        if callback is not None:
            callback(rec)
        if not (math.isfinite(fun) and math.isfinite(grad_norm)):
            status, message = (
                Status.NOT_FINITE,
                f"Φ or its gradient is not finite at iteration {it}",
            )
            break
        if grad_norm <= 1e6 * float(np.finfo(np.float64).eps):
            status, message = Status.CONVERGED, "gradient vanishes"
            break
        if (
            it > 0
            and abs(fun_old - fun) <= tol_j * (1 + abs(j_stop))
            and dw_norm <= tol_y * (1 + w_norm)
            and df_norm <= tol_y * (1 + f_norm)
            and grad_norm <= tol_g * (1 + abs(j_stop))
        ):
            status, message = Status.CONVERGED, "stopping rules hold"
            break
        if it >= max_iter:
            message = f"stopped at max_iter = {max_iter}"
            break
        lin = (F, F0, Jb, gw, gf)
        dw, df, cg_its = step(w, f, lin, mask, context)
        dw = xp.where(fixed[:, None], 0.0, dw)
        inner_total += cg_its
        t, accepted = 1.0, False
        for _ in range(ls_max_trials):
            w_t = w + t * dw
            f_t = f + t * df
            if box is not None:
                f_t = xp.clip(f_t, min=box[0], max=box[1])
            # projected Armijo (Bertsekas 1982): the slope along the projected path
            slope = xp.sum(gw * (w_t - w)) + xp.sum(gf * (f_t - f))
            trial_fun, trial_slope = _host(bk, xp.stack([k["value"](w_t, f_t, *data)[0], slope]))
            nfev += 1
            if (
                math.isfinite(trial_fun)
                and trial_slope < 0
                and trial_fun <= fun + 1e-4 * trial_slope
            ):
                accepted = True
                break
            t /= 2
        if not accepted:
            status = Status.LINE_SEARCH_FAILED
            message = f"no sufficient decrease along the step of iteration {it + 1}"
            t = 0.0
            break
        dw_norm, df_norm = _host(
            bk,
            xp.stack(
                [xp.linalg.vector_norm(xp.reshape(w_t - w, (-1,))), xp.linalg.vector_norm(f_t - f)]
            ),
        )
        w, f, fun_old, fun = w_t, f_t, fun, trial_fun
        it += 1
    return _loop_result(
        problem, w, f, fun, history, it, nfev, status, f"{name}: {message}", inner_total, start
    )


def lap(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None = None,
    *,
    bounds: tuple[float, float] | None = None,
    inner_solver: str = "cg",
    inner_rtol: float = 1e-3,
    inner_max_iter: int = 200,
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
    ls_max_trials: int = 10,
    callback: Callable | None = None,
    verbose: bool = False,
) -> SeparableResult:
    """LAP, linearise and project (J. L. Herring, J. G. Nagy and L. Ruthotto,
    arXiv:1705.09992, §3): Gauss–Newton on the joint (w, f) where each step eliminates δw.

    At (w, f) the residual is linearised, F + J_w δw + J_f δf. For any δf the best δw is, frame
    by frame, δw_k = −G_k⁻¹J_kᵀ(r_k + (A δf)_k) with G_k = J_kᵀJ_k (p×p, batched Cholesky);
    substituted, δf solves the projected regularised least squares
    min ‖P⊥(r + A δf)‖² + ‖L(f + δf)‖², P⊥ = I − J_k G_k⁻¹ J_kᵀ applied blockwise, matrix-free
    by CG on its normal equations or LSQR (``inner_solver``) from δf = 0 to the relative
    normal-equation residual ``inner_rtol`` (at most ``inner_max_iter`` steps: an inexact
    Gauss–Newton step); then δw is recovered and an Armijo search (c = 1e-4, halving,
    ``ls_max_trials``) runs on the joint step. The step is the exact joint Gauss–Newton step
    (the Schur complement of the block-diagonal w part), computed on a smaller, better
    conditioned system than :func:`full_gauss_newton`'s.

    ``bounds=(lo, hi)`` on f: projected Gauss–Newton as LAP does for f ∈ [0, 1]: f0 is
    projected onto the box; image variables at a bound whose gradient points out of the box
    are frozen (the active set) and the step is computed on the rest; trial points are
    projected onto the box and the Armijo test uses the slope along the projected path
    (Bertsekas, SIAM J. Control Optim. 20 (1982) 221–246).

    ``f0=None``: the inner solution at ``w0`` (:func:`solve_linear`). Stopping as in
    :func:`bcd`: |ΔΦ| ≤ ``tol_j``(1 + Φ0), ‖Δw‖ ≤ ``tol_y``(1 + ‖w0‖) and ‖Δf‖ ≤
    ``tol_y``(1 + ‖f0‖) (each block against its own scale, not LAP's joint one that the image
    dominates), ‖(∇_w Φ, ∇_f Φ)‖ (projected) ≤ ``tol_g``(1 + Φ0); statuses ``MAX_ITERATIONS``,
    ``LINE_SEARCH_FAILED``, ``NOT_FINITE`` are reported, never raised. ``inner_iterations`` of
    the result counts every CG/LSQR step (the first inner solve included).
    """

    def step(w, f, lin, mask, context):
        return _lap_step(problem, w, f, lin, mask, inner_solver, inner_rtol, inner_max_iter)

    return _joint(
        problem,
        w0,
        f0,
        "lap",
        step,
        bounds=bounds,
        inner_solver=inner_solver,
        inner_rtol=inner_rtol,
        inner_max_iter=inner_max_iter,
        max_iter=max_iter,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        ls_max_trials=ls_max_trials,
        callback=callback,
        verbose=verbose,
    )


def full_gauss_newton(
    problem: SeparableProblem,
    w0: Array,
    f0: Array | None = None,
    *,
    bounds: tuple[float, float] | None = None,
    inner_solver: str = "cg",
    inner_rtol: float = 1e-3,
    inner_max_iter: int = 500,
    max_iter: int = 20,
    tol_j: float = 1e-6,
    tol_y: float = 1e-4,
    tol_g: float = 1e-4,
    ls_max_trials: int = 10,
    callback: Callable | None = None,
    verbose: bool = False,
) -> SeparableResult:
    """Gauss–Newton on the joint (w, f) (LAP's FULL, arXiv:1705.09992 §3; Nocedal & Wright,
    2nd ed., §10.3): each step solves [J_w J_f]ᵀ[J_w J_f] [δw; δf] = −[J_w J_f]ᵀF matrix-free.

    The joint system is solved as a whole, by CG (``inner_solver="cg"``) preconditioned with
    its block diagonal diag(G_1 … G_N, s·I) — the exact p×p frame blocks G_k = J_kᵀJ_k of the
    w part (batched Cholesky) and s·I for the image part, s = trace(J_fᵀJ_f)/n_f estimated
    once at the start by Hutchinson's estimator — or by LSQR on the stacked system with the
    same scaling on the columns (``"lsqr"``). The Schur complement, eliminating the w blocks
    exactly, is deliberately not used: it gives LAP's projected system, so :func:`lap` is that
    variant; here the coupled system is kept, which is the comparison LAP's paper makes (the
    joint system is the worse conditioned one). ``bounds``, Armijo, stopping rules, statuses
    and ``f0=None`` as in :func:`lap`; ``inner_rtol`` is the relative residual of the joint
    (preconditioned, for LSQR) normal equations.
    """

    def setup(w, f):
        return _mean_diagonal(problem, w, f)

    def step(w, f, lin, mask, f_scale):
        return _full_step(
            problem, w, f, lin, mask, inner_solver, inner_rtol, inner_max_iter, f_scale
        )

    return _joint(
        problem,
        w0,
        f0,
        "full",
        step,
        bounds=bounds,
        inner_solver=inner_solver,
        inner_rtol=inner_rtol,
        inner_max_iter=inner_max_iter,
        max_iter=max_iter,
        tol_j=tol_j,
        tol_y=tol_y,
        tol_g=tol_g,
        ls_max_trials=ls_max_trials,
        callback=callback,
        verbose=verbose,
        setup=setup,
    )
