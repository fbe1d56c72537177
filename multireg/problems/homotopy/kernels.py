"""The compiled kernels of J(w, θ) (built once per backend, transformation, distance and domain;
images, grid and θ are arguments), the map metric M, λ_min, and θ_max from the data.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import array_api_compat
import numpy as np

from multireg.distances import Distance
from multireg.grid import Domain
from multireg.interpolation import spline_coefficients, spline_interpolate
from multireg.optimize.kernels import scalar
from multireg.problems._registration_kernels import _hyper_arrays, _split_data, _with_fields
from multireg.problems.homotopy.results import ThetaChoice
from multireg.transforms import Transform

# θ_max from the data: the least determined direction may keep no less than this fraction of its
# information at θ_min (module docstring); grid of half decades from θ_min up to _THETA_CAP.
THETA_INFORMATION = 1e-3
_THETA_CAP = 1e6
_THETA_FALLBACK = 1e3
THETA_MIN = 1e-3


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


# ---------------------------------------------------------------------------------- kernels


# the kernels that evaluate the distance take its hyper-parameters as their first argument
_WITH_DISTANCE = (
    "J", "value_and_grad", "hessian", "value_grad_hessian", "hvp", "gn_matrix", "gn_matvec",
    "mixed",
)  # fmt: skip


def _kernels(bk: Any, trafo: Transform, dist: Distance, domain: Domain, like: Any = None) -> dict:
    """Compiled kernels of J(w, θ) for one configuration; data, grid and θ are arguments.

    At a fixed θ the corrector works on ``(cT, Rc, x)``: T's spline coefficients and R_θ at the
    cell centres, computed once per θ by ``images``. ``mixed`` rebuilds both from θ so that the
    derivative in θ passes through both coefficient solves.

    The distance's hyper-parameters (NGF's edge, MI's ranges) are data, as in ``register``
    (issue 13.2): the programs are compiled per distance *structure* and the values are bound
    here as 0-d arrays of ``like``'s dtype (float64 without ``like``), so another edge compiles
    nothing new.
    """
    structure, values = _split_data(dist)
    kernels = _compiled(bk, trafo, structure, domain)
    if like is None:
        dtype, device = bk.xp.float64, None
    else:
        dtype, device = like.dtype, array_api_compat.device(like)
    data = _hyper_arrays(bk.xp, values, dtype, device)
    return {
        name: functools.partial(kernel, data) if name in _WITH_DISTANCE else kernel
        for name, kernel in kernels.items()
    }


@functools.lru_cache(maxsize=32)
def _compiled(bk: Any, trafo: Transform, structure: Distance, domain: Domain) -> dict:
    """The programs of :func:`_kernels`; those in ``_WITH_DISTANCE`` take the distance's
    hyper-parameter values ``dv`` first."""
    xp = bk.xp
    h = domain.h

    def images(theta, T, R, x):
        cT = spline_coefficients(T, theta)
        Rc = xp.reshape(spline_interpolate(spline_coefficients(R, theta), domain, x), domain.m)
        return cT, Rc

    def warped(w, cT, x):
        return xp.reshape(spline_interpolate(cT, domain, trafo(w, x)), domain.m)

    def distance(dv):
        return _with_fields(structure, dv)

    def residual(dv, w, cT, Rc, x):
        return distance(dv).residual(warped(w, cT, x), Rc, domain)

    def J(dv, w, cT, Rc, x):
        return distance(dv)(warped(w, cT, x), Rc, domain)

    def value_and_grad(dv, w, cT, Rc, x):
        return bk.value_and_grad(lambda v: J(dv, v, cT, Rc, x))(w)

    def hessian(dv, w, cT, Rc, x):
        return bk.hessian(lambda v: J(dv, v, cT, Rc, x))(w)

    def value_grad_hessian(dv, w, cT, Rc, x):
        """J, ∇J and ∇²J, what a Newton iteration needs at its iterate, from one evaluation of
        J and ∇J: the Hessian's rows are pullbacks of [J, ∇J] (reverse over reverse), whose
        forward pass gives J and ∇J themselves (on torch 30 % less than ``value_and_grad`` and
        ``hessian`` apart, the same numbers)."""

        def value_and_grad_stacked(v):
            fun, grad = bk.value_and_grad(lambda u: J(dv, u, cT, Rc, x))(v)
            return xp.concat([xp.reshape(fun, (1,)), grad])

        out, pullback = bk.vjp(value_and_grad_stacked, w)
        n = w.shape[0]
        rows = xp.eye(n + 1, dtype=w.dtype, device=array_api_compat.device(w))[1:, :]
        return out[0], out[1:], bk.vmap(pullback)(rows)

    def hvp(dv, w, v, cT, Rc, x):
        return bk.hvp(lambda u: J(dv, u, cT, Rc, x), w, v)

    def gn_matrix(dv, w, cT, Rc, x):
        """J_rᵀ W J_r (for SSD hd·J_rᵀJ_r, the Hessian of ½·hd·‖r‖² without r's curvature)."""
        r = residual(dv, w, cT, Rc, x)
        Jr = bk.jacobian(lambda v: residual(dv, v, cT, Rc, x))(w)
        W = distance(dv).gn_weight(r, Rc, domain)
        return Jr.T @ ((W[:, None] if W.ndim else W) * Jr)

    def gn_matvec(dv, w, v, cT, Rc, x):
        r, jv = bk.jvp(lambda u: residual(dv, u, cT, Rc, x), w, v)
        _, pullback = bk.vjp(lambda u: residual(dv, u, cT, Rc, x), w)
        return pullback(distance(dv).gn_weight(r, Rc, domain) * jv)

    def mixed(dv, w, theta, T, R, x):
        """∂_s ∇_w J = ∇_w (θ·∂θ J) at (w, θ), s = log θ: the gradient in w of the derivative
        in θ (reverse over reverse, two passes; forward mode in torch is slow, see its adapter)."""

        def scale_derivative(v):
            def J_theta(t):
                cT, Rc = images(t, T, R, x)
                return J(dv, v, cT, Rc, x)

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
