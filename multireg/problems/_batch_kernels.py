"""The compiled kernels of :func:`multireg.problems.batch.register_batch`: ``register``'s
parametric level functions (J, ∇J, the Gauss–Newton matrix, the line search's trial values, the
level data) for many same-shape pairs at once, axis 0 indexing the pairs.

Internal API of ``batch``: :func:`kernels` (one level's functions, cached) and :func:`prepare`
(one pair's data on every level, cached).
"""

from __future__ import annotations

import math

import array_api_compat

from multireg import _bspline
from multireg.grid import Domain, pyramid_domains, restrict

__all__ = ["RETRACING", "kernels", "prepare"]

RETRACING = ("jax",)
"""Backends whose compiled kernels are traced once per input shape: there the pairs still
iterating are padded to a power of 4 (or all pairs), so that a level compiles each kernel for
at most log4(pairs) + 2 sizes while a straggler costs at most 4× its own work."""
CHUNK_POINTS = {"jax": 2**18, "torch": 2**16}
"""The kernels take the pairs in chunks of at most this many points per backend (a power of 4
of pairs: on JAX 16 pairs at 128², 1 at 64³; on torch 4 pairs at 128²): per pair, 64 pairs at
128² in one call ran 2-5× slower than 16 (XLA's CPU code and torch alike, the stencil's and the
Jacobians' arrays no longer in cache), and a chunk bounds the memory of a large batch. torch's
eager operations, each a pass over the chunk, ran faster in chunks of 4 pairs than of 16
(64 pairs at 128², 1 thread, alternated runs: 1.17-1.80 s against 1.69-2.68 s); XLA's fused
code did not (0.44-0.75 s against 0.43-0.66 s). Other backends take JAX's."""


def device_of(x):
    return array_api_compat.device(x)


def _weight_slopes(t):
    """d/dt of :func:`multireg._bspline.weights` (the four B-spline weights b(t − o))."""
    u = 1.0 - t
    d0, d3 = -3.0 * u * u, 3.0 * t * t
    d1 = t * (9.0 * t - 12.0)
    return (d0, d1, -(d0 + d1 + d3), d3)


def spline_values(xp, coef, domain: Domain, Y, *, gradient: bool = False):
    """The cubic B-spline of each pair's coefficients at that pair's points: coef (pairs, *m),
    Y (pairs, n, d) in domain units; returns T (pairs, n), or with ``gradient`` [T, ∇T] as one
    array (pairs, n, 1 + d) (∇T: the derivative with respect to the points).

    :func:`multireg._bspline.evaluate` (FAIR §3.4) with the pairs' zero-padded coefficients laid
    end to end in one flat array and each pair's stencil indices offset by its block: every
    stencil entry is one plain gather of pairs·n values. Mapping the single-pair evaluation
    with vmap instead turns each gather into a batched gather, which XLA's CPU code ran about
    5× slower per pair (and torch 3×) at 128². The gradient is the same stencil sum with the
    weights' derivatives on one axis (FAIR's splineInter.m forms dT likewise): each gathered
    value serves T and all d derivatives, where the pullback of the value sum (reverse mode)
    ran 8-15× slower than the values alone in XLA's CPU code (128², 1 to 64 pairs); and one
    stacked result, not d + 1 arrays: XLA's CPU code for the d + 1 outputs apart ran 3-4×
    slower at 16 and 64 pairs (each output recomputing the gathers).
    """
    pairs, m, d = coef.shape[0], domain.m, domain.dim
    device = device_of(coef)
    itype = _bspline.index_dtype(xp, Y)
    h = xp.asarray(domain.h, dtype=Y.dtype, device=device)
    shift = xp.asarray(
        [a / hk + 0.5 for a, hk in zip(domain.lower, domain.h, strict=True)],
        dtype=Y.dtype, device=device,
    )  # fmt: skip
    xi = Y / h - shift  # index coordinates: cell centres at 0 .. m_k − 1
    padded = coef
    for k in range(1, d + 1):
        shape = list(padded.shape)
        parts = []
        for size in (_bspline.PAD_LOW, _bspline.PAD_HIGH):
            shape[k] = size
            parts.append(xp.zeros(tuple(shape), dtype=coef.dtype, device=device))
        padded = xp.concat([parts[0], padded, parts[1]], axis=k)
    flat = xp.reshape(padded, (-1,))
    strides = [math.prod(padded.shape[k + 2 :]) for k in range(d)]
    block = math.prod(padded.shape[1:])
    n = xi.shape[1]
    # one flat list of points (pairs·n): gathers with a 2-D index, and reductions of their
    # (pairs, n) results, compiled to code ~10× slower per pair in XLA (CPU)
    xi = xp.reshape(xi, (pairs * n, d))
    corner = xp.reshape(
        xp.broadcast_to(
            xp.reshape(xp.arange(pairs, dtype=itype, device=device) * block, (pairs, 1)),
            (pairs, n),
        ),
        (-1,),
    )
    weight, slope = [], []
    for k in range(d):
        lo, hi = -2.0, float(m[k] + 1)
        s = xp.clip(xi[:, k], lo, hi)
        p = xp.floor(s)
        p_int = xp.clip(xp.astype(p, itype), -2, m[k] + 1)
        corner = corner + (p_int + (_bspline.PAD_LOW - 1)) * strides[k]
        weight.append(_bspline.weights(s - p))
        if gradient:
            # outside (−2, m_k + 1) the spline is 0 (the clip's derivative); b'(±2) = 0 on it
            slope.append(_weight_slopes(s - p))

    def axis_sum(k: int, at0: int):
        """The stencil summed over axes k..d−1: [T, ∂T/∂ξ_k, …, ∂T/∂ξ_{d−1}] (ξ: index
        coordinates), or [T]. An axis's weight slopes enter only its own derivative, so each
        partial sum is formed once (a derivative along a later axis reuses the inner sums)."""
        totals = None
        for o in range(4):
            at = at0 + o * strides[k]
            inner = [_bspline.gather(xp, flat[at:], corner)] if k == d - 1 else axis_sum(k + 1, at)
            w = weight[k][o]
            terms = [w * inner[0]]
            if gradient:
                terms += [slope[k][o] * inner[0]] + [w * v for v in inner[1:]]
            if totals is None:
                totals = terms
            else:
                totals = [a + b for a, b in zip(totals, terms, strict=True)]
        return totals

    sums = axis_sum(0, 0)
    if not gradient:
        return xp.reshape(sums[0], (pairs, n))
    inside = [
        xp.astype((xi[:, k] > -2.0) & (xi[:, k] < float(m[k] + 1)), xi.dtype) / domain.h[k]
        for k in range(d)
    ]
    parts = [sums[0]] + [sums[k + 1] * inside[k] for k in range(d)]
    return xp.reshape(xp.stack(parts, axis=1), (pairs, n, 1 + d))


_KERNELS: dict = {}


def kernels(bk, trafo, model, dist, domain) -> dict:
    """``register``'s parametric level functions for all pairs at once (axis 0 of w, of the
    template coefficients and of the references), compiled. The spline is evaluated by
    :func:`spline_values`; the per-pair rest (map, distance, Jacobians) is the single-pair code
    under ``vmap``. Keyed by everything they depend on."""
    key = (bk, trafo, model, dist, domain)
    if key in _KERNELS:
        return _KERNELS[key]
    xp, vmap = bk.xp, bk.vmap

    def points(W, x):
        return vmap(lambda w: trafo(w, x))(W)

    def values(coef, Y):
        if model.kind == "spline":
            return spline_values(xp, coef, domain, Y)
        return vmap(lambda c, y: model.evaluate(c, domain, y))(coef, Y)

    def warped(W, coef, x):
        return xp.reshape(values(coef, points(W, x)), (W.shape[0], *domain.m))

    def image_and_gradient(Y, coef):
        """[T(Y), ∇T(Y)] (pairs, n, 1 + d), ∇T pointwise: T(y_i) depends on y_i only."""
        if model.kind == "spline":
            return spline_values(xp, coef, domain, Y, gradient=True)
        Tc, pullback = bk.vjp(lambda U: values(coef, U), Y)
        return xp.concat([Tc[..., None], pullback(xp.ones_like(Tc))], axis=-1)

    def distance(T, Rc):
        """J per pair of the pairs' warped templates T (pairs, n)."""
        return vmap(lambda t, r: dist(xp.reshape(t, domain.m), r, domain))(T, Rc)

    def distance_and_gradient(TdT, Rc):
        """J per pair and ∂J/∂T (the pairs are independent: one pullback gives all)."""
        fun, pullback = bk.vjp(lambda U: distance(U, Rc), TdT[..., 0])
        return fun, pullback(xp.ones_like(fun))

    def chain(W, dJ, TdT, fun, x):
        """∇J = (∂Y/∂w)ᵀ (∂J/∂T ∇T), and [J, ‖∇J‖] per pair."""
        _, pullback = bk.vjp(lambda V: points(V, x), W)
        grad = pullback(dJ[..., None] * TdT[..., 1:])
        return grad, xp.stack([fun, xp.linalg.vector_norm(grad, axis=1)], axis=1)

    def image_jacobian(w, TdT, x):
        """J_T = dT · dy (n, p), as ``register`` forms it (dy: (n, d, p), no interpolation)."""
        dy = bk.jacobian(lambda v: trafo(v, x))(w)
        return sum(TdT[:, k + 1, None] * dy[:, k, :] for k in range(domain.dim))

    def gn_rest(JT, TdT, Rc):
        """J_rᵀ W J_r with J_r = dr · J_T (FAIR book §6.3), as ``register`` forms it."""
        T0 = xp.reshape(TdT[:, 0], domain.m)
        zero = xp.zeros(JT.shape[1], dtype=JT.dtype, device=device_of(JT))
        Jr = bk.jacobian(lambda t: dist.residual(T0 + xp.reshape(JT @ t, domain.m), Rc, domain))(
            zero
        )
        Wt = dist.gn_weight(dist.residual(T0, Rc, domain), Rc, domain)
        return Jr.T @ ((Wt[:, None] if Wt.ndim else Wt) * Jr)

    def solve(H, grad):
        """d with H d = −∇J, and [∇Jᵀd, ‖d‖]."""
        d = xp.linalg.solve(H, -grad[:, None])[:, 0]
        return d, xp.stack([xp.vecdot(grad, d), xp.linalg.vector_norm(d)])

    def step(W, t, D, x):
        """An Armijo trial's parameters w + t d and points."""
        W_t = W + t * D
        return W_t, points(W_t, x)

    def scale(Rc):
        """[D(0, R), D(R, R)]: the magnitude of the distance's terms (``register``'s j_scale)."""
        return xp.stack([dist(xp.zeros_like(Rc), Rc, domain), dist(Rc, Rc, domain)])

    # The interpolation (gathers over all pairs' points) is one compiled program and the
    # distance (its sums over each pair's points) another: XLA's CPU code for a per-pair
    # reduction fused behind the batched gathers ran 10-40× slower per pair than the two apart
    # (128², 16 and 64 pairs; so did vmap of the single-pair code and unrolled per-pair sums).
    jit = bk.jit
    points_k, values_k, image_k = jit(points), jit(values), jit(image_and_gradient)
    distance_k, dist_vg_k = jit(distance), jit(distance_and_gradient)
    chain_k, step_k = jit(chain), jit(step)
    # J_T apart from J_r and JᵀWJ: fused, XLA's CPU code ran ~3× slower than the two programs
    jacobian_k = jit(vmap(image_jacobian, in_axes=(0, 0, None)))
    rest_k = jit(vmap(gn_rest))

    def J(W, coef, Rc, x):
        return distance_k(values_k(coef, points_k(W, x)), Rc)

    def value_and_norm(W, coef, Rc, x):
        TdT = image_k(points_k(W, x), coef)
        fun, dJ = dist_vg_k(TdT, Rc)
        return chain_k(W, dJ, TdT, fun, x)

    def gn_matrix(W, coef, Rc, x):
        TdT = image_k(points_k(W, x), coef)
        return rest_k(jacobian_k(W, TdT, x), TdT, Rc)

    def trial(W, t, D, coef, Rc, x):
        W_t, Y = step_k(W, t, D, x)
        return W_t, distance_k(values_k(coef, Y), Rc)

    chunk = 1
    while chunk * 4 * domain.n <= CHUNK_POINTS.get(bk.name, CHUNK_POINTS["jax"]):
        chunk *= 4
    chunked = _chunked(xp, chunk, pad=bk.name in RETRACING)
    out = dict(
        J=chunked(J, 3),
        value_and_norm=chunked(value_and_norm, 3),
        gn_matrix=chunked(gn_matrix, 3),
        solve=jit(vmap(solve)),
        solve_one=jit(solve),
        trial=chunked(trial, 5),
        warped=chunked(jit(warped), 2),
        transform=chunked(points_k, 1),
        scale=jit(vmap(scale)),
    )
    _KERNELS[key] = out
    return out


def _chunked(xp, chunk: int, pad: bool):
    """``f(*batched, *shared)`` (the first ``count`` arguments with the pairs on axis 0) applied
    to at most ``chunk`` pairs at a time, the results joined; with ``pad`` a short last chunk is
    padded to a power of 4 (repeating its last pair; the copies' results are dropped), so that
    a retracing backend sees no new sizes."""

    def wrap(f, count: int):
        def chunked(*args):
            pairs = args[0].shape[0]
            if pairs <= chunk:
                return f(*args)
            parts = []
            for lo in range(0, pairs, chunk):
                size = min(chunk, pairs - lo)
                rows = list(range(lo, lo + size))
                if pad:
                    full = 1
                    while full < size:
                        full *= 4
                    rows += [rows[-1]] * (full - size)
                if len(rows) == size:
                    batched = [a[lo : lo + size] for a in args[:count]]
                else:
                    index = xp.asarray(rows, device=device_of(args[0]))
                    batched = [xp.take(a, index, axis=0) for a in args[:count]]
                out = f(*batched, *args[count:])
                parts.append(out if isinstance(out, tuple) else (out,))
            joined = tuple(
                xp.concat([p[k][: min(chunk, pairs - i * chunk)] for i, p in enumerate(parts)])
                for k in range(len(parts[0]))
            )
            return joined if isinstance(out, tuple) else joined[0]

        return chunked

    return wrap


_PREPARE: dict = {}


def prepare(bk, model, domain: Domain, selected: tuple[Domain, ...], reference: bool):
    """One pair's data on every selected level, in one compiled call: the image averaged down
    the pyramid as :func:`multireg.grid.multilevel` does (each level from the next finer one),
    then the template's coefficients, or the reference as the distance sees it (smoothed with
    the spline's theta, FAIR). Per pair, not mapped: torch's vmap has no rule for the
    ``moveaxis`` of the restriction and the coefficient solve."""
    key = (bk, model, domain, selected, reference)
    if key in _PREPARE:
        return _PREPARE[key]
    xp = bk.xp
    chain = pyramid_domains(domain, min_size=1)[::-1]  # finest first
    chain = chain[: chain.index(selected[0]) + 1]

    def one(image):
        out = {}
        for k, d in enumerate(chain):
            if d in selected:
                if not reference:
                    out[d] = model.coefficients(image)
                elif model.kind == "spline" and model.theta != 0:  # FAIR smooths R likewise
                    x = d.cell_centers(xp, dtype=image.dtype, device=device_of(image))
                    out[d] = xp.reshape(model.evaluate(model.coefficients(image), d, x), d.m)
                else:
                    out[d] = image
            if k + 1 < len(chain):
                image = restrict(image, d, chain[k + 1])
        return tuple(out[d] for d in selected)

    _PREPARE[key] = bk.jit(one)
    return _PREPARE[key]
