"""FAIR-exact options (issue 14.3): each against values worked out by hand on tiny cases.

- NGF's end cells: FAIR's NGFdot.m divides the one-sided boundary difference by 2h;
- MLIR prolongation: FAIR's mfPu copies the outer coarse displacement into the outer half cells;
- MI in Gauss–Newton form: FAIR's rhoSplineC joint histogram is the residual;
- det ∇y as FAIR's geometry 'Jac' on the grid carried to the nodes;
- the Gauss–Newton system solved exactly (FAIR's backslash) instead of PCG at rtol 0.1;
- ``register(fair_compat=True)`` is the set of named options, each usable on its own.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from multireg import Domain, gridops, optimize, register
from multireg.data import FAIR_EXAMPLES, blobs, fair_data_dir, load_fair
from multireg.distances import MI, NGF, MIGaussNewton, distance, rescaled
from multireg.optimize import LinearOperator, Objective, Status
from multireg.testing import taylor_test
from multireg.workflow.metrics import fair_jacobian_determinant

# ------------------------------------------------------------------------------------- NGF


def _ngf_case():
    """T = R = x1 + 2 x2 on a 4×3 grid of unit cells, edge 1."""
    domain = Domain((0.0, 4.0, 0.0, 3.0), (4, 3))
    i, j = np.meshgrid(np.arange(4.0), np.arange(3.0), indexing="ij")
    return domain, i + 2.0 * j


def test_ngf_fair_boundary_halves_the_one_sided_difference(bk):
    domain, T = _ngf_case()
    Tb = bk.asarray(T, dtype="float64")
    # by hand: ∂1 = 1 inside, (T[1] - T[0]) / (2h) = 1/2 in the first and last row (FAIR);
    # ∂2 = 2 inside, 2/2 = 1 in the first and last column. Default: the true slopes 1 and 2.
    g1 = np.array([0.5, 1.0, 1.0, 0.5])[:, None] * np.ones((1, 3))
    g2 = np.array([1.0, 2.0, 1.0])[None, :] * np.ones((4, 1))
    gg = g1**2 + g2**2
    fair = (gg / (gg + 1.0)).ravel()  # <∇T, ∇R> / |∇T|_ε |∇R|_ε with T = R, ε = 1
    one_sided = np.full(12, 5.0 / 6.0)  # |∇T|² = 1 + 4 everywhere

    def run(T):  # one compiled call (eager JAX compiles every operation)
        fair, plain = NGF(edge=1.0, boundary="fair"), NGF(edge=1.0)
        return fair.residual(T, T, domain), plain.residual(T, T, domain), fair(T, T, domain)

    got_fair, got, D = (bk.to_numpy(v) for v in bk.jit(run)(Tb))
    np.testing.assert_allclose(got_fair, fair, rtol=1e-14)
    np.testing.assert_allclose(got, one_sided, rtol=1e-14)
    assert float(D) == pytest.approx(12.0 - np.sum(fair**2), rel=1e-14)  # |Ω| - hd Σ r²


def test_ngf_boundary_is_checked_and_survives_rescaling():
    with pytest.raises(ValueError, match="boundary"):
        NGF(boundary="half")
    assert distance("ngf", boundary="fair") == NGF(boundary="fair")
    scaled, power = rescaled(NGF(edge=2.0, boundary="fair"), 3)
    assert scaled == NGF(edge=16.0, boundary="fair") and power == 0


# ---------------------------------------------------------------------------- prolongation


def test_prolongation_of_a_2x2_cell_centred_field():
    coarse, fine = Domain((0.0, 2.0, 0.0, 2.0), (2, 2)), Domain((0.0, 2.0, 0.0, 2.0), (4, 4))
    kind = "cell-centered"
    u = np.array([[1.0, 2.0], [5.0, 3.0]])  # one displacement component; the other is zero
    y = gridops.identity_grid(coarse, kind) + gridops.merge([u, np.zeros((2, 2))])

    def displacement(boundary):
        out = gridops.prolong(y, coarse, fine, kind, boundary=boundary)
        return gridops.split(out - gridops.identity_grid(fine, kind), fine, kind)

    # FAIR (mfPu): along each axis [u0, 3/4 u0 + 1/4 u1, 1/4 u0 + 3/4 u1, u1]
    P = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    # linear: the outer half cells extrapolated, 5/4 u0 - 1/4 u1
    L = np.array([[1.25, -0.25], [0.75, 0.25], [0.25, 0.75], [-0.25, 1.25]])
    c0, c1 = displacement("constant")
    np.testing.assert_allclose(c0, P @ u @ P.T, rtol=1e-14)
    np.testing.assert_allclose(c1, 0.0, atol=1e-15)
    l0, _ = displacement("linear")
    np.testing.assert_allclose(l0, L @ u @ L.T, rtol=1e-14)
    np.testing.assert_array_equal(  # linear is the default
        gridops.prolong(y, coarse, fine, kind),
        gridops.prolong(y, coarse, fine, kind, boundary="linear"),
    )


def test_prolongation_of_a_staggered_field_copies_only_across_cell_centred_axes():
    coarse, fine = Domain((0.0, 2.0, 0.0, 2.0), (2, 2)), Domain((0.0, 2.0, 0.0, 2.0), (4, 4))
    kind = "staggered"
    u = np.array([[1.0, 2.0], [4.0, 0.0], [3.0, 6.0]])  # component 1: nodal along axis 0
    y = gridops.identity_grid(coarse, kind) + gridops.merge([u, np.zeros((2, 3))])
    out = gridops.prolong(y, coarse, fine, kind, boundary="constant")
    u1, u2 = gridops.split(out - gridops.identity_grid(fine, kind), fine, kind)
    N = np.array([[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]])  # nodes
    C = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])  # FAIR's cell-centred expansion
    np.testing.assert_allclose(u1, N @ u @ C.T, rtol=1e-14)
    np.testing.assert_allclose(u2, 0.0, atol=1e-15)


def test_prolongation_boundary_is_checked():
    d = Domain((0.0, 1.0, 0.0, 1.0), (2, 2))
    y = gridops.identity_grid(d, "nodal")
    with pytest.raises(ValueError, match="boundary"):
        gridops.prolong(y, d, Domain((0.0, 1.0, 0.0, 1.0), (4, 4)), "nodal", boundary="copy")


# -------------------------------------------------------------------------------------- MI


def _rho_spline_c(T, R, lo, hi, nT, nR):
    """FAIR's rhoSplineC loop, transcribed cell by cell (indices p+2 .. p-1, weights st)."""
    wT, wR = (hi - lo) / nT, (hi - lo) / nR
    NT, NR = nT + 4, nR + 4
    rho = np.zeros((NT, NR))

    def spline(v, lo_ext, w):
        t = (v - lo_ext) / w + 0.5
        p = int(np.floor(t))
        f = t - p
        s0 = f**3 / 6
        s3 = 1 / 6 + f * (f - 1) / 2 - s0
        s1 = f - 2 * s0 + s3
        return [(p + 2, s0), (p + 1, s1), (p, 1 - s0 - s1 - s3), (p - 1, s3)]

    for t, r in zip(T.ravel(), R.ravel(), strict=True):
        for i, a in spline(t, lo - 2 * wT, wT):
            for j, b in spline(r, lo - 2 * wR, wR):
                if 0 <= i < NT and 0 <= j < NR:
                    rho[i, j] += a * b / T.size
    return rho


def test_mi_gauss_newton_histogram_by_hand(bk):
    # two cells, T = R = (0, 1), one bin over [0, 1] (+ 4 guards): the bin coordinate is
    # v + 2.5, so 0 spreads (1, 23, 23, 1)/48 over bins 1..4 and 1 spreads (1, 23, 23)/48
    # over bins 2..4 (its 1/48 for bin 5 is dropped, as in FAIR)
    domain = Domain((0.0, 2.0, 0.0, 1.0), (2, 1))
    T = np.array([[0.0], [1.0]])
    D = MIGaussNewton(bins_T=1, bins_R=1, range_T=(0, 1), range_R=(0, 1))
    w0 = np.array([0, 1, 23, 23, 1]) / 48
    w1 = np.array([0, 0, 1, 23, 23]) / 48
    rho = 0.5 * (np.outer(w0, w0) + np.outer(w1, w1))

    def run(T):
        r = D.residual(T, T, domain)
        return r, D.outer(r, T, domain), D.gn_weight(r, T, domain)

    r, value, weight = (bk.to_numpy(v) for v in bk.jit(run)(bk.asarray(T, dtype="float64")))
    np.testing.assert_allclose(r, rho.ravel(), rtol=1e-14, atol=1e-17)
    m1, m2 = rho.sum(1), rho.sum(0)
    tau = 1e-6
    psi = m1 @ np.log(m1 + tau) + m2 @ np.log(m2 + tau) - np.sum(rho * np.log(rho + tau))
    assert float(value) == pytest.approx(psi, rel=1e-13)
    # FAIR's heuristic weight log2(n) sqrt(nT nR) with the guards counted: 1 · 5
    assert float(weight) == pytest.approx(5.0)


def test_mi_gauss_newton_matches_fairs_estimator_on_random_data(bk):
    domain = Domain((0.0, 1.0, 0.0, 1.0), (6, 5))
    rng = np.random.default_rng(3)
    T, R = rng.uniform(0, 255, domain.m), rng.uniform(0, 255, domain.m)
    D = MIGaussNewton(range_T=(0, 256), range_R=(0, 256))  # FAIR's defaults
    got = bk.to_numpy(bk.jit(lambda T, R: D.residual(T, R, domain))(bk.asarray(T), bk.asarray(R)))
    np.testing.assert_allclose(got, _rho_spline_c(T, R, 0.0, 256.0, 32, 30).ravel(), atol=1e-16)
    assert D.gauss_newton and D.residual_radius is None


def test_mi_gauss_newton_residual_and_value_are_differentiated_exactly(ad_bk):
    """ρ(T + tv) - ρ(T) - t J_ρ v and the same for D fall like t² (Taylor test)."""
    domain = Domain((0.0, 1.0, 0.0, 1.0), (6, 5))
    rng = np.random.default_rng(4)
    T, R = ad_bk.asarray(rng.uniform(0, 1, domain.m)), ad_bk.asarray(rng.uniform(0, 1, domain.m))
    v = ad_bk.asarray(0.05 * rng.standard_normal(domain.m))
    D = MIGaussNewton(bins_T=8, bins_R=6, range_T=(0, 1), range_R=(0, 1))
    for f in (lambda T: D.residual(T, R, domain), lambda T: D(T, R, domain)):
        result = taylor_test(ad_bk, ad_bk.jit(f), T, v, t0=0.5)
        assert result.order == pytest.approx(2.0, abs=0.2), result


def test_mi_gauss_newton_options_are_checked():
    with pytest.raises(TypeError, match="bins_T"):
        MIGaussNewton(bins_T=2.5)
    with pytest.raises(ValueError, match="range_R"):
        MIGaussNewton(range_R=(1, 1))
    assert distance("mi-gn", bins_T=8) == MIGaussNewton(bins_T=8)
    scaled, power = rescaled(MIGaussNewton(range_T=(0, 1)), 2)
    assert scaled.range_T == (0.0, 4.0) and scaled.range_R is None and power == 0


# ---------------------------------------------------------------------------- det ∇y (FAIR)


def test_fair_det_of_a_nodal_3x3_map_with_one_fold():
    domain = Domain((0.0, 3.0, 0.0, 3.0), (3, 3))
    y1, y2 = gridops.split(gridops.identity_grid(domain, "nodal"), domain, "nodal")
    y1, y2 = y1.copy(), y2.copy()
    y1[1, 1] = y2[1, 1] = 2.5  # node (1, 1) pushed past the centre of cell (1, 1)
    y = gridops.merge([y1, y2])
    # by hand, area = ½ (D - A) × (C - B) per cell (A, B, C, D its corners):
    # cell (0,0): ½ (2.5, 2.5) × (-1, 1) = 2.5; cells (1,0), (0,1): 1; cell (1,1): -0.5
    expected = np.ones((3, 3))
    expected[0, 0], expected[1, 1] = 2.5, -0.5
    np.testing.assert_allclose(fair_jacobian_determinant(y, domain, "nodal"), expected, atol=1e-15)


def test_fair_det_of_a_staggered_map_averages_a_fold_away():
    """One face of a 3×3 staggered map moved by 1.5 cells: multireg's compact difference folds
    the cell, FAIR's nodal average does not."""
    domain = Domain((0.0, 3.0, 0.0, 3.0), (3, 3))
    y1, y2 = gridops.split(gridops.identity_grid(domain, "staggered"), domain, "staggered")
    y1 = y1.copy()
    y1[1, 1] += 1.5
    y = gridops.merge([y1, y2])
    # FAIR: component 1 carried to the nodes along axis 2 (means inside, 1.5 u0 - 0.5 u1 at
    # the ends) moves node column 1 by (-0.75, 0.75, 0.75, -0.75); a cell's area changes by
    # ±½ (δ_top + δ_bottom) of that column: +0.75 in cell (0,1), -0.75 in cell (1,1)
    expected = np.ones((3, 3))
    expected[0, 1], expected[1, 1] = 1.75, 0.25
    np.testing.assert_allclose(fair_jacobian_determinant(y, domain, "staggered"), expected,
                               atol=1e-15)  # fmt: skip
    # multireg: ∂1 y1 in cell (1,1) = (2 - 2.5) / 1 = -0.5, the cross terms vanish
    own = np.asarray(gridops.jacobian_determinant(y, domain, "staggered"))
    assert own[1, 1] == pytest.approx(-0.5)


def test_fair_det_is_det_a_for_affine_maps_on_every_grid():
    rng = np.random.default_rng(1)
    for domain in (Domain((0, 2, 0, 3), (4, 5)), Domain((0, 2, 0, 3, 1, 2), (3, 4, 5))):
        A = np.eye(domain.dim) + 0.3 * rng.standard_normal((domain.dim, domain.dim))
        for kind in gridops.KINDS:
            parts = gridops.split(gridops.identity_grid(domain, kind), domain, kind)
            if kind == "staggered":
                pts = [g @ A.T for g in domain.staggered()]
                comps = [pts[k][:, k].reshape(parts[k].shape) for k in range(domain.dim)]
            else:
                pts = np.stack([p.ravel() for p in parts], axis=1) @ A.T
                comps = [pts[:, k].reshape(parts[k].shape) for k in range(domain.dim)]
            det = fair_jacobian_determinant(gridops.merge(comps), domain, kind)
            np.testing.assert_allclose(det, np.linalg.det(A), rtol=1e-12)


def test_fair_det_checks_its_arguments():
    d = Domain((0.0, 1.0, 0.0, 1.0), (3, 3))
    with pytest.raises(ValueError, match="kind"):
        fair_jacobian_determinant(gridops.identity_grid(d, "nodal"), d, "corner")
    with pytest.raises(ValueError, match="length"):
        fair_jacobian_determinant(np.zeros(5), d, "nodal")


# ------------------------------------------------------------------------- exact GN solve


def _quadratic(bk, p):
    """J(x) = ½ xᵀAx - bᵀx with a matrix-free, badly conditioned SPD A (condition 1e4)."""
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    A = (Q * np.logspace(0, 4, p)) @ Q.T
    b = rng.standard_normal(p)
    Ab, bb = bk.asarray(A, dtype="float64"), bk.asarray(b, dtype="float64")

    def value(x):
        return 0.5 * x @ (Ab @ x) - bb @ x

    objective = Objective(
        bk=bk,
        value=value,
        value_and_grad=lambda x: (value(x), Ab @ x - bb),
        hessian=lambda x: LinearOperator(matvec=lambda v: Ab @ v),
        exact_hessian=lambda x: LinearOperator(matvec=lambda v: Ab @ v),
        curvature="gauss-newton",
    )
    return objective, np.linalg.solve(A, b)


@pytest.mark.parametrize("direct_max", [1024, 0])  # formed and solved; tight PCG
def test_direct_linear_solver_takes_the_exact_gauss_newton_step(ad_bk, monkeypatch, direct_max):
    monkeypatch.setattr(sys.modules["multireg.optimize.newton"], "DIRECT_MAX", direct_max)
    objective, x_star = _quadratic(ad_bk, 40)
    x0 = ad_bk.asarray(np.zeros(40), dtype="float64")
    exact = optimize.gauss_newton(objective, x0, max_iter=1, linear_solver="direct")
    truncated = optimize.gauss_newton(objective, x0, max_iter=1)  # PCG at rtol 0.1
    err = np.linalg.norm(ad_bk.to_numpy(exact.x) - x_star) / np.linalg.norm(x_star)
    assert err < 1e-8
    assert np.linalg.norm(ad_bk.to_numpy(truncated.x) - x_star) / np.linalg.norm(x_star) > 1e-3


def test_linear_solver_is_checked(ad_bk):
    objective, _ = _quadratic(ad_bk, 4)
    with pytest.raises(ValueError, match="linear_solver"):
        optimize.gauss_newton(objective, ad_bk.asarray(np.zeros(4)), linear_solver="lu")


# ------------------------------------------------------------------------------ register()

SMALL = dict(transform="nonparametric", alpha=1.0, levels=2, max_iter=3, pre_registration=None)


def _small_pair():
    m, omega = (16, 16), (0.0, 1.0, 0.0, 1.0)
    R, _ = blobs(m, omega, seed=0)
    T, _ = blobs(m, omega, seed=1)
    return 255 * T, 255 * R, omega


@pytest.mark.slow  # JAX compiles the registration kernels: 20-50 s
def test_fair_compat_is_the_set_of_named_options(ad_bk):
    T, R, omega = _small_pair()
    # SSD: NGF's boundary is tested above, and every new distance costs JAX a compilation
    fair = register(T, R, omega, fair_compat=True, backend=ad_bk, **SMALL)
    named = register(
        T, R, omega, linear_solver="direct", prolongation="constant", det_method="fair",
        backend=ad_bk, **SMALL,
    )  # fmt: skip
    default = register(T, R, omega, backend=ad_bk, **SMALL)
    y_fair, y_named = ad_bk.to_numpy(fair.y_grid), ad_bk.to_numpy(named.y_grid)
    np.testing.assert_array_equal(y_fair, y_named)
    assert fair.distance == named.distance and fair.det_min == named.det_min
    assert np.max(np.abs(y_fair - ad_bk.to_numpy(default.y_grid))) > 1e-8


@pytest.mark.slow  # JAX compiles the registration kernels: 20-50 s
def test_fair_compat_gives_mi_a_gauss_newton_form(ad_bk):
    T, R, omega = _small_pair()
    with pytest.raises(ValueError, match="Gauss"):
        register(T, R, omega, distance="mi", backend=ad_bk, **SMALL)
    out = register(T, R, omega, distance="mi", fair_compat=True, backend=ad_bk,
                   **{**SMALL, "levels": 1})  # fmt: skip
    assert np.isfinite(out.distance) and out.distance < 0  # -MI
    assert out.levels[-1].result.iterations >= 1


def test_fair_mi_takes_fairs_range_only_for_data_inside_it():
    from multireg.problems.registration import _fair_distance

    T, R = np.zeros((4, 4)), np.full((4, 4), 255.0)
    assert _fair_distance(MI(), T, R, given=False) == MIGaussNewton(
        range_T=(0, 256), range_R=(0, 256)
    )
    assert _fair_distance(MI(), T, R / 255 - 2, given=False) == MIGaussNewton()
    assert _fair_distance(MI(bins_T=10, range_R=(0, 1)), T, R, given=True) == MIGaussNewton(
        bins_T=7, bins_R=29, range_R=(0, 1)
    )


@pytest.mark.parametrize(
    "option, value, error",
    [("fair_compat", "yes", TypeError), ("linear_solver", "lu", ValueError),
     ("prolongation", "cubic", ValueError), ("det_method", "exact", ValueError)],
)  # fmt: skip
def test_bad_fair_options_are_refused_naming_them(option, value, error):
    T, R, omega = _small_pair()
    with pytest.raises(error, match=option):
        register(T, R, omega, backend="numpy", **SMALL, **{option: value})


# ----------------------------------------------------------------- FAIR's images (optional)


FAIR_HANDS_MLIR = dict(
    transform="nonparametric", regularizer="elastic", alpha=1e3, mu=1.0, lam=0.0, theta=1e-2,
    levels=(3, 7), pre_registration="affine", max_iter=10,
)  # E9_Hands_MLIR_SSD_mbElas  # fmt: skip


@pytest.mark.fair_data
@pytest.mark.slow
def test_fair_compat_on_the_hands_elastic_mlir():
    """FAIR's E9_Hands_MLIR_SSD_mbElas settings (matrix-based elastic: backslash).

    Measured (torch): D = 25735.26 by default, 25372.53 with fair_compat (-1.41 %, the gap the
    issue measured between multireg and FAIR), 23 s. No FAIR elastic result ships with the
    data: give FAIR's final D in ``MULTIREG_FAIR_HANDS_ELASTIC_D`` to check that fair_compat
    moves D towards it; without it only the size of the change is checked."""
    folder = fair_data_dir()
    if folder is None or not all((folder / f).is_file() for f in FAIR_EXAMPLES["hands"][:2]):
        pytest.skip("FAIR's hands images not found (set MULTIREG_FAIR_DATA to their folder)")
    pytest.importorskip("PIL")
    pytest.importorskip("torch")
    T, R, domain = load_fair("hands", folder)
    default = register(T, R, domain.omega, **FAIR_HANDS_MLIR, backend="torch")
    fair = register(T, R, domain.omega, **FAIR_HANDS_MLIR, fair_compat=True, backend="torch")
    assert fair.status is default.status is Status.CONVERGED
    change = (fair.distance - default.distance) / default.distance
    assert 1e-4 < abs(change) < 0.02
    reference = os.environ.get("MULTIREG_FAIR_HANDS_ELASTIC_D")
    if reference is not None:
        d_fair = float(reference)
        assert abs(fair.distance - d_fair) < abs(default.distance - d_fair)


def test_register_takes_mi_gn_by_name():
    """'mi-gn' is a distance name of multireg.distance(), and register() accepts it too."""
    pytest.importorskip("torch")
    T, R, omega = _small_pair()
    options = dict(transform="translation", levels=1, max_iter=3, backend="torch")
    by_name = register(T, R, omega, distance="mi-gn", **options)
    by_object = register(T, R, omega, distance=MIGaussNewton(), **options)
    np.testing.assert_array_equal(np.asarray(by_name.w), np.asarray(by_object.w))
    assert np.isfinite(by_name.distance)
