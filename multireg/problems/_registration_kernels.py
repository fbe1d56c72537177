"""The compiled programs of :func:`multireg.problems.registration.register`: the kernels of a
registration, built once per configuration and cached, with the data as arguments.

Every kernel an optimiser calls is built once per configuration and compiled by the backend (a
``jax.jit`` cache keyed by the backend, the domain and the *kinds* of transformation, image
model, distance and regulariser), with the data passed as arguments. The hyper-parameters (α,
μ, λ, the image model's θ, NGF's edge, MI's ranges) are data too (issue 13): a second
registration of the same shapes with other values runs warm, compiling nothing. Per level there
is one set-up program (the level's data, J at the identity and the distance's scale), the
optimiser's kernels, and one program for the image pyramid of the whole registration.

Internal API (used by :mod:`multireg.problems.registration`, the level drivers):
:class:`Problem` (the registration's configuration split into a cache key and its data),
:func:`compiled` (the compile cache), :func:`image_pyramid`, :func:`parametric_kernels` and
:func:`parametric_objective`, :func:`nonparametric_kernels` and :func:`nonparametric_objective`,
:func:`j_scale_of` (the distance's scale from the set-up values) and :func:`device_of`.

References: J. Modersitzki, *FAIR*, SIAM 2009: the parametric objective (§6, PIRobjFctn.m), the
nonparametric one (§9, NPIRobjFctn.m); the pyramid is :func:`multireg.multilevel`'s.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from multireg import _cache, gridops, optimize
from multireg._dtypes import float_dtype_name
from multireg.grid import Domain, Level, multilevel
from multireg.interpolation import ImageModel
from multireg.optimize import LinearOperator, Objective
from multireg.regularizers import Regularizer

# ------------------------------------------------------------------ hyper-parameters as data


class _DataSlot:
    """What a hyper-parameter's field holds in a kernel's cache key: its value is an argument."""

    def __repr__(self) -> str:
        return "<data>"


_SLOT = _DataSlot()


def _data_fields() -> dict:
    """The fields of each class that the kernels take as data, by class. Only classes checked
    to use these fields in arithmetic alone (no Python branch on their value, which a traced
    value cannot take) are listed; a field that is None (a default computed from the data)
    stays part of the structure. Any other object keys the kernels whole, as before."""
    from multireg import distances
    from multireg.regularizers import Curvature, Diffusive, Elastic

    table = {
        ImageModel: ("theta",),
        Elastic: ("alpha", "mu", "lam"),
        Diffusive: ("alpha",),
        Curvature: ("alpha",),
        distances.NGF: ("edge",),
        distances.MI: ("range_T", "range_R"),
    }
    gauss_newton_mi = getattr(distances, "MIGaussNewton", None)
    if gauss_newton_mi is not None:
        table[gauss_newton_mi] = ("range_T", "range_R")
    return table


def _with_fields(obj: Any, values: dict) -> Any:
    """A copy of the frozen dataclass ``obj`` with ``values`` set and no validation: the values
    may be traced arrays, which ``__post_init__``'s checks (made on the host, once) cannot read."""
    if not values:
        return obj
    out = copy.copy(obj)
    for name, value in values.items():
        object.__setattr__(out, name, value)
    return out


def _split_data(obj: Any) -> tuple[Any, dict]:
    """(structure, values): ``obj`` with its hyper-parameters replaced by a slot (the cache key
    of its kernels) and those values (floats, or pairs of floats), by field name."""
    if obj is None:
        return None, {}
    names = _data_fields().get(type(obj), ())
    values = {n: getattr(obj, n) for n in names if getattr(obj, n) is not None}
    return _with_fields(obj, dict.fromkeys(values, _SLOT)), values


def _hyper_arrays(xp: Any, values: dict, dtype: Any, device: Any, bk: Any = None) -> dict:
    """The values of :func:`_split_data` as 0-d arrays of the computation's dtype (a float64
    value would promote a float32 computation). Given the backend ``bk``, made on the host and
    copied over (``bk.asarray``): converting a Python number with JAX's ``asarray`` is a
    compiled program of its own (one more for every new process to load or compile)."""
    host_dtype = float_dtype_name(dtype)

    def array(v):
        if isinstance(v, tuple):
            return tuple(array(e) for e in v)
        if bk is not None:
            return bk.asarray(np.asarray(v, dtype=host_dtype), device=device)
        return xp.asarray(v, dtype=dtype, device=device)

    return {name: array(v) for name, v in values.items()}


@dataclass(frozen=True)
class Problem:
    """The model, distance and regulariser as structures (hashable: the kernels' cache key)
    and their hyper-parameters as arrays (``hyper``: a pytree, passed to every kernel)."""

    model: ImageModel
    dist: Any
    reg: Any
    hyper: dict = field(compare=False, hash=False)

    @staticmethod
    def of(bk, model, dist, reg, dtype, device) -> Problem:
        parts = [_split_data(o) for o in (model, dist, reg)]
        hyper = {
            key: _hyper_arrays(bk.xp, values, dtype, device, bk)
            for key, (_, values) in zip(("model", "dist", "reg"), parts, strict=True)
        }
        return Problem(*(s for s, _ in parts), hyper=hyper)

    def bind(self, hyper: dict) -> tuple[Any, Any, Any]:
        """Model, distance and regulariser with the (traced) values ``hyper``."""
        return (
            _with_fields(self.model, hyper["model"]),
            _with_fields(self.dist, hyper["dist"]),
            _with_fields(self.reg, hyper["reg"]),
        )


@functools.lru_cache(maxsize=64)
def compiled(bk: Any, fn: Callable, *static: Any, **options: Any) -> Callable:
    """``bk.jit`` of ``fn(x, *static, **options)`` as a function of x alone (static: hashable
    sizes, domains, kinds): one program instead of an eager dispatch per operation."""
    program = lambda x: fn(x, *static, **options)  # noqa: E731
    if getattr(fn, "__closure__", True) is not None:  # not named by its module and name
        return bk.jit(program)
    key = (fn.__module__, fn.__qualname__, static, tuple(sorted(options.items())))
    return _cache.jit(bk, program, *key)


@functools.lru_cache(maxsize=32)
def _pyramid_kernel(bk: Any, domain: Domain, selected: tuple[Domain, ...]) -> Callable:
    """The images on the selected levels of :func:`multireg.multilevel`'s pyramid, built in one
    compiled function (eagerly, JAX compiles each averaging step as a program of its own)."""
    coarsest = min(min(d.m) for d in selected)

    def build(T, R):
        levels = multilevel(domain, T, R, min_size=coarsest)
        return tuple(lv.images for lv in levels if lv.domain in selected)

    return _cache.jit(bk, build, "pyramid", domain, selected)


def image_pyramid(bk: Any, domain: Domain, selected: list[Domain], T: Any, R: Any) -> list[Level]:
    if list(selected) == [domain]:
        return [Level(domain, (T, R))]
    images = _pyramid_kernel(bk, domain, tuple(selected))(T, R)
    return [Level(d, tuple(im)) for d, im in zip(selected, images, strict=True)]


# ------------------------------------------------------------------------------ parametric


def _image_and_gradient(bk, evaluate, coef, y):
    """T(y) (shape (n,)) and the pointwise gradient ∇T(y) (shape (n, d)) from one pullback:
    T(y_i) depends on y_i only, so the pullback of a vector of ones is the gradient."""
    Tc, pullback = bk.vjp(lambda u: evaluate(coef, u), y)
    return Tc, pullback(bk.xp.ones_like(Tc))


@functools.lru_cache(maxsize=64)
def _evaluator(bk, model, domain):
    """``model.evaluate`` on ``domain`` as a function of (coef, x). On a backend whose compiled
    functions nest (``bk.nests_jit``: JAX), a compiled function: every kernel that calls it
    then reuses its traced program, where tracing the spline's 4^d stencil was the largest part
    of tracing each kernel. The image model's θ is not read here (only by its coefficients)."""

    def evaluate(coef, x):
        return model.evaluate(coef, domain, x)

    return bk.jit(evaluate) if getattr(bk, "nests_jit", False) else evaluate


def _level_values(xp, model, evaluate, d, T, R):
    """Template coefficients, the reference at the cell centres and the grid (FAIR), traced."""
    x = d.cell_centers(xp, dtype=T.dtype, device=device_of(T))
    coef = model.coefficients(T)
    Rc = R
    if model.kind == "spline":
        # FAIR smooths R with the same θ when θ ≠ 0; θ is an array here, so select by value
        smooth = xp.reshape(evaluate(model.coefficients(R), x), d.m)
        Rc = xp.where(model.theta != 0, smooth, R)
    return coef, Rc, x


def _scale_values(xp, dist, domain, Rc):
    """[D(0, R), D(R, R)]: the magnitude of the distance's terms whatever the alignment (SSD:
    ½ hd ‖R‖²; NCC: 1; NGF: |Ω|; MI: the entropy of R), for the solvers' round-off tests."""
    return [dist(xp.zeros_like(Rc), Rc, domain), dist(Rc, Rc, domain)]


def j_scale_of(values) -> float:
    values = np.abs(np.asarray(values, dtype=np.float64))
    return float(np.max(np.where(np.isfinite(values), values, 0.0)))


@functools.lru_cache(maxsize=32)
def parametric_kernels(bk, trafo, model, dist, domain):
    """Compiled J, ∇J, Gauss–Newton and exact curvatures of J(w) on one level, the level's set-up
    and the result. ``model`` and ``dist`` are structures (:func:`_split_data`): every kernel
    takes their hyper-parameters as its argument ``hyper``."""
    xp = bk.xp
    evaluate = _evaluator(bk, model, domain)

    def bound(hyper):
        return _with_fields(model, hyper["model"]), _with_fields(dist, hyper["dist"])

    def warped(w, hyper, coef, x):
        return xp.reshape(evaluate(coef, trafo(w, x)), domain.m)

    def residual(w, hyper, coef, Rc, x):
        return bound(hyper)[1].residual(warped(w, hyper, coef, x), Rc, domain)

    def J(w, hyper, coef, Rc, x):
        return bound(hyper)[1](warped(w, hyper, coef, x), Rc, domain)

    def setup(hyper, T, R):
        """The level's data (:func:`_level_values`) and [J(identity), D(0, R), D(R, R)]: one
        program, not one per quantity."""
        model_, dist_ = bound(hyper)
        coef, Rc, x = _level_values(xp, model_, evaluate, domain, T, R)
        w_id = trafo.identity(xp, dtype=T.dtype, device=device_of(T))
        stats = xp.stack([J(w_id, hyper, coef, Rc, x), *_scale_values(xp, dist_, domain, Rc)])
        return coef, Rc, x, stats

    def result(w, hyper, coef, x):
        return warped(w, hyper, coef, x), trafo(w, x)

    def value_and_grad(w, hyper, coef, Rc, x):
        """J, ∇J and [J, ‖∇J‖] (what the optimiser reads on the host): one program."""
        return _with_norm(xp, *bk.value_and_grad(lambda v: J(v, hyper, coef, Rc, x))(w))

    def gn_matrix(w, hyper, coef, Rc, x):
        """J_rᵀ W J_r with J_r = dr · dT · dy (FAIR's factorisation, book §6.3): one pullback
        gives the pointwise image gradient dT, so the stencil is not pushed once per parameter."""
        dist_ = bound(hyper)[1]
        Tc, dT = _image_and_gradient(bk, evaluate, coef, trafo(w, x))
        dy = bk.jacobian(lambda v: trafo(v, x))(w)  # (n, d, p); cheap: no interpolation
        JT = sum(dT[:, k, None] * dy[:, k, :] for k in range(domain.dim))  # (n, p)
        T0 = xp.reshape(Tc, domain.m)
        zero = xp.zeros(JT.shape[1], dtype=JT.dtype, device=device_of(JT))
        Jr = bk.jacobian(
            lambda t: dist_.residual(T0 + xp.reshape(JT @ t, domain.m), Rc, domain)
        )(zero)
        W = dist_.gn_weight(dist_.residual(T0, Rc, domain), Rc, domain)
        return _with_diagonal(xp, Jr.T @ ((W[:, None] if W.ndim else W) * Jr))

    def gn_matvec(w, v, hyper, coef, Rc, x):
        dist_ = bound(hyper)[1]
        r, jv = bk.jvp(lambda u: residual(u, hyper, coef, Rc, x), w, v)
        _, pullback = bk.vjp(lambda u: residual(u, hyper, coef, Rc, x), w)
        return pullback(dist_.gn_weight(r, Rc, domain) * jv)

    def hessian(w, hyper, coef, Rc, x):
        return _with_diagonal(xp, bk.hessian(lambda v: J(v, hyper, coef, Rc, x))(w))

    def hvp(w, v, hyper, coef, Rc, x):
        return bk.hvp(lambda u: J(u, hyper, coef, Rc, x), w, v)

    def jit(f):  # kept between processes, named by this configuration (see _cache.jit)
        return _cache.jit(bk, f, "parametric", f.__name__, trafo, model, dist, domain)

    return dict(
        setup=jit(setup),
        result=jit(result),
        J=jit(J),
        value_and_grad=jit(value_and_grad),
        gn_matrix=jit(gn_matrix),
        gn_matvec=jit(gn_matvec),
        hessian=jit(hessian),
        hvp=jit(hvp),
    )


def _with_norm(xp, fun, grad):
    return fun, grad, xp.stack([fun, xp.linalg.vector_norm(grad)])


def _with_diagonal(xp, H):
    """H and diag(H), computed in H's program (eagerly, the diagonal is a program of its own)."""
    return H, xp.linalg.diagonal(H)


def _dense(H_and_diagonal) -> LinearOperator:
    H, diagonal = H_and_diagonal
    return LinearOperator(matvec=lambda v: H @ v, diagonal=diagonal, matrix=H)


def parametric_objective(bk, kernels, data, n_params) -> Objective:
    dense = n_params <= optimize.DENSE_MAX

    def gauss_newton(w):
        if dense:
            return _dense(kernels["gn_matrix"](w, *data))
        return LinearOperator(matvec=lambda v: kernels["gn_matvec"](w, v, *data))

    def exact(w):
        if dense:
            return _dense(kernels["hessian"](w, *data))
        return LinearOperator(matvec=lambda v: kernels["hvp"](w, v, *data))

    return Objective(
        bk=bk,
        value=lambda w: kernels["J"](w, *data),
        value_and_grad=lambda w: kernels["value_and_grad"](w, *data)[:2],
        hessian=gauss_newton,
        exact_hessian=exact,
        curvature="gauss-newton",
        value_grad_norm=lambda w: kernels["value_and_grad"](w, *data),
    )


def device_of(x):
    import array_api_compat

    return array_api_compat.device(x)


# --------------------------------------------------------------------------- nonparametric


@functools.lru_cache(maxsize=32)
def nonparametric_kernels(bk, model, dist, reg: Regularizer, domain, pre_trafo=None):
    """Compiled J(y) = D(T(P y), R) + S(y − y_ref), its gradient, the pieces of H_GN, the
    level's set-up and the result. ``model``, ``dist`` and ``reg`` are structures
    (:func:`_split_data`): every kernel takes their hyper-parameters as its argument ``hyper``,
    so a new α, μ, λ, θ or distance parameter compiles nothing."""
    xp = bk.xp
    kind = reg.kind
    radius = getattr(dist, "residual_radius", None)
    evaluate = _evaluator(bk, model, domain)

    def bound(hyper):
        return (
            _with_fields(model, hyper["model"]),
            _with_fields(dist, hyper["dist"]),
            _with_fields(reg, hyper["reg"]),
        )

    def points(y):
        return gridops.to_cell_centers(y, domain, kind)

    def distance_value(y, hyper, coef, Rc):
        Tc = xp.reshape(evaluate(coef, points(y)), domain.m)
        dist_ = bound(hyper)[1]
        return dist_(Tc, Rc, domain)

    def J(y, hyper, coef, Rc, y_ref):
        reg_ = bound(hyper)[2]
        return distance_value(y, hyper, coef, Rc) + reg_.value(y, domain, y_ref)

    def setup(hyper, T, R, w_pre):
        """The level's data, the identity grid x, y_ref (the pre-registration's map on x),
        diag(S''), and [J(x), D(x), D(0, R), D(R, R)]: one program, not one per quantity."""
        model_, dist_, reg_ = bound(hyper)
        coef, Rc, _ = _level_values(xp, model_, evaluate, domain, T, R)
        dtype, device = T.dtype, device_of(T)
        x_grid = gridops.identity_grid(domain, kind, xp, dtype=dtype, device=device)
        if pre_trafo is None:
            y_ref = x_grid
        else:
            y_ref = _map_grid(pre_trafo, w_pre, x_grid, domain, kind, xp)
        reg_diag = reg_.diagonal(domain, xp, dtype=dtype, device=device)
        d_id = distance_value(x_grid, hyper, coef, Rc)
        j_id = d_id + reg_.value(x_grid, domain, y_ref)
        stats = xp.stack([j_id, d_id, *_scale_values(xp, dist_, domain, Rc)])
        return coef, Rc, x_grid, y_ref, reg_diag, stats

    def result(y, hyper, coef, Rc):
        """D(y), P y, T(P y) and det ∇y: the level's outcome (one program; the last three are
        read on the finest level only, and cost little on the others)."""
        dist_ = bound(hyper)[1]
        yc = points(y)
        warped = xp.reshape(evaluate(coef, yc), domain.m)
        det = gridops.jacobian_determinant(y, domain, kind)
        return dist_(warped, Rc, domain), yc, warped, det

    def value_and_grad(y, hyper, coef, Rc, y_ref):
        """J, ∇J and [J, ‖∇J‖] (what the optimiser reads on the host): one program."""
        return _with_norm(xp, *bk.value_and_grad(lambda v: J(v, hyper, coef, Rc, y_ref))(y))

    def linearise(y, hyper, coef, Rc, reg_diag):
        """Pointwise image gradients dT (n, d), the residual and its GN weight at y, and the
        diagonal of H_GN: diag(S'') plus the data term's where that has a closed form (a
        pointwise residual; the caller adds the probed one of a residual with a radius)."""
        dist_ = bound(hyper)[1]
        Tc, dT = _image_and_gradient(bk, evaluate, coef, points(y))
        r = dist_.residual(xp.reshape(Tc, domain.m), Rc, domain)
        W = dist_.gn_weight(r, Rc, domain)
        diagonal = reg_diag + gn_diagonal(dT, W) if radius == 0 else reg_diag
        return dT, xp.reshape(Tc, domain.m), W, diagonal

    def data_matvec(v, dist_, dT, Tc, W, Rc):
        """Pᵀ dTᵀ J_rᵀ W J_r dT P v, the data term of the GN operator."""
        z = points(v)  # summing the d columns by hand: torch reduces a tiny last axis slowly
        t = xp.reshape(sum(dT[:, k] * z[:, k] for k in range(domain.dim)), domain.m)
        _, jt = bk.jvp(lambda u: dist_.residual(u, Rc, domain), Tc, t)
        _, pullback = bk.vjp(lambda u: dist_.residual(u, Rc, domain), Tc)
        g = xp.reshape(pullback(W * jt), (-1,))
        return gridops.to_cell_centers_adjoint(dT * g[:, None], domain, kind)

    def gn_matvec(v, hyper, dT, Tc, W, Rc):
        """(Pᵀ dTᵀ J_rᵀ W J_r dT P + α hd BᵀB) v, FAIR's matrix-free GN operator (book §9.4)."""
        _, dist_, reg_ = bound(hyper)
        return data_matvec(v, dist_, dT, Tc, W, Rc) + reg_.hvp(v, domain)

    def probe(color, hyper, dT, Tc, W, Rc):
        """v ⊙ (data term) v for the indicator v of one colour of :func:`_colours`: the
        diagonal of the data term at the colour's unknowns (Curtis, Powell & Reid 1974)."""
        v = _colour_mask(xp, color, domain, kind, radius, dT.dtype)
        return v * data_matvec(v, bound(hyper)[1], dT, Tc, W, Rc)

    def gn_diagonal(dT, W):
        """diag of the data term, exact when the residual is T itself (SSD, NCC): P's entries
        are equal within a row, so diag(Pᵀ D P) = c·Pᵀ(diag D) with c the entry value."""
        c = {"staggered": 0.5, "cell-centered": 1.0, "nodal": 0.5**domain.dim}[kind]
        w = W if W.ndim == 0 else xp.reshape(W, (-1, 1))
        return c * gridops.to_cell_centers_adjoint(w * dT * dT, domain, kind)

    def hvp(y, v, hyper, coef, Rc, y_ref):
        return bk.hvp(lambda u: J(u, hyper, coef, Rc, y_ref), y, v)

    def jit(f):  # kept between processes, named by this configuration (see _cache.jit)
        key = ("nonparametric", f.__name__, model, dist, reg, domain, pre_trafo)
        return _cache.jit(bk, f, *key)

    return dict(
        setup=jit(setup),
        result=jit(result),
        J=jit(J),
        hvp=jit(hvp),
        probe=jit(probe),
        value_and_grad=jit(value_and_grad),
        linearise=jit(linearise),
        gn_matvec=jit(gn_matvec),
    )


def _map_grid(trafo, w, x_grid, domain, kind, xp):
    """Apply a parametric map to every point of a stacked grid vector (per component)."""
    parts = gridops.split(x_grid, domain, kind)
    if kind == "cell-centered" or kind == "nodal":
        pts = xp.stack([xp.reshape(c, (-1,)) for c in parts], axis=1)
        y = trafo(w, pts)
        return gridops.merge([xp.reshape(y[:, k], parts[k].shape) for k in range(domain.dim)])
    # staggered: component k lives on its own grid; map that grid's points, keep component k
    grids = domain.staggered(xp, dtype=x_grid.dtype, device=device_of(x_grid))
    comps = []
    for k, g in enumerate(grids):
        comps.append(xp.reshape(trafo(w, g)[:, k], parts[k].shape))
    return gridops.merge(comps)


def _moduli(domain, kind, component, radius):
    """Per axis, the spacing at which unknowns of one component have data-term columns with
    disjoint rows: P spreads an unknown over ``extent`` cells along an axis, and the residual
    of a cell reads T up to ``radius`` cells away on either side."""
    extent = {
        "staggered": [2 if a == component else 1 for a in range(domain.dim)],
        "cell-centered": [1] * domain.dim,
        "nodal": [2] * domain.dim,
    }[kind]
    return [e + 2 * radius for e in extent]


def _colours(domain, kind, radius):
    """The colours of a Curtis–Powell–Reid probing of the data term: (component, offsets)."""
    out = []
    for k in range(domain.dim):
        for offsets in itertools.product(*(range(M) for M in _moduli(domain, kind, k, radius))):
            out.append((k, *offsets))
    return out


def _colour_mask(xp, color, domain, kind, radius, dtype):
    """The stacked indicator of one colour: unknowns of component ``color[0]`` whose index
    along each axis a is ``color[1 + a]`` modulo the axis's spacing (``color``: an int array)."""
    parts = []
    for k in range(domain.dim):
        shape = gridops.grid_shape(domain, kind, k)
        mask = color[0] == k
        for a, M in enumerate(_moduli(domain, kind, k, radius)):
            index = xp.reshape(
                xp.arange(shape[a], device=device_of(color)),
                tuple(-1 if j == a else 1 for j in range(domain.dim)),
            )
            mask = mask & (index % M == color[1 + a])
        parts.append(xp.reshape(xp.astype(xp.broadcast_to(mask, shape), dtype), (-1,)))
    return xp.concat(parts)


def nonparametric_objective(bk, kernels, problem, domain, data, y_ref, reg_diag):
    """``data``: (hyper, coef, Rc); ``reg_diag``: diag(S''), from the level's set-up."""
    xp = bk.xp
    hyper, coef, Rc = data
    radius = getattr(problem.dist, "residual_radius", None)
    if radius:  # the data term couples neighbouring cells: probe its diagonal
        device = device_of(reg_diag)
        colours = [
            xp.asarray(c, device=device) for c in _colours(domain, problem.reg.kind, radius)
        ]

    def gauss_newton(y):
        # The exact diagonal of the data term: the closed form for a pointwise residual (in
        # linearise), else probing (NGF: 24 products in 2D; the pointwise formula was off by
        # 180 % there and made Jacobi preconditioning worse than none); without a radius, none.
        dT, Tc, W, diagonal = kernels["linearise"](y, hyper, coef, Rc, reg_diag)
        if radius:
            diagonal = diagonal + sum(kernels["probe"](c, hyper, dT, Tc, W, Rc) for c in colours)
        return LinearOperator(
            matvec=lambda v: kernels["gn_matvec"](v, hyper, dT, Tc, W, Rc), diagonal=diagonal
        )

    return Objective(
        bk=bk,
        value=lambda y: kernels["J"](y, hyper, coef, Rc, y_ref),
        value_and_grad=lambda y: kernels["value_and_grad"](y, hyper, coef, Rc, y_ref)[:2],
        value_grad_norm=lambda y: kernels["value_and_grad"](y, hyper, coef, Rc, y_ref),
        hessian=gauss_newton,
        exact_hessian=lambda y: LinearOperator(
            matvec=lambda v: kernels["hvp"](y, v, hyper, coef, Rc, y_ref)
        ),
        curvature="gauss-newton",
    )
