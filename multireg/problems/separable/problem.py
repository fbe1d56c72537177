"""The separable problem: its definition, its compiled kernels, its result and its parameters.

:class:`SeparableProblem` holds the residual r(w, f), the regulariser L f, the data and the free
frames; ``_kernels`` compiles the derivatives every method uses (once per backend, residual and
regulariser). :func:`assemble_parameters` and :func:`free_parameters` map between the full (N, p)
parameters and the vector of the free frames' parameters: the internal API of the problems built
on the engine (:mod:`multireg.problems.dynamics`, :mod:`multireg.problems.superres`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from multireg.optimize import Result, Status

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


def assemble_parameters(problem: SeparableProblem, w_fixed: Array, x: Array) -> Array:
    """The full (N, p) parameters from the fixed frames' values and the free vector x."""
    xp = problem.bk.xp
    free = problem.free
    X = xp.reshape(x, (len(free), problem.n_params))
    rows = []
    for k in range(problem.n_frames):
        rows.append(X[free.index(k), :] if k in free else w_fixed[k, :])
    return xp.stack(rows)


def free_parameters(problem: SeparableProblem, w: Array) -> Array:
    """The free frames' rows of the (N, p) parameters w as one vector: the outer optimisers'
    unknowns (the inverse of :func:`assemble_parameters` on the free frames)."""
    xp = problem.bk.xp
    return xp.reshape(xp.stack([w[k, :] for k in problem.free]), (-1,))
