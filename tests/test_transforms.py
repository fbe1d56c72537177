"""Parametric transformations: FAIR layouts, known values, derivatives, agreement, bad input.

Most evaluations go through ``bk.jit(t)``: JAX then compiles each transformation once (``t`` is
hashable, so equal transforms share the compilation) instead of every operation eagerly, which
keeps the file fast; the rigid known-value and property tests call ``t`` eagerly.

References are written independently of the code under test: the linear maps through FAIR's own
construction ``y = kron(I_d, [x 1]) f(w)`` (rigid3D's ``f`` built from its three matrices written
out below), the B-spline through a dense sum of a piecewise formula for ``b``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from multireg.testing import adjoint_mismatch, taylor_test
from multireg.transforms import (
    TRANSFORMS,
    Affine,
    BSpline,
    MatrixTransform,
    Rigid,
    Translation,
    transform,
)
from tests.conftest import assert_close, rtol

CASES = {
    "translation1": Translation(1),
    "translation2": Translation(2),
    "translation3": Translation(3),
    "rigid2": Rigid(2),
    "rigid2-center": Rigid(2, center=(1.0, -2.0)),
    "rigid3": Rigid(3),
    "rigid3-center": Rigid(3, center=(0.5, 1.0, -1.5)),
    "affine1": Affine(1),
    "affine2": Affine(2),
    "affine2-center": Affine(2, center=(2.0, 0.5)),
    "affine3": Affine(3),
    "bspline2": BSpline((0.0, 2.0, -1.0, 3.0), (4, 5)),
    "bspline3": BSpline((0.0, 1.0, 0.0, 2.0, -1.0, 1.0), (3, 4, 3)),
}
N = 16  # points per test: one shape, so JAX compiles each operation once
NONLINEAR = [k for k in CASES if k.startswith("rigid")]
# derivative and float32 tests skip the 1D cases (the same formulas as in 2D) to save JAX
# compilations; the agreement test also skips the centres (covered by Taylor and adjoint tests)
CASES_2D_3D = [k for k in CASES if not k.endswith("1")]
DERIVATIVE_CASES = [k for k in CASES if k[-1] in "23"]


# ------------------------------------------------------------------------------- references


def _b(t):
    """FAIR's cubic B-spline, b(0) = 4, b(±1) = 1."""
    t = np.abs(t)
    return np.where(t < 1, (2 - t) ** 3 - 4 * (1 - t) ** 3, np.where(t < 2, (2 - t) ** 3, 0.0))


def _R1(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _R2(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _R3(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _fair_f(t, w):
    """FAIR's coefficient vector f(w) with y = kron(I_d, [x 1]) f (centre 0)."""
    d = t.dim
    if isinstance(t, Affine):
        return w
    if isinstance(t, Translation):
        return np.concatenate([np.append(np.eye(d)[k], w[k]) for k in range(d)])
    if d == 2:  # rigid2D.m: f = [cos; -sin; w2; sin; cos; w3]
        c, s = np.cos(w[0]), np.sin(w[0])
        return np.array([c, -s, w[1], s, c, w[2]])
    # rigid3D.m: f = [R3*R2*R1; t'](:), R3 from w(1), R1 from w(3)
    F = np.vstack([_R3(w[0]) @ _R2(w[1]) @ _R1(w[2]), w[3:]])
    return F.ravel(order="F")


def _fair_design(x):
    """kron(I_d, [x 1]): rows are component blocks stacked, FAIR's Q."""
    return np.kron(np.eye(x.shape[1]), np.hstack([x, np.ones((len(x), 1))]))


def _spline_design(t, x):
    """Dense basis matrix (n, prod(p)), columns in C order over p."""
    xi = (x - np.array(t.grid.lower)) / np.array(t.grid.h) - 0.5
    Q = np.ones((len(x), 1))
    for k, pk in enumerate(t.p):
        Qk = _b(xi[:, k : k + 1] - np.arange(pk))
        Q = (Q[:, :, None] * Qk[:, None, :]).reshape(len(x), -1)
    return Q


def _fair_q1d(interval, m, p):
    """FAIR's getQ1d: the p B-splines over ``interval`` at the m cell centres, shape (m, p)."""
    a, b = interval
    x = a + (np.arange(m) + 0.5) * (b - a) / m
    return _b((x[:, None] - a) / ((b - a) / p) - 0.5 - np.arange(p))


def _reference(t, w, x):
    if isinstance(t, BSpline):
        W = w.reshape(t.dim, -1)
        return x + _spline_design(t, x) @ W.T
    c = np.zeros(t.dim) if getattr(t, "center", None) is None else np.array(t.center)
    y = _fair_design(x - c) @ _fair_f(t, w)
    return y.reshape(t.dim, -1).T + c


def _points(t, n=N, seed=1):
    rng = np.random.default_rng(seed)
    if isinstance(t, BSpline):  # widened by 2 control cells: beyond the support too
        lo = np.array(t.grid.lower) - 2 * np.array(t.grid.h)
        hi = np.array(t.grid.upper) + 2 * np.array(t.grid.h)
        return rng.uniform(lo, hi, (n, t.dim))
    return rng.uniform(-2.0, 3.0, (n, t.dim))


def _params(t, seed=2, scale=0.3):
    return t.identity() + scale * np.random.default_rng(seed).standard_normal(t.n_params)


def _norm(a):
    return float(np.linalg.norm(np.ravel(a)))


# --------------------------------------------------------------------- values and identity


@pytest.mark.parametrize("case", CASES)
def test_identity_parameters_give_the_identity_map(bk, case):
    t = CASES[case]
    x = _points(t)
    w0 = t.identity(bk.xp)
    y = bk.jit(t)(w0, bk.asarray(x))
    np.testing.assert_array_equal(bk.to_numpy(y), x)


@pytest.mark.parametrize("case", CASES)
def test_matches_fair_reference(bk, case):
    t = CASES[case]
    x, w = _points(t), _params(t)
    y = bk.jit(t)(bk.asarray(w), bk.asarray(x))
    assert_close(bk, y, _reference(t, w, x), rtol=1e-12)


def test_identity_namespace_and_dtype(bk):
    w = Affine(2).identity()
    assert isinstance(w, np.ndarray) and w.dtype == np.float64
    np.testing.assert_array_equal(w, [1, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(Affine(3).identity()[[0, 5, 10]], [1, 1, 1])
    w32 = Rigid(3).identity(bk.xp, dtype=bk.xp.float32)
    assert w32.dtype == bk.xp.float32 and tuple(w32.shape) == (6,)
    with pytest.raises(TypeError, match="dtype must be a real floating dtype"):
        Translation(2).identity(bk.xp, dtype=bk.xp.int32)


def test_rigid2d_quarter_turn(bk):
    e = bk.asarray(np.eye(2))
    y = Rigid(2)(bk.asarray([np.pi / 2, 0.0, 0.0]), e)
    assert_close(bk, y, [[0.0, 1.0], [-1.0, 0.0]], rtol=0, atol=1e-15)  # e1 -> e2, e2 -> -e1
    c = np.array([1.0, -2.0])
    y = Rigid(2, center=tuple(c))(bk.asarray([np.pi / 2, 0.5, 0.0]), bk.asarray(c + np.eye(2)))
    expected = c + np.array([0.5, 0.0]) + np.array([[0.0, 1.0], [-1.0, 0.0]])
    assert_close(bk, y, expected, atol=1e-15)


def test_rigid3d_is_fair_rigid3d(bk):
    """y = (R3(w1) R2(w2) R1(w3))ᵀ x + t, with the matrices of FAIR's rigid3D.m."""
    w = np.array([0.3, -0.7, 1.1, 0.5, -1.0, 2.0])
    A, b = Rigid(3).matrix(bk.asarray(w))
    assert_close(bk, A, (_R3(w[0]) @ _R2(w[1]) @ _R1(w[2])).T, rtol=1e-15)
    assert_close(bk, b, w[3:], rtol=0)
    quarter = np.pi / 2
    e = bk.asarray(np.eye(3))
    for k, image in [
        (0, [[0, -1, 0], [1, 0, 0], [0, 0, 1]]),
        (2, [[1, 0, 0], [0, 0, -1], [0, 1, 0]]),
    ]:
        angles = np.zeros(6)
        angles[k] = quarter
        # w1 turns the (x1, x2) plane by -w1 (e1 -> -e2); w3 turns (x2, x3) by -w3 (e2 -> -e3)
        assert_close(bk, Rigid(3)(bk.asarray(angles), e), image, rtol=0, atol=1e-15)


def test_affine_known_values(bk):
    x = np.array([[1.0, 1.0], [0.0, 0.0], [2.0, -1.0]])
    y = Affine(2)(bk.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), bk.asarray(x))
    assert_close(bk, y, [[6.0, 15.0], [3.0, 6.0], [3.0, 9.0]], rtol=0)
    y = Affine(3)(bk.asarray(np.arange(1.0, 13.0)), bk.asarray([[1.0, 0.0, -1.0]]))
    assert_close(bk, y, [[2.0, 6.0, 10.0]], rtol=0)
    y = Affine(1)(bk.asarray([2.0, -1.0]), bk.asarray([[3.0]]))
    assert_close(bk, y, [[5.0]], rtol=0)


@pytest.mark.parametrize("case", [k for k in CASES if isinstance(CASES[k], MatrixTransform)])
def test_matrix_gives_the_same_map(bk, case):
    t = CASES[case]
    x, w = _points(t), _params(t)
    A, b = t.matrix(bk.asarray(w))
    assert tuple(A.shape) == (t.dim, t.dim) and tuple(b.shape) == (t.dim,)
    assert_close(bk, x @ bk.to_numpy(A).T + bk.to_numpy(b), _reference(t, w, x), rtol=1e-13)


@pytest.mark.parametrize("dim", [2, 3])
def test_bspline_single_coefficient_is_a_bump(bk, dim):
    omega, p, j = (0.0, 5.0, -1.0, 5.0, 0.0, 2.0)[: 2 * dim], (5, 6, 4)[:dim], (2, 3, 1)[:dim]
    t = BSpline(omega, p)
    W = np.zeros((dim, *p))
    W[(0, *j)] = 0.7
    h = np.array(t.grid.h)
    centre = np.array(t.grid.lower) + (np.array(j) + 0.5) * h
    offsets = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    x = centre + offsets[:, None] * h[0] * np.eye(dim)[0]  # along axis 1 through the point
    u = bk.to_numpy(bk.jit(t)(bk.asarray(W.ravel()), bk.asarray(x))) - x
    # b(0) = 4 in every other axis; along axis 1 b = 4, 2.875, 1, 0.125, 0, 0
    profile = 0.7 * 4.0 ** (dim - 1) * np.array([4.0, 2.875, 1.0, 0.125, 0.0, 0.0])
    np.testing.assert_allclose(u[:, 0], profile, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(u[:, 1:], 0.0)
    assert profile[0] == 0.7 * 4.0**dim  # 16 w in 2D, 64 w in 3D


@pytest.mark.parametrize("dim", [2, 3])
def test_bspline_constant_coefficients_give_a_constant_displacement(bk, dim):
    t = BSpline((0.0, 5.0, -1.0, 5.0, 0.0, 2.0)[: 2 * dim], (5, 6, 4)[:dim])
    shift = np.array([0.3, -0.2, 0.1])[:dim]
    W = shift[:, None] * np.ones((dim, math.prod(t.p)))
    # ξ in [1, p - 2]: all four B-splines of every axis have a coefficient there
    lo = np.array(t.grid.lower) + 1.5 * np.array(t.grid.h)
    hi = np.array(t.grid.upper) - 1.5 * np.array(t.grid.h)
    x = np.random.default_rng(0).uniform(lo, hi, (N, dim))
    y = bk.jit(t)(bk.asarray(W.ravel()), bk.asarray(x))
    assert_close(bk, y, x + 6.0**dim * shift, rtol=1e-14)  # sum of b is 6 per axis


# ------------------------------------------------------------------------------ FAIR layout


def test_to_fair_orders_each_block_fortran(bk):
    t = BSpline((0.0, 1.0, 0.0, 1.0), (2, 3))
    w = bk.asarray(np.arange(12.0))  # W_1 = [[0, 1, 2], [3, 4, 5]], W_2 = W_1 + 6
    fair = bk.to_numpy(t.to_fair(w))
    np.testing.assert_array_equal(fair, [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11])
    np.testing.assert_array_equal(bk.to_numpy(t.from_fair(bk.asarray(fair))), np.arange(12.0))
    t3 = BSpline((0.0, 1.0) * 3, (2, 3, 4))
    W = np.random.default_rng(0).standard_normal((3, 2, 3, 4))
    fair = bk.to_numpy(t3.to_fair(bk.asarray(W.ravel())))
    np.testing.assert_array_equal(fair, np.concatenate([Wk.ravel(order="F") for Wk in W]))
    np.testing.assert_array_equal(bk.to_numpy(t3.from_fair(bk.asarray(fair))), W.ravel())


def test_fair_layout_reproduces_fair_spline_transformation(bk):
    """FAIR: y = x + kron(I2, kron(Q2, Q1)) w_fair on the Fortran-ordered cell-centred grid."""
    t = BSpline((0.0, 10.0, 0.0, 8.0), (5, 6))
    grid = t.grid.with_m((4, 4))
    x = grid.cell_centers()
    w = _params(t, scale=0.1)
    Q1, Q2 = (
        _fair_q1d(t.omega[2 * k : 2 * k + 2], m, pk)
        for k, (m, pk) in enumerate(zip(grid.m, t.p, strict=True))
    )
    u_fair = np.kron(np.eye(2), np.kron(Q2, Q1)) @ bk.to_numpy(t.to_fair(bk.asarray(w)))
    u = bk.to_numpy(bk.jit(t)(bk.asarray(w), bk.asarray(x))) - x
    fortran = np.concatenate([u[:, k].reshape(grid.m).ravel(order="F") for k in range(2)])
    np.testing.assert_allclose(fortran, u_fair, rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------- derivatives


def _design(t, x):
    """dy/dw of a map linear in w, components stacked (FAIR's Q): kron(I_d, [x 1]) for the
    affine map, kron(I_d, B) for the spline (B its basis matrix), kron(I_d, 1) for translation."""
    if isinstance(t, BSpline):
        return np.kron(np.eye(t.dim), _spline_design(t, x))
    if isinstance(t, Affine):
        return _fair_design(x)
    return np.kron(np.eye(t.dim), np.ones((len(x), 1)))


@pytest.mark.parametrize("case", DERIVATIVE_CASES)
def test_torch_and_jax_agree_on_derivatives(all_ad, case):
    t = CASES[case]
    x, w = _points(t), _params(t)
    v = np.random.default_rng(3).standard_normal(t.n_params)
    u = np.random.default_rng(4).standard_normal((N, t.dim))
    results = []
    for bk in all_ad:
        X, jitted = bk.asarray(x), bk.jit(t)

        def f(w, X=X, jitted=jitted):
            return jitted(w, X)

        W = bk.asarray(w)
        jac = bk.jacobian(f)(W)
        _, jv = bk.jvp(f, W, bk.asarray(v))
        _, pullback = bk.vjp(f, W)
        results.append([bk.to_numpy(a) for a in (jac, jv, pullback(bk.asarray(u)))])
    (jac, jv, ju), *others = results
    assert jac.shape == (N, t.dim, t.n_params)
    assert_close(all_ad[0], jv, np.einsum("nkp,p->nk", jac, v), rtol=1e-13)
    assert_close(all_ad[0], ju, np.einsum("nkp,nk->p", jac, u), rtol=1e-13)
    for other in others:
        for a, b in zip(other, (jac, jv, ju), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13 * np.abs(b).max())
    if case not in NONLINEAR:
        stacked = np.transpose(jac, (1, 0, 2)).reshape(t.dim * N, t.n_params)
        np.testing.assert_allclose(stacked, _design(t, x), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("case", CASES_2D_3D)
def test_taylor(ad_bk, case):
    t = CASES[case]
    x, w = ad_bk.asarray(_points(t)), ad_bk.asarray(_params(t))
    v = ad_bk.asarray(np.random.default_rng(5).standard_normal(t.n_params))
    f = ad_bk.jit(t)
    r = taylor_test(ad_bk, lambda w: f(w, x), w, v)
    if case in NONLINEAR:
        assert 1.8 < r.order < 2.2, r
    else:  # linear in w: the first-order remainder is rounding only
        scale = _norm(ad_bk.to_numpy(f(w, x))) + r.e0.max()
        assert r.e1.max() <= 100 * np.finfo(np.float64).eps * scale, r


@pytest.mark.parametrize("case", CASES_2D_3D)
def test_adjoint(ad_bk, case):
    t = CASES[case]
    x, w = ad_bk.asarray(_points(t)), ad_bk.asarray(_params(t))
    rng = np.random.default_rng(6)
    u = ad_bk.asarray(rng.standard_normal((N, t.dim)))
    v = ad_bk.asarray(rng.standard_normal(t.n_params))
    f = ad_bk.jit(t)
    assert adjoint_mismatch(ad_bk, lambda w: f(w, x), w, u, v) <= 1e-14


# ------------------------------------------------------------------ namespaces and dtypes


@pytest.mark.parametrize("case", CASES)
def test_forward_on_array_api_strict(strict_bk, case):
    t = CASES[case]
    x, w = _points(t), _params(t)
    y = t(strict_bk.asarray(w), strict_bk.asarray(x))
    assert type(y).__module__.startswith("array_api_strict")
    assert_close(strict_bk, y, _reference(t, w, x), rtol=1e-12)
    w0 = t.identity(strict_bk.xp)
    assert type(w0).__module__.startswith("array_api_strict")
    if isinstance(t, MatrixTransform):
        A, _ = t.matrix(strict_bk.asarray(w))
        assert type(A).__module__.startswith("array_api_strict")
    else:
        back = t.from_fair(t.to_fair(strict_bk.asarray(w)))
        np.testing.assert_array_equal(strict_bk.to_numpy(back), w)


@pytest.mark.parametrize("case", CASES_2D_3D)
def test_float32(bk, case):
    t = CASES[case]
    x, w = _points(t), _params(t)
    y = bk.jit(t)(bk.asarray(w, dtype="float32"), bk.asarray(x, dtype="float32"))
    assert y.dtype == bk.xp.float32
    assert_close(bk, y, _reference(t, w, x), rtol=rtol("float32"))
    assert t.identity(bk.xp, dtype=bk.xp.float32).dtype == bk.xp.float32


# ---------------------------------------------------------------------------- bad input


def test_bad_arrays_name_the_argument(bk):
    t, x = Rigid(2), bk.asarray(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"w must have shape \(3,\)"):
        t(bk.asarray(np.zeros(4)), x)
    with pytest.raises(ValueError, match=r"w must have shape \(3,\)"):
        t(bk.asarray(np.zeros((3, 1))), x)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        t(t.identity(bk.xp), bk.asarray(np.zeros((5, 3))))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        t(t.identity(bk.xp), bk.asarray(np.zeros(2)))
    with pytest.raises(TypeError, match="w must be an array, not list"):
        t([0.0, 0.0, 0.0], x)
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        t(t.identity(bk.xp), bk.xp.zeros((5, 2), dtype=bk.xp.int32))
    with pytest.raises(TypeError, match=r"w has dtype .* but x has dtype"):
        t(t.identity(bk.xp, dtype=bk.xp.float32), x)
    with pytest.raises(ValueError, match=r"w must have shape \(40,\)"):
        CASES["bspline2"].to_fair(bk.asarray(np.zeros(20)))
    with pytest.raises(ValueError, match=r"w must have shape \(6,\)"):
        Affine(2).matrix(bk.asarray(np.zeros(5)))


def test_mixed_frameworks_are_refused(all_ad):
    torch_bk, jax_bk = all_ad
    with pytest.raises(TypeError, match="w and x must come from one array library"):
        Rigid(2)(torch_bk.asarray(np.zeros(3)), jax_bk.asarray(np.zeros((4, 2))))


def test_checks_hold_under_jit(ad_bk):
    t = CASES["affine3"]
    f = ad_bk.jit(lambda w, x: t(w, x))
    x = ad_bk.asarray(_points(t))
    y = f(ad_bk.asarray(_params(t)), x)
    assert tuple(y.shape) == (N, 3)
    with pytest.raises(ValueError, match=r"w must have shape \(12,\)"):
        f(ad_bk.asarray(np.zeros(9)), x)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Translation(4), ValueError, r"dim must be one of \(1, 2, 3\)"),
        (lambda: Affine(0), ValueError, r"dim must be one of \(1, 2, 3\) for affine"),
        (lambda: Rigid(1), ValueError, r"dim must be one of \(2, 3\) for rigid"),
        (lambda: Rigid(2.0), TypeError, "dim must be an integer, not float"),
        (lambda: Rigid(True), TypeError, "dim must be an integer, not bool"),
        (lambda: Rigid(2, center=(1.0,)), ValueError, "center must have dim = 2 entries"),
        (lambda: Affine(2, center="ab"), TypeError, "center must be a sequence"),
        (lambda: Affine(2, center=(0.0, np.nan)), ValueError, "center must be finite"),
        (lambda: BSpline((0, 1, 0, 1), (4, 0)), ValueError, "p must be positive"),
        (lambda: BSpline((0, 1, 0, 1), (4, -2)), ValueError, "p must be positive"),
        (lambda: BSpline((0, 1), (4,)), ValueError, "p must have 2 or 3 entries"),
        (lambda: BSpline((0, 1, 0, 1), (4, 2.5)), TypeError, "p must be a sequence of integers"),
        (lambda: BSpline((0, 1, 0, 1), 4), TypeError, "p must be a sequence of integers"),
        (lambda: BSpline((0, 1, 0, 1, 0, 1), (4, 4)), ValueError, r"omega must have 2\*len\(p\)"),
        (lambda: BSpline((1, 0, 0, 1), (4, 4)), ValueError, "omega needs a_k < b_k"),
        (lambda: transform("elastic", 2), ValueError, "name must be one of 'translation'"),
        (lambda: transform("rigid", 2, centre=(0, 0)), TypeError, "unknown option.*'centre'"),
        (lambda: transform("translation", 2, center=(0, 0)), TypeError, "allowed: none"),
        (lambda: transform("affine"), TypeError, "transform 'affine' needs dim"),
        (lambda: transform("bspline", omega=(0, 1, 0, 1)), TypeError, "needs option.*'p'"),
        (lambda: transform("bspline", 3, omega=(0, 1, 0, 1), p=(2, 2)), ValueError, "disagrees"),
    ],
)
def test_bad_construction_names_the_argument(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_factory():
    assert set(TRANSFORMS) == {"translation", "rigid", "affine", "bspline"}
    assert transform("translation", 3) == Translation(3)
    assert transform("rigid", 2, center=(1, 2)) == Rigid(2, center=(1.0, 2.0))
    assert transform("affine", 3).n_params == 12
    t = transform("bspline", omega=(0, 1, 0, 2, 0, 3), p=(2, 3, 4))
    assert (t.dim, t.n_params, t.name) == (3, 72, "bspline")
    assert transform("bspline", 2, omega=(0, 1, 0, 1), p=np.array([2, 2])).p == (2, 2)
    assert {(k, CASES[k].n_params) for k in ("rigid2", "rigid3", "affine2", "translation3")} == {
        ("rigid2", 3),
        ("rigid3", 6),
        ("affine2", 6),
        ("translation3", 3),
    }
    assert hash(Rigid(3, center=(0, 0, 0))) == hash(Rigid(3, center=(0.0, 0.0, 0.0)))


# ------------------------------------------------------------------------------ properties


@given(
    case=st.sampled_from(sorted(CASES)),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(0.0, 3.0),
)
def test_backends_agree_on_random_input(all_ad, np_bk, case, seed, scale):
    t = CASES[case]
    x, w = _points(t, seed=seed), _params(t, seed=seed, scale=scale)
    ref = _reference(t, w, x)
    for bk in [*all_ad, np_bk]:
        assert_close(bk, bk.jit(t)(bk.asarray(w), bk.asarray(x)), ref, rtol=1e-12)


@given(
    dim=st.sampled_from([2, 3]),
    seed=st.integers(0, 2**32 - 1),
    center=st.booleans(),
)
def test_rigid_preserves_distances_and_conjugates_the_center(bk, dim, seed, center):
    rng = np.random.default_rng(seed)
    c = tuple(rng.uniform(-3, 3, dim)) if center else None
    t = Rigid(dim, center=c)
    w = rng.uniform(-np.pi, np.pi, t.n_params)
    x = rng.uniform(-5, 5, (N, dim))
    y = bk.to_numpy(t(bk.asarray(w), bk.asarray(x)))  # eager: every example has another t

    def distances(z):
        return np.linalg.norm(z[:, None, :] - z[None, :, :], axis=-1)

    np.testing.assert_allclose(distances(y), distances(x), rtol=1e-12, atol=1e-12)
    if center:  # y = R (x - c) + c + t
        shifted = bk.to_numpy(Rigid(dim)(bk.asarray(w), bk.asarray(x - c))) + c
        np.testing.assert_allclose(y, shifted, rtol=1e-12, atol=1e-12)
