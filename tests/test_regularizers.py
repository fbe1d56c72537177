"""Nonparametric regularisers (elastic, diffusive, curvature) and the grid operators.

The reference operators are assembled here, independently of the stencils under test, as SciPy
sparse matrices: Kronecker products of 1-D difference matrices acting along one axis of a C-order
array (FAIR's ``getElasticMatrixStg`` and ``getCurvatureMatrix``, re-ordered to C order).

Every kernel runs on every backend, in float64 against the assembled matrices or the NumPy
backend (to 1e-13), in float32, and on array_api_strict. The properties (invariants, exactness
for affine maps, known values) are then checked on the NumPy backend: the backends compute the
same numbers for the same kernels. On JAX the kernels are called through ``bk.jit`` (one
compilation per test): eager JAX compiles every primitive separately, which is slower.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.sparse as sp

from multireg import Domain
from multireg.gridops import (
    KINDS,
    grid_shape,
    grid_size,
    identity_grid,
    jacobian_determinant,
    merge,
    prolong,
    split,
    to_cell_centers,
    to_cell_centers_adjoint,
)
from multireg.regularizers import Curvature, Diffusive, Elastic, regularizer
from multireg.testing import taylor_test
from tests.conftest import AD_BACKENDS, assert_close, rtol

DOMAINS = {
    2: Domain((0.0, 2.0, -1.0, 1.5), (6, 5)),
    3: Domain((0.0, 1.0, 0.0, 2.0, -1.0, 2.0), (4, 3, 5)),
}
REGULARIZERS = {
    "elastic": Elastic(1.3, mu=0.7, lam=0.4),
    "diffusive": Diffusive(0.9),
    "curvature": Curvature(1.1),
}
dims = pytest.mark.parametrize("d", [2, 3])
regs = pytest.mark.parametrize("name", list(REGULARIZERS))
kinds = pytest.mark.parametrize("kind", KINDS)


# ------------------------------------------------------------------------------- references


def _diff_matrix(n, h):
    """The (n-1) x n forward difference [-1, 1] / h."""
    return sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n)) / h


def _along(A, axis, shape):
    """A 1-D operator acting along ``axis`` of a C-order array of ``shape``."""
    return functools.reduce(
        sp.kron, [A if j == axis else sp.identity(n) for j, n in enumerate(shape)]
    )


def _neumann_laplacian(n, h):
    """Tridiagonal [1, -2, 1] / h² with the corner entries replaced by -1 / h² (FAIR's)."""
    L = sp.diags([np.ones(n - 1), -2.0 * np.ones(n), np.ones(n - 1)], [-1, 0, 1]).tolil()
    L[0, 0] = L[n - 1, n - 1] = -1.0
    return L.tocsr() / h**2


def _assembled_B(reg, domain):
    m, h, d = domain.m, domain.h, domain.dim
    if isinstance(reg, Curvature):
        lap = sum(_along(_neumann_laplacian(m[k], h[k]), k, m) for k in range(d))
        return sp.block_diag([lap] * d).tocsr()
    shapes = [tuple(v + (j == i) for j, v in enumerate(m)) for i in range(d)]
    mu = reg.mu if isinstance(reg, Elastic) else 1.0
    rows = []
    for i, s in enumerate(shapes):
        for k in range(d):
            row = [None] * d
            row[i] = math.sqrt(mu) * _along(_diff_matrix(s[k], h[k]), k, s)
            rows.append(row)
    if isinstance(reg, Elastic):
        b = math.sqrt(reg.lam + reg.mu)
        rows.append([b * _along(_diff_matrix(s[i], h[i]), i, s) for i, s in enumerate(shapes)])
    return sp.bmat(rows).tocsr()


def _assembled_P(domain, kind):
    """Grid to cell centres, stacked components in and out: pairwise means along nodal axes."""
    m, d = domain.m, domain.dim
    blocks = []
    for i in range(d):
        shape = grid_shape(domain, kind, i)
        mats = [
            sp.diags([0.5, 0.5], [0, 1], shape=(v, v + 1)) if n == v + 1 else sp.identity(v)
            for v, n in zip(m, shape, strict=True)
        ]
        blocks.append(functools.reduce(sp.kron, mats))
    return sp.block_diag(blocks).tocsr()


def _random_field(kind, domain, seed):
    """A random transformation near the identity, and a random reference."""
    rng = np.random.default_rng(seed)
    x = identity_grid(domain, kind)
    return x + rng.standard_normal(x.shape), x + 0.3 * rng.standard_normal(x.shape)


def _as(bk, *arrays, dtype="float64"):
    return [bk.asarray(a, dtype=dtype) for a in arrays]


def _coordinates(domain, kind, component):
    """The coordinates x_1..x_d at the points of one component's grid, each shaped like it."""
    if kind == "staggered":
        points = domain.staggered()[component]
    else:
        points = domain.nodes() if kind == "nodal" else domain.cell_centers()
    shape = grid_shape(domain, kind, component)
    return [points[:, k].reshape(shape) for k in range(domain.dim)]


def _affine(domain, kind, A, b):
    """The stacked vector of y = A x + b on the grid ``kind``."""
    d = domain.dim
    return merge(
        [
            sum(A[i, k] * xk for k, xk in enumerate(_coordinates(domain, kind, i))) + b[i]
            for i in range(d)
        ]
    )


def _smooth(domain, kind):
    """u_i = c_i Π_k cos(f_ik π (x_k - a_k) / L_k): smooth, no normal derivative at the boundary."""
    comps = []
    for i in range(domain.dim):
        coords = _coordinates(domain, kind, i)
        waves = [
            np.cos((1 + (k == i)) * np.pi * (xk - domain.lower[k]) / domain.extent[k])
            for k, xk in enumerate(coords)
        ]
        comps.append((0.3 + 0.2 * i) * np.prod(waves, axis=0))
    return merge(comps)


# ------------------------------------------------------------------ every kernel, every backend


@dims
@regs
def test_regularizers_are_the_assembled_operators(bk, d, name):
    reg, domain = REGULARIZERS[name], DOMAINS[d]
    B = _assembled_B(reg, domain)
    assert B.shape[1] == grid_size(domain, reg.kind)
    weight = reg.alpha * domain.cell_volume
    y, y_ref = _random_field(reg.kind, domain, 1)
    z = np.random.default_rng(2).standard_normal(B.shape[0])

    def kernels(y, y_ref, z):
        return (
            reg.B(y, domain),
            reg.BT(z, domain),
            reg.diagonal(domain, bk.xp),
            reg.hvp(y, domain),
            reg.gradient(y, domain, y_ref),
            reg.value(y, domain, y_ref),
            reg.value(y, domain),  # y_ref defaults to the identity grid
        )

    got = bk.jit(kernels)(*_as(bk, y, y_ref, z))
    normal = weight * (B.T @ B)
    u, x = y - y_ref, identity_grid(domain, reg.kind)
    expected = (
        B @ y,
        B.T @ z,
        normal.diagonal(),
        normal @ y,
        normal @ u,  # the gradient of a quadratic is its Hessian times the displacement
        0.5 * weight * np.sum((B @ u) ** 2),
        0.5 * weight * np.sum((B @ (y - x)) ** 2),
    )
    for a, e in zip(got, expected, strict=True):
        assert_close(bk, a, e, rtol=1e-13)


def _grid_kernels(bk, d, dtype):
    """Every grid operator on every grid kind, as one function of NumPy inputs."""
    domain = DOMAINS[d]
    coarse = domain.with_m(tuple(max(2, v // 2) for v in domain.m))
    rng = np.random.default_rng(3)
    inputs = []
    for kind in KINDS:
        y, _ = _random_field(kind, domain, 4)
        y_coarse = identity_grid(coarse, kind) + 0.1 * rng.standard_normal(grid_size(coarse, kind))
        inputs += [y, rng.standard_normal((domain.n, d)), y_coarse]
    xp_dtype = getattr(bk.xp, dtype)

    def kernels(*arrays):
        out = []
        for i, kind in enumerate(KINDS):
            y, z, y_coarse = arrays[3 * i : 3 * i + 3]
            out += [
                identity_grid(domain, kind, bk.xp, dtype=xp_dtype),
                to_cell_centers(y, domain, kind),
                to_cell_centers_adjoint(z, domain, kind),
                prolong(y_coarse, coarse, domain, kind),
                jacobian_determinant(y, domain, kind),
            ]
        return out

    return bk.jit(kernels)(*_as(bk, *inputs, dtype=dtype))


@dims
def test_grid_operators_agree_across_backends(bk, np_bk, d):
    reference = _grid_kernels(np_bk, d, "float64")
    for a, e in zip(_grid_kernels(bk, d, "float64"), reference, strict=True):
        assert_close(bk, a, np_bk.to_numpy(e), rtol=1e-13)


def _regularizer_kernels(bk, d, dtype):
    """Value, gradient, Hessian-vector product and diagonal of every regulariser."""
    domain = DOMAINS[d]
    fields = {kind: _random_field(kind, domain, 5) for kind in ("staggered", "cell-centered")}
    xp_dtype = getattr(bk.xp, dtype)

    def kernels(fields):
        out = []
        for reg in REGULARIZERS.values():
            y, y_ref = fields[reg.kind]
            out += [
                reg.value(y, domain, y_ref),
                reg.gradient(y, domain, y_ref),
                reg.hvp(y_ref, domain),
                reg.diagonal(domain, bk.xp, dtype=xp_dtype),
            ]
        return out

    inputs = {kind: tuple(_as(bk, *f, dtype=dtype)) for kind, f in fields.items()}
    return bk.jit(kernels)(inputs)


def test_float32_agrees_with_float64(bk, np_bk):
    d, single = 2, bk.xp.float32  # 2D only: 3D runs the same code (JAX compiles are slow)
    for kernels in (_regularizer_kernels, _grid_kernels):
        for a, e in zip(kernels(bk, d, "float32"), kernels(np_bk, d, "float64"), strict=True):
            assert a.dtype == single
            assert_close(bk, a, np_bk.to_numpy(e), rtol=rtol("float32"))


@dims
@regs
def test_forward_kernels_run_on_array_api_strict(strict_bk, np_bk, d, name):
    reg, domain = REGULARIZERS[name], DOMAINS[d]
    y, y_ref = _random_field(reg.kind, domain, 6)

    def kernels(b):
        yb, y_refb = _as(b, y, y_ref)
        return [
            reg.value(yb, domain, y_refb),
            reg.gradient(yb, domain, y_refb),
            reg.BT(reg.B(yb, domain), domain),
            reg.diagonal(domain, b.xp),
        ]

    for a, e in zip(kernels(strict_bk), kernels(np_bk), strict=True):
        assert_close(np_bk, strict_bk.to_numpy(a), e, rtol=1e-15)
    for a, e in zip(
        _grid_kernels(strict_bk, d, "float64"), _grid_kernels(np_bk, d, "float64"), strict=True
    ):
        assert_close(np_bk, strict_bk.to_numpy(a), e, rtol=1e-15)


# ---------------------------------------------------------------------------------- derivatives


@dims
@regs
def test_gradient_and_hessian_agree_with_autodiff(ad_bk, d, name):
    reg, domain = REGULARIZERS[name], DOMAINS[d]
    y, y_ref = _random_field(reg.kind, domain, 7)
    v = np.random.default_rng(8).standard_normal(y.shape)
    yb, y_refb, vb = _as(ad_bk, y, y_ref, v)

    def S(w):
        return reg.value(w, domain, y_refb)

    def derivatives(w, v):
        return ad_bk.value_and_grad(S)(w)[1], ad_bk.hvp(S, w, v)

    grad, Hv = ad_bk.jit(derivatives)(yb, vb)
    gradient = reg.gradient(y, domain, y_ref)  # on NumPy: checked against B above
    assert_close(ad_bk, grad, gradient, rtol=1e-12)
    assert_close(ad_bk, Hv, reg.hvp(v, domain), rtol=1e-12)
    result = taylor_test(ad_bk, ad_bk.jit(S), yb, vb, jv=float(np.sum(gradient * v)), t0=1e-1)
    assert abs(result.order - 2.0) < 0.1, result


@dims
def test_to_cell_centers_is_the_averaging_matrix_and_its_adjoint(np_bk, d):
    domain = DOMAINS[d]
    rng = np.random.default_rng(9)
    for kind in KINDS:
        P = _assembled_P(domain, kind)
        y = rng.standard_normal(grid_size(domain, kind))
        z = rng.standard_normal((domain.n, d))
        Py = np_bk.to_numpy(to_cell_centers(np_bk.asarray(y), domain, kind))
        PTz = np_bk.to_numpy(to_cell_centers_adjoint(np_bk.asarray(z), domain, kind))
        assert_close(np_bk, Py.T.reshape(-1), P @ y, rtol=1e-15)
        assert_close(np_bk, PTz, P.T @ z.T.reshape(-1), rtol=1e-15)
        bound = 1e-14 * np.linalg.norm(Py) * np.linalg.norm(z)
        assert abs(np.sum(Py * z) - np.sum(y * PTz)) <= bound


@dims
def test_to_cell_centers_adjoint_is_the_autodiff_transpose(ad_bk, d):
    domain = DOMAINS[d]
    rng = np.random.default_rng(10)
    ys = [rng.standard_normal(grid_size(domain, kind)) for kind in KINDS]
    z = rng.standard_normal((domain.n, d))

    def pullbacks(z, *ys):
        return [
            ad_bk.vjp(lambda w, kind=kind: to_cell_centers(w, domain, kind), y)[1](z)
            for kind, y in zip(KINDS, ys, strict=True)
        ]

    got = ad_bk.jit(pullbacks)(*_as(ad_bk, z, *ys))
    for kind, a in zip(KINDS, got, strict=True):
        assert_close(ad_bk, a, to_cell_centers_adjoint(z, domain, kind), rtol=1e-14)


@pytest.mark.skipif("jax" not in AD_BACKENDS, reason="needs the jax backend")
def test_static_checks_hold_under_jit():
    from multireg._backend import _instance

    jax_bk, domain, reg = _instance("jax"), DOMAINS[2], REGULARIZERS["elastic"]
    y, y_ref = _random_field(reg.kind, domain, 11)
    value = jax_bk.jit(lambda w: reg.value(w, domain, jax_bk.asarray(y_ref)))
    assert_close(jax_bk, value(jax_bk.asarray(y)), reg.value(y, domain, y_ref), rtol=1e-14)
    with pytest.raises(ValueError, match="y must be a 1-D vector of length 71"):
        value(jax_bk.asarray(y[:-1]))


# --------------------------------------------------------------------------------- invariants


@dims
@regs
def test_translations_cost_nothing(np_bk, d, name):
    reg, domain = REGULARIZERS[name], DOMAINS[d]
    y_ref, _ = _random_field(reg.kind, domain, 12)
    shift = merge([np.full(grid_shape(domain, reg.kind, k), 0.7 * k - 1.1) for k in range(d)])
    scale = float(reg.value(y_ref, domain))  # S of a random field, far from 0
    assert scale > 1.0
    assert abs(float(reg.value(y_ref + shift, domain, y_ref))) <= 1e-26 * scale


@dims
def test_curvature_annihilates_affine_maps_in_the_interior_only(np_bk, d):
    """Neumann rows: Δ_h(A x + b)_i = Σ_k A_ik / h_k at the first cell, -A_ik / h_k at the last."""
    domain, reg = DOMAINS[d], REGULARIZERS["curvature"]
    rng = np.random.default_rng(13)
    A, b = rng.standard_normal((d, d)), rng.standard_normal(d)
    expected = np.zeros((d, *domain.m))
    for k in range(d):
        profile = np.zeros(domain.m[k])
        profile[0], profile[-1] = 1.0 / domain.h[k], -1.0 / domain.h[k]
        shape = [1] * d
        shape[k] = -1
        expected += A[:, k].reshape(d, *[1] * d) * profile.reshape(shape)
    Bu = np_bk.to_numpy(reg.B(_affine(domain, "cell-centered", A, b), domain)).reshape(d, *domain.m)
    assert_close(np_bk, Bu, expected, rtol=1e-12)
    interior = (slice(None),) + (slice(1, -1),) * d
    assert np.max(np.abs(Bu[interior])) <= 1e-12 * np.max(np.abs(expected))


@dims
def test_elastic_lambda_penalises_divergence_only(np_bk, d):
    domain = DOMAINS[d]
    x = identity_grid(domain, "staggered")
    coords = [_coordinates(domain, "staggered", i) for i in range(d)]
    expansion = 0.1 * x  # div = 0.1 d
    rotation = merge([-coords[0][1], coords[1][0], *[0.0 * c[2] for c in coords[2:]]])  # div 0
    stiff, soft = Elastic(1.0, lam=2.0), Elastic(1.0, lam=0.0)
    for field, grows in ((expansion, True), (rotation, False)):
        s_stiff, s_soft = (
            float(stiff.value(x + field, domain)),
            float(soft.value(x + field, domain)),
        )
        assert s_soft > 0
        if grows:
            assert s_stiff > 1.5 * s_soft
        else:
            assert s_stiff == pytest.approx(s_soft, rel=1e-12)


@dims
def test_diffusive_is_elastic_with_lambda_minus_mu(np_bk, d):
    domain = DOMAINS[d]
    diffusive, elastic = Diffusive(0.8), Elastic(0.8, mu=1.0, lam=-1.0)
    y, y_ref = _random_field("staggered", domain, 14)
    assert float(diffusive.value(y, domain, y_ref)) == pytest.approx(
        float(elastic.value(y, domain, y_ref)), rel=1e-14
    )
    for f in ("gradient", "hvp"):
        args = (y, domain, y_ref) if f == "gradient" else (y, domain)
        assert_close(np_bk, getattr(diffusive, f)(*args), getattr(elastic, f)(*args), rtol=1e-14)
    assert_close(np_bk, diffusive.diagonal(domain), elastic.diagonal(domain), rtol=1e-14)


@dims
@regs
def test_taylor_test_of_value_and_gradient(np_bk, d, name):
    """The forward-only check: the gradient is the derivative of the value (slope 2)."""
    reg, domain = REGULARIZERS[name], DOMAINS[d]
    y, y_ref = _random_field(reg.kind, domain, 15)
    v = np.random.default_rng(16).standard_normal(y.shape)
    jv = float(np.sum(reg.gradient(y, domain, y_ref) * v))
    result = taylor_test(np_bk, lambda w: reg.value(w, domain, y_ref), y, v, jv=jv, t0=1e-1)
    assert abs(result.order - 2.0) < 0.1, result
    wrong = taylor_test(np_bk, lambda w: reg.value(w, domain, y_ref), y, v, jv=0.5 * jv, t0=1e-1)
    assert wrong.order < 1.5  # a gradient off by the classic factor 2 fails it


@dims
@regs
def test_alpha_means_the_same_at_every_resolution(np_bk, d, name):
    """The hd weighting: S of one continuous field is nearly the same on m and 2m."""
    reg = REGULARIZERS[name]
    coarse = Domain(DOMAINS[d].omega, tuple(2 * v for v in DOMAINS[d].m))
    fine = Domain(coarse.omega, tuple(2 * v for v in coarse.m))
    values = [
        float(reg.value(identity_grid(dom, reg.kind) + _smooth(dom, reg.kind), dom))
        for dom in (coarse, fine)
    ]
    # Loose: both are O(h) approximations of the integral (half cells at the boundary are left
    # out of the quadrature); without the weight hd the two would differ by the factor 2^d.
    assert values[1] == pytest.approx(values[0], rel=0.1)


# ---------------------------------------------------------------------------- grid operators


@dims
@kinds
def test_layout_and_identity_grid(np_bk, d, kind):
    domain = DOMAINS[d]
    x = identity_grid(domain, kind)
    assert tuple(x.shape) == (grid_size(domain, kind),)
    comps = split(x, domain, kind)
    for k, c in enumerate(comps):
        assert tuple(c.shape) == grid_shape(domain, kind, k)
        assert_close(np_bk, c, _coordinates(domain, kind, k)[k], rtol=0)
    assert_close(np_bk, merge(list(comps)), x, rtol=0)
    assert_close(np_bk, to_cell_centers(x, domain, kind), domain.cell_centers(), rtol=1e-15)


@pytest.mark.parametrize(
    ("omega", "m_coarse", "m_fine"),
    [
        ((0.0, 2.0, -1.0, 1.5), (3, 4), (6, 8)),
        ((0.0, 2.0, -1.0, 1.5), (3, 4), (5, 9)),
        ((0.0, 1.0, 0.0, 2.0, -1.0, 2.0), (2, 3, 2), (4, 6, 4)),
    ],
)
@kinds
def test_prolongation_is_exact_for_affine_maps(np_bk, omega, m_coarse, m_fine, kind):
    coarse, fine = Domain(omega, m_coarse), Domain(omega, m_fine)
    rng = np.random.default_rng(17)
    d = coarse.dim
    A, b = np.eye(d) + 0.3 * rng.standard_normal((d, d)), rng.standard_normal(d)
    y_fine = prolong(_affine(coarse, kind, A, b), coarse, fine, kind)
    assert_close(np_bk, y_fine, _affine(fine, kind, A, b), rtol=1e-14)


@kinds
def test_prolongation_keeps_the_identity_even_from_one_cell(np_bk, kind):
    coarse, fine = Domain((0.0, 1.0, 0.0, 2.0), (1, 3)), Domain((0.0, 1.0, 0.0, 2.0), (2, 6))
    y = prolong(identity_grid(coarse, kind), coarse, fine, kind)
    assert_close(np_bk, y, identity_grid(fine, kind), rtol=1e-15)


def test_prolongation_interpolates_between_coarse_points(np_bk):
    """A non-affine displacement: at fine points between two coarse points, their mean."""
    coarse, fine = Domain((0.0, 1.0, 0.0, 1.0), (2, 2)), Domain((0.0, 1.0, 0.0, 1.0), (4, 4))
    u = np.zeros(grid_size(coarse, "nodal"))
    u[4] = 1.0  # component 1 at the middle node (1, 1) of the 3 x 3 nodes
    y = prolong(identity_grid(coarse, "nodal") + u, coarse, fine, "nodal")
    u_fine = split(y - identity_grid(fine, "nodal"), fine, "nodal")[0]
    hat = np.array([0.0, 0.5, 1.0, 0.5, 0.0])
    assert_close(np_bk, u_fine, np.outer(hat, hat), rtol=1e-15)


@dims
@kinds
def test_jacobian_determinant_known_values(np_bk, d, kind):
    domain = DOMAINS[d]
    x = identity_grid(domain, kind)
    A = np.eye(d) + 0.3 * np.random.default_rng(18).standard_normal((d, d))
    for y, expected in (
        (x, 1.0),
        (1.7 * x, 1.7**d),
        (_affine(domain, kind, A, np.ones(d)), np.linalg.det(A)),
    ):
        det = jacobian_determinant(y, domain, kind)
        assert_close(np_bk, det, np.full(domain.m, expected), rtol=1e-13)


@dims
@kinds
def test_jacobian_determinant_sees_a_fold(np_bk, d, kind):
    """y_1 = |x_1 - c| folds the domain at the node c: det < 0 left of c, > 0 right of it."""
    domain = DOMAINS[d]
    c = 0.5 * (domain.lower[0] + domain.upper[0])  # a node, since m_1 is even
    comps = list(split(identity_grid(domain, kind), domain, kind))
    comps[0] = np.abs(comps[0] - c)
    det = jacobian_determinant(merge(comps), domain, kind)
    left = domain.cell_centers()[:, 0].reshape(domain.m) < c
    assert np.all(det[left] < 0) and np.all(det[~left] > 0)


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Elastic(-1.0), ValueError, "alpha must be >= 0"),
        (lambda: Curvature(float("nan")), ValueError, "alpha must be finite"),
        (lambda: Diffusive("1"), TypeError, "alpha must be a real number"),
        (lambda: Elastic(1.0, mu=0.0), ValueError, "mu must be > 0"),
        (lambda: Elastic(1.0, mu=1.0, lam=-1.5), ValueError, "lam must be >= -mu"),
        (lambda: regularizer("tps", alpha=1.0), ValueError, "name must be one of"),
        (lambda: regularizer("elastic", alpha=1.0, lamda=1.0), TypeError, "unknown option.* lamda"),
        (lambda: regularizer("curvature", alpha=1.0, mu=1.0), TypeError, "unknown option.* mu"),
        (lambda: regularizer("diffusive"), TypeError, "needs the option alpha"),
    ],
)
def test_bad_options_are_named(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_factory_builds_the_classes():
    assert regularizer("elastic", alpha=2.0, mu=0.5, lam=1.0) == Elastic(2.0, mu=0.5, lam=1.0)
    assert regularizer("diffusive", alpha=0.0) == Diffusive(0.0)
    assert regularizer("curvature", alpha=3) == Curvature(3.0)


def test_bad_arrays_are_named(np_bk):
    domain, reg = DOMAINS[2], REGULARIZERS["elastic"]
    y = np_bk.asarray(identity_grid(domain, "staggered"))
    cases = [
        (lambda: reg.value(y[:-1], domain), ValueError, "y must be a 1-D vector of length 71"),
        (lambda: reg.value(y, domain, y[1:]), ValueError, "y_ref must be a 1-D vector"),
        (lambda: reg.hvp(np_bk.xp.reshape(y[:70], (7, 10)), domain), ValueError, "v must be a 1-D"),
        (lambda: reg.BT(y, domain), ValueError, "z must be a 1-D vector of length 148"),
        (lambda: reg.value(list(range(71)), domain), TypeError, "y must be an array"),
        (lambda: reg.value(np_bk.xp.arange(71), domain), TypeError, "real floating dtype"),
        (lambda: reg.value(y, domain.m), TypeError, "domain must be a Domain"),
        (lambda: split(y, domain, "centered"), ValueError, "kind must be one of"),
        (lambda: grid_shape(domain, "nodal", 2), ValueError, "component must be in 0..1"),
        (lambda: to_cell_centers_adjoint(y, domain, "nodal"), ValueError, "z must have shape"),
        (
            lambda: prolong(y, domain, Domain((0, 1, 0, 1), (12, 10)), "staggered"),
            ValueError,
            "fine.omega",
        ),
        (
            lambda: jacobian_determinant(y[:0], Domain((0, 1, 0, 1), (1, 3)), "cell-centered"),
            ValueError,
            "y must be a 1-D vector",
        ),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    single = Domain((0, 1, 0, 1), (1, 3))
    with pytest.raises(ValueError, match=r"domain.m must be >= 2"):
        jacobian_determinant(
            np_bk.asarray(identity_grid(single, "cell-centered")), single, "cell-centered"
        )


# ------------------------------------------------------------------- operations per product


@dims
def test_curvature_products_dispatch_few_torch_operations(d):
    """Curvature's value, gradient and Hessian product (one per CG step of a registration) apply
    Δ_h to all components at once: in 2-D the per-component, per-axis differences dispatched
    92 operations for hvp (197 in 3-D); the stacked stencil 37 (53). Counted, not timed."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    from tests._torch_ops import count_ops

    domain, reg = DOMAINS[d], REGULARIZERS["curvature"]
    x = identity_grid(domain, reg.kind, xp, dtype=torch.float64)
    v = torch.linspace(-1.0, 1.0, x.shape[0], dtype=torch.float64)
    bound = {2: 45, 3: 65}[d]
    for name, call in [
        ("hvp", lambda: reg.hvp(v, domain)),
        ("gradient", lambda: reg.gradient(x + v, domain, x)),
        ("value", lambda: reg.value(x + v, domain, x)),
    ]:
        total = sum(count_ops(call).values())
        assert total <= bound, f"{name}: {total} torch operations (at most {bound})"
