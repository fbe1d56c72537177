"""register(): recovery of known maps, invariants, framework agreement, statuses, bad input.

The synthetic problems are built so that their answer is known exactly: R = T(y(w_true, x)) with
the image model that register() uses (cubic spline, theta = 0), so T(y(w_true)) == R and SSD and
NCC vanish at w_true. Noise bounds come from first-order least-squares theory: under white
noise of std sigma the estimate's error has std sigma·sqrt(diag((JᵀJ)⁻¹)), J = ∂T(y(w, x))/∂w
computed here by central differences on the NumPy side, independently of the code under test.

JAX compiles each registration configuration (backend, transformation, distance, regulariser,
level sizes) once per process, which dominates this file's time; the tests therefore share the
image sizes (32×24 in 2D, 12×10×8 in 3D) and transformations, and each test makes several
registrations of one configuration. FAIR's images (``MULTIREG_FAIR_DATA``) are optional.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from multireg import Affine, ImageModel, register, transform
from multireg.data import FAIR_EXAMPLES, blobs, fair_data_dir, load_fair
from multireg.optimize import Status

OMEGA2 = (0.0, 2.0, 0.0, 1.5)  # h = (1/16, 1/16); a non-square box catches swapped axes
T2, DOMAIN2 = blobs((32, 24), OMEGA2)
OMEGA3 = (0.0, 1.2, 0.0, 1.0, 0.0, 0.8)
T3, DOMAIN3 = blobs((12, 10, 8), OMEGA3, n_blobs=4, seed=3)
MODEL = ImageModel("spline")  # what register() uses by default (theta = 0)
TIGHT_TOL = dict(tol_j=1e-14, tol_y=1e-14, tol_g=1e-14)
TIGHT = dict(max_iter=50, **TIGHT_TOL)
NOISE = 0.01  # 1% of the image range [0, 1]

# known parameters (FAIR's layouts), moving points by up to 1 cell (translation, rigid, affine)
# and 3.5 cells (B-spline, whose tensor-product basis sums to 36 times a coefficient)
CASES = {
    "translation": (transform("translation", dim=2), np.array([0.05, -0.04])),
    "rigid": (transform("rigid", dim=2), np.array([0.05, 0.03, -0.04])),
    "affine": (transform("affine", dim=2), np.array([1.02, 0.03, -0.02, -0.02, 0.97, 0.03])),
    "bspline": (
        transform("bspline", omega=OMEGA2, p=(4, 4)),
        np.round(0.004 * np.random.default_rng(7).standard_normal(32), 4),
    ),
}
W_FAR = np.array([1.1, 0.1, -0.1, -0.08, 0.92, 0.1])  # affine, up to 3.9 cells: a harder problem


def _warp(data, domain, trafo, w):
    """T(y(w, x)) on the cell centres of ``domain``, by the model register() uses (NumPy)."""
    y = trafo(np.asarray(w, dtype=np.float64), domain.cell_centers(np))
    return np.reshape(MODEL.evaluate(MODEL.coefficients(data), domain, y), domain.m)


def _predicted_std(data, domain, trafo, w, sigma):
    """sigma·sqrt(diag((JᵀJ)⁻¹)): the first-order std of the least-squares estimate of w."""
    eps = 1e-6
    columns = [
        (_warp(data, domain, trafo, w + eps * e) - _warp(data, domain, trafo, w - eps * e)).ravel()
        / (2 * eps)
        for e in np.eye(len(w))
    ]
    J = np.stack(columns, axis=1)
    return sigma * np.sqrt(np.diag(np.linalg.inv(J.T @ J)))


def _smoothly_deformed(data, domain, amplitude):
    """data(x + u(x)) for a smooth u that vanishes on the boundary (a nonparametric problem)."""
    x = domain.cell_centers(np)
    s = [np.pi * (x[:, k] - a) / e for k, (a, e) in enumerate(zip(domain.lower, domain.extent))]
    bump = np.prod([np.sin(sk) for sk in s], axis=0)
    u = amplitude * np.stack([bump * np.cos(s[(k + 1) % len(s)]) for k in range(len(s))], axis=1)
    y = x + u
    return np.reshape(MODEL.evaluate(MODEL.coefficients(data), domain, y), domain.m)


def _host(bk, a):
    return np.asarray(bk.to_numpy(a), dtype=np.float64)


# --------------------------------------------------------------------- parametric recovery


@pytest.mark.parametrize("name", list(CASES))
def test_parametric_recovers_a_known_map_and_the_identity(ad_bk, name):
    trafo, w_true = CASES[name]
    p = trafo.p if name == "bspline" else None
    R = _warp(T2, DOMAIN2, trafo, w_true)
    w_id = trafo.identity(np)

    # noise-free, the inputs as backend arrays (which selects the backend): exact recovery
    Tb, Rb = ad_bk.asarray(T2), ad_bk.asarray(R)
    T_before, R_before = _host(ad_bk, Tb).copy(), _host(ad_bk, Rb).copy()
    out = register(Tb, Rb, OMEGA2, transform=name, p=p, **TIGHT)
    # register() leaves its inputs alone
    np.testing.assert_array_equal(_host(ad_bk, Tb), T_before)
    np.testing.assert_array_equal(_host(ad_bk, Rb), R_before)
    assert out.backend == ad_bk.name
    w = _host(ad_bk, out.w)
    assert np.max(np.abs(w - w_true)) < 1e-6, (w - w_true, out.levels[-1].result.message)
    assert out.distance < 1e-20 and out.reduction < 1e-15
    assert tuple(out.y.shape) == (DOMAIN2.n, 2) and tuple(out.warped.shape) == DOMAIN2.m
    assert out.y_grid is None and out.det_min is None
    np.testing.assert_allclose(_host(ad_bk, out.warped), R, atol=1e-8)

    # 1% white noise: the error stays within 4 predicted standard deviations (first-order
    # least squares; measured: at most 2.4 of them (rigid), errors at most 3.5e-3)
    noisy = R + NOISE * np.random.default_rng(1).standard_normal(R.shape)
    out = register(T2, noisy, OMEGA2, transform=name, p=p, backend=ad_bk, **TIGHT)
    err = np.abs(_host(ad_bk, out.w) - w_true)
    std = _predicted_std(T2, DOMAIN2, trafo, w_true, NOISE)
    assert np.all(err <= 4 * std), err / std
    assert np.max(err) < 1e-2

    # an image registered to itself: the identity, at once
    out = register(T2, T2, OMEGA2, transform=name, p=p, backend=ad_bk.name, **TIGHT)
    np.testing.assert_allclose(_host(ad_bk, out.w), w_id, rtol=0, atol=1e-10)
    assert out.success and out.iterations == (0,)


# ------------------------------------------------------------------------ nonparametric 2D

# FAIR's default tolerances are relative to 1 + J(identity); for images in [0, 1] J is small
# and they stop after one Gauss–Newton step, so the nonparametric tests tighten them
NP_OPTIONS = dict(alpha=1e-2, max_iter=30, tol_j=1e-6, tol_y=1e-6, tol_g=1e-6)
T2_DEFORMED = _smoothly_deformed(T2, DOMAIN2, 0.1)  # moves points by up to 1.6 cells


def _grid_size(domain, regularizer):
    """Unknowns of the regulariser's grid: staggered (elastic, diffusive) or cell-centred."""
    if regularizer == "curvature":
        return domain.dim * domain.n
    return sum(
        int(np.prod(np.add(domain.m, np.eye(domain.dim, dtype=int)[k]))) for k in range(domain.dim)
    )


# elastic runs on two levels (the multilevel path: prolongation, y_ref on each level); the other
# two on one level, whose affine pre-registration shares the 32×24 affine compilation
NP_LEVELS = {"elastic": 2, "diffusive": None, "curvature": None}


@pytest.mark.parametrize("regularizer", list(NP_LEVELS))
def test_nonparametric_reduces_the_distance_without_folding(ad_bk, regularizer):
    levels = NP_LEVELS[regularizer]
    out = register(
        T2_DEFORMED, T2, OMEGA2, transform="nonparametric", regularizer=regularizer,
        levels=levels, backend=ad_bk, **NP_OPTIONS,
    )  # fmt: skip
    # measured reductions: elastic 0.019, diffusive 0.015, curvature 0.076; det_min >= 0.90
    assert out.reduction < 0.1, out.reduction
    assert out.det_min is not None and out.det_min > 0.5, out.det_min
    assert out.success, [lv.result.message for lv in out.levels]
    assert out.transform == "nonparametric" and out.backend == ad_bk.name
    sizes = [(16, 12), (32, 24)] if levels == 2 else [(32, 24)]
    assert [(lv.stage, lv.domain.m) for lv in out.levels] == [
        ("parametric", sizes[0]),  # the affine pre-registration on the coarsest level
        *(("nonparametric", m) for m in sizes),
    ]
    assert min(out.iterations) > 2
    assert out.distance == out.levels[-1].distance
    if levels == 2:  # the fine level starts from the coarse solution (measured J ratio 0.43)
        coarse, fine = (lv.result.history[0].fun for lv in out.levels[1:])
        assert fine < 0.7 * coarse, (fine, coarse)
    assert tuple(out.w.shape) == (6,)
    assert tuple(out.y.shape) == (DOMAIN2.n, 2)
    assert tuple(out.y_grid.shape) == (_grid_size(DOMAIN2, regularizer),)
    assert tuple(out.warped.shape) == DOMAIN2.m
    # warped is T at y; distance and reduction are SSD's 0.5·prod(h)·|T(y) − R|² and its ratio
    warped = _host(ad_bk, out.warped)
    y = _host(ad_bk, out.y)
    expected = np.reshape(MODEL.evaluate(MODEL.coefficients(T2_DEFORMED), DOMAIN2, y), DOMAIN2.m)
    np.testing.assert_allclose(warped, expected, rtol=0, atol=1e-12)
    ssd = 0.5 * DOMAIN2.cell_volume * np.sum((warped - T2) ** 2)
    np.testing.assert_allclose(out.distance, ssd, rtol=1e-10)
    ssd_identity = 0.5 * DOMAIN2.cell_volume * np.sum((T2_DEFORMED - T2) ** 2)
    np.testing.assert_allclose(out.reduction, ssd / ssd_identity, rtol=1e-10)

    # an image registered to itself: the grid, untouched
    out = register(
        T2, T2, OMEGA2, transform="nonparametric", regularizer=regularizer, levels=levels,
        backend=ad_bk, **NP_OPTIONS,
    )  # fmt: skip
    np.testing.assert_allclose(_host(ad_bk, out.y), DOMAIN2.cell_centers(np), rtol=0, atol=1e-10)
    assert out.success and out.distance < 1e-25 and out.det_min == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------- torch and JAX agree exactly


def _agreement(results, bks):
    """The parameters (relative 1e-8) and every level's iteration count agree."""
    (a, ka), (b, kb) = zip(results, bks, strict=True)
    assert a.iterations == b.iterations, (a.iterations, b.iterations)
    assert [lv.result.status for lv in a.levels] == [lv.result.status for lv in b.levels]
    for name in ("w", "y_grid"):
        u, v = getattr(a, name), getattr(b, name)
        if u is not None:
            u, v = _host(ka, u), _host(kb, v)
            assert np.max(np.abs(u - v)) <= 1e-8 * np.max(np.abs(u)), name


def test_torch_and_jax_agree(all_ad):
    trafo = CASES["affine"][0]
    R = _warp(T2, DOMAIN2, trafo, W_FAR)
    runs = [register(T2, R, OMEGA2, transform="affine", levels=2, backend=bk) for bk in all_ad]
    assert runs[0].iterations[0] > 2 and len(runs[0].levels) == 2
    _agreement(runs, all_ad)

    runs = [
        register(
            T2_DEFORMED, T2, OMEGA2, transform="nonparametric", levels=2, backend=bk, **NP_OPTIONS
        )
        for bk in all_ad
    ]
    assert min(runs[0].iterations) > 2
    _agreement(runs, all_ad)
    assert abs(runs[0].det_min - runs[1].det_min) <= 1e-8


# ---------------------------------------------------------------------------------------- 3D


def test_3d_affine_recovery_and_elastic_registration(ad_bk):
    trafo = Affine(3)
    w_true = np.array([1.02, 0.02, -0.01, -0.02, 0.01, 0.98, 0.03, 0.03, -0.02, 0.01, 1.01, -0.02])
    R = _warp(T3, DOMAIN3, trafo, w_true)
    out = register(T3, R, OMEGA3, transform=trafo, backend=ad_bk, **TIGHT)
    w = _host(ad_bk, out.w)
    assert np.max(np.abs(w - w_true)) < 1e-6, w - w_true
    assert tuple(out.y.shape) == (DOMAIN3.n, 3) and tuple(out.warped.shape) == DOMAIN3.m

    deformed = _smoothly_deformed(T3, DOMAIN3, 0.06)  # up to 0.6 cells
    out = register(
        deformed, T3, OMEGA3, transform="nonparametric", regularizer="elastic", alpha=1e-2,
        backend=ad_bk, max_iter=30, tol_j=1e-4, tol_y=1e-4, tol_g=1e-4,
    )  # fmt: skip
    # measured: reduction 0.028, det_min 0.93, iterations (4, 4)
    assert out.reduction < 0.5, out.reduction
    assert out.det_min > 0, out.det_min
    assert tuple(out.y_grid.shape) == (_grid_size(DOMAIN3, "elastic"),)
    assert tuple(out.warped.shape) == DOMAIN3.m


# ------------------------------------------------------------ distances and optimisers


def test_every_distance_and_method_recovers_a_map(ad_bk):
    trafo, w_true = CASES["translation"]
    R = _warp(T2, DOMAIN2, trafo, w_true)
    # (distance, method, bound): NCC vanishes at w_true, so it is recovered exactly (measured
    # 1e-12); NGF is not minimal at T = R (it rewards strong edges; Newton converges 6.7e-4 from
    # w_true) and its Gauss–Newton matrix is a poor model, so GN stops at max_iter 1.3e-3 away;
    # MI's Parzen estimate is not minimal at w_true either (measured 4.6e-5, L-BFGS and TR).
    # The translation is 0.8 and 0.6 cells, so 2e-3 is 3% of a cell.
    for distance, method, bound in [
        ("ncc", "gauss-newton", 1e-8),
        ("ngf", "gauss-newton", 2e-3),
        ("mi", "lbfgs", 1e-3),
        ("mi", "trust-region", 1e-3),
    ]:
        out = register(
            T2, R, OMEGA2, transform="translation", distance=distance, method=method,
            backend=ad_bk, **(TIGHT if distance == "ncc" else {}),
        )  # fmt: skip
        err = np.max(np.abs(_host(ad_bk, out.w) - w_true))
        assert err < bound, (distance, method, err, out.levels[-1].result.message)
        j_identity = out.distance / out.reduction  # MI is negative: there reduction > 1
        assert out.distance < j_identity - 1e-3 * abs(j_identity), (distance, method)
    with pytest.raises(ValueError, match=r"distance MI has no Gauss–Newton form.*lbfgs"):
        register(T2, R, OMEGA2, transform="translation", distance="mi", backend=ad_bk)

    trafo, w_true = CASES["affine"]
    R = _warp(T2, DOMAIN2, trafo, w_true)
    for method in ("newton", "trust-region"):
        out = register(T2, R, OMEGA2, transform="affine", method=method, backend=ad_bk, **TIGHT)
        err = np.max(np.abs(_host(ad_bk, out.w) - w_true))
        assert err < 1e-6, (method, err, out.levels[-1].result.message)


def test_non_convergence_is_reported_not_raised(ad_bk):
    trafo, _ = CASES["affine"]
    R = _warp(T2, DOMAIN2, trafo, W_FAR)
    out = register(T2, R, OMEGA2, transform="affine", max_iter=1, backend=ad_bk, **TIGHT_TOL)
    assert out.levels[-1].result.status is Status.MAX_ITERATIONS
    assert out.status is Status.MAX_ITERATIONS and not out.success
    assert out.iterations == (1,) and out.reduction < 1.0


# -------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_naming_the_argument():
    T, R = T2, T2_DEFORMED
    nan = T.copy()
    nan[3, 4] = np.nan
    A = (T, R, OMEGA2)
    bad = [
        (ValueError, "T has shape .* R has shape", (T, R[:, :20], OMEGA2), {}),
        (ValueError, "T contains NaN", (nan, R, OMEGA2), {}),
        (ValueError, "R contains NaN", (T, nan, OMEGA2), {}),
        (ValueError, "R is constant", (T, np.ones_like(R), OMEGA2), {}),
        (ValueError, "T must have 2 or 3 dimensions", (T[:, 0], R[:, 0], (0.0, 2.0)), {}),
        (ValueError, "omega", (T, R, (0.0, 1.0)), {}),
        (ValueError, "transform must be one of", A, {"transform": "afine"}),
        (ValueError, "transform is 3D", A, {"transform": Affine(3)}),
        (ValueError, "distance must be one of", A, {"distance": "sdd"}),
        (TypeError, "distance must be", A, {"distance": 3}),
        (ValueError, "method must be one of", A, {"method": "bfgs"}),
        (ValueError, "image_model must be one of", A, {"image_model": "cubic"}),
        (ValueError, "theta", A, {"theta": -1.0}),
        (ValueError, "levels .* selects no level", A, {"levels": (9, 12)}),
        (ValueError, "levels must be between", A, {"levels": 0}),
        (TypeError, "levels must be", A, {"levels": True}),
        (ValueError, "w0 must have shape \\(6,\\)", A, {"w0": np.zeros(5)}),
        (ValueError, "w0 .* NaN", A, {"w0": np.full(6, np.nan)}),
        (ValueError, "needs p", A, {"transform": "bspline"}),
        (ValueError, "p .* applies to", A, {"p": (3, 3)}),
        (ValueError, "max_iter", A, {"max_iter": -1}),
        (TypeError, "max_iter", A, {"max_iter": True}),
        (ValueError, "tol_j", A, {"tol_j": -1.0}),
        (ValueError, "dtype must be one of", A, {"dtype": "float16"}),
        (ValueError, "cannot differentiate", A, {"backend": "numpy"}),
        (ValueError, "unknown backend", A, {"backend": "tensorflow"}),
        (TypeError, "maxiter", A, {"maxiter": 5}),  # misspelt: Python refuses it
        # too small for registration, or for the requested levels (FAIR level 1 is 2×2 here)
        (ValueError, r"shape \(3, 3\).*at least 4 cells", (T[:3, :3], R[:3, :3], OMEGA2), {}),
        (ValueError, "levels must be between 1 and 3", A, {"levels": 4}),
        (ValueError, r"level 1 with m = \(2, 2\).*4 cells.*level 3", A, {"levels": (1, 5)}),
        (ValueError, "levels must be None, 'auto'", A, {"levels": "all"}),
        # no contrast at float64's resolution (not constant: it varies by 2e-16 relative)
        (ValueError, "T has no contrast", (1 + 1e-15 * T, R, OMEGA2), {}),
        (ValueError, "R has no contrast", (T, 1e3 + 1e-12 * R, OMEGA2), {}),
    ]
    np_ = {"transform": "nonparametric", "alpha": 1.0}
    bad += [
        (ValueError, "alpha .* required", A, {"transform": "nonparametric"}),
        (ValueError, "alpha", A, {**np_, "alpha": -1.0}),
        (ValueError, "regularizer must be one of", A, {**np_, "regularizer": "elast"}),
        (ValueError, "pre_registration must be", A, {**np_, "pre_registration": "bspline"}),
        (ValueError, "w0 applies to parametric", A, {**np_, "w0": np.zeros(6)}),
        (ValueError, "mu and lam", A, {**np_, "regularizer": "diffusive", "mu": 2.0}),
        (ValueError, "nonparametric .* method", A, {**np_, "method": "newton"}),
        (TypeError, "callback must be callable", A, {"callback": 1}),
    ]  # fmt: skip
    copies = (T.copy(), R.copy())
    for error, message, args, options in bad:
        with pytest.raises(error, match=message):
            register(*args, **options)
    np.testing.assert_array_equal(T, copies[0])
    np.testing.assert_array_equal(R, copies[1])


# --------------------------------------------------------------- unusual but valid input


@pytest.mark.parametrize("factor", [1e-6, 1e-310, 1e300])
def test_the_units_of_the_intensities_do_not_change_the_registration(ad_bk, factor):
    """Intensities × 1e-6 used to "converge" at once (FAIR's absolute STOP4: ‖∇J‖ ≤ 2.2e-10),
    × 1e-310 likewise (and JAX flushed the subnormal data to 0), × 1e300 overflowed J. Now the
    map is the same as in unit intensities, and distances and images come back in the user's
    units: f² times the unit distance (below or beyond the float range: 0 or inf)."""
    trafo, w_true = CASES["affine"]
    R = _warp(T2, DOMAIN2, trafo, w_true) + NOISE * np.random.default_rng(2).standard_normal(
        T2.shape
    )
    unit = register(T2, R, OMEGA2, backend=ad_bk, **TIGHT)
    out = register(factor * T2, factor * R, OMEGA2, backend=ad_bk, **TIGHT)
    assert out.success and out.iterations[0] > 2, out.levels[-1].result.message
    np.testing.assert_allclose(_host(ad_bk, out.w), _host(ad_bk, unit.w), rtol=0, atol=1e-9)
    np.testing.assert_allclose(out.reduction, unit.reduction, rtol=1e-9)
    np.testing.assert_allclose(
        _host(ad_bk, out.warped), factor * _host(ad_bk, unit.warped), rtol=0, atol=1e-8 * factor
    )
    with np.errstate(over="ignore", under="ignore"):
        expected = np.float64(unit.distance) * factor * factor
    np.testing.assert_allclose(out.distance, expected, rtol=1e-9)
    assert out.intensity_exponent == (0 if factor == 1e-6 else -int(np.frexp(factor)[1]))


def test_an_image_registered_to_itself_converges_at_once_whatever_its_intensities(ad_bk):
    """On hands' domain with intensities up to 1000, ‖∇J‖ at the identity is round-off (1e-8),
    above FAIR's absolute STOP4, and every trial step is round-off too: the line search failed
    (exit 3 for ``multireg register R.png R.png``). The identity is the minimiser."""
    T, _ = blobs((32, 24), (0.0, 20.0, 0.0, 25.0))
    for name in ("affine", "rigid"):
        out = register(1000 * T, 1000 * T, (0.0, 20.0, 0.0, 25.0), transform=name, backend=ad_bk)
        assert out.success and out.iterations == (0,), out.levels[-1].result.message
        np.testing.assert_allclose(
            _host(ad_bk, out.w), transform(name, dim=2).identity(np), rtol=0, atol=1e-14
        )


def test_bool_images_count_as_0_and_1(ad_bk):
    trafo, w_true = CASES["translation"]
    T, R = T2 > 0.4, _warp(T2, DOMAIN2, trafo, w_true) > 0.4
    masks = register(T, R, OMEGA2, transform="translation", backend=ad_bk)
    floats = register(
        T.astype(float), R.astype(float), OMEGA2, transform="translation", backend=ad_bk
    )
    np.testing.assert_array_equal(_host(ad_bk, masks.w), _host(ad_bk, floats.w))
    assert masks.distance == floats.distance


def test_a_tensor_that_requires_grad_is_registered_and_not_differentiated_through():
    """register() is not differentiable in T and R: the outputs used to carry a partial graph
    (T's, at the final w held fixed), now the inputs are detached and the outputs carry none."""
    torch = pytest.importorskip("torch")
    trafo, w_true = CASES["affine"]
    R = _warp(T2, DOMAIN2, trafo, w_true)
    T_grad = torch.tensor(T2, requires_grad=True)
    R_grad = torch.tensor(R, requires_grad=True)
    out = register(T_grad, R_grad, OMEGA2, **TIGHT)
    plain = register(torch.tensor(T2), torch.tensor(R), OMEGA2, **TIGHT)
    assert not any(a.requires_grad for a in (out.w, out.y, out.warped))
    assert torch.equal(out.w, plain.w) and out.distance == plain.distance
    assert T_grad.grad is None and torch.equal(T_grad.detach(), torch.tensor(T2))


def test_a_folded_map_is_reported(ad_bk):
    """A weak elastic regulariser (α = 1e-6) on a large deformation folds the map: the result
    counts the cells with det ∇y ≤ 0 and says so; the stronger α = 1e-4 does not fold."""
    from multireg import gridops

    deformed = _smoothly_deformed(T2, DOMAIN2, 0.2)
    weak = register(deformed, T2, OMEGA2, transform="nonparametric", alpha=1e-6, backend=ad_bk)
    det = _host(ad_bk, gridops.jacobian_determinant(weak.y_grid, DOMAIN2, "staggered"))
    assert weak.success  # the solver did its job; the model's answer folds
    assert weak.folded and weak.folded_cells == np.count_nonzero(det <= 0) > 0
    assert weak.det_min == pytest.approx(det.min()) and weak.det_min < 0
    assert len(weak.warnings) == 1 and f"in {weak.folded_cells} of" in weak.warnings[0]
    assert "folds" in weak.warnings[0] and "alpha" in weak.warnings[0]
    strong = register(deformed, T2, OMEGA2, transform="nonparametric", alpha=1e-4, backend=ad_bk)
    assert strong.det_min > 0 and strong.folded_cells == 0 and not strong.folded
    assert strong.warnings == ()
    affine = register(deformed, T2, OMEGA2, backend=ad_bk)
    assert affine.folded_cells is None and not affine.folded


@pytest.mark.slow  # JAX compiles a nonparametric configuration per case (~10 s each)
@pytest.mark.parametrize(
    ("distance", "regularizer"),
    [("ngf", "elastic"), ("ngf", "curvature"), ("ssd", "elastic"), ("ncc", "curvature")],
)
def test_the_preconditioner_is_the_exact_diagonal_of_the_gauss_newton_matrix(
    ad_bk, distance, regularizer, monkeypatch
):
    """Jacobi PCG divides by diag(H_GN). It was computed as if every residual were pointwise
    (r_i from T_i), which NGF's (central differences of T) is not: off by 180 % on a PET-CT-like
    problem, which made the preconditioned system 3× worse conditioned than no preconditioning
    and PCG chaotic enough for torch and JAX to disagree. Checked against the dense matrix."""
    module = importlib.import_module("multireg.optimize.newton")  # the module, not the function
    captured = []
    real_solve = module.descent_direction  # Jacobi PCG on A d = -g

    def spy(bk, A, g, **options):
        captured.append((A, g.shape[0]))
        return real_solve(bk, A, g, **options)

    monkeypatch.setattr(module, "descent_direction", spy)
    T, domain = blobs((8, 6), (0.0, 1.0, 0.0, 0.75), n_blobs=3, seed=4)
    R = np.exp(-2 * _smoothly_deformed(T, domain, 0.05))  # another contrast, as PET vs CT
    register(
        T, R, domain.omega, transform="nonparametric", distance=distance,
        regularizer=regularizer, alpha=1e-2, max_iter=1, pre_registration=None, backend=ad_bk,
    )  # fmt: skip
    A, n = captured[0]
    columns = [_host(ad_bk, A.matvec(ad_bk.asarray(e))) for e in np.eye(n)]
    exact = np.diag(np.stack(columns, axis=1))
    np.testing.assert_allclose(_host(ad_bk, A.diagonal), exact, rtol=1e-12)


# ------------------------------------------------------------------ FAIR's images (optional)

# FAIR's MLPIR settings for hands, its maxIter 10 included (multireg's default is 50)
FAIR_MLPIR = dict(transform="affine", theta=0.1, levels=(3, 7), max_iter=10)
HANDS_AFFINE = [0.7174007417, 0.4342900664, -2.733889207, -0.4533988013, 0.9467512514, 5.931765637]


def _hands():
    folder = fair_data_dir()
    files = FAIR_EXAMPLES["hands"][:2]
    if folder is None or not all((folder / f).is_file() for f in files):
        pytest.skip("FAIR's hands images not found (set MULTIREG_FAIR_DATA to their folder)")
    pytest.importorskip("PIL")
    return load_fair("hands", folder)


@pytest.mark.fair_data
@pytest.mark.slow
def test_fair_hands_affine_mlpir(all_ad):
    """FAIR's MLPIR on hands (affine, theta 0.1, levels 3..7): FAIR's published parameters.

    Measured: max |w − w_FAIR| = 4.8e-10 on torch and JAX (FAIR prints 10 digits)."""
    T, R, domain = _hands()
    runs = [register(T, R, domain.omega, **FAIR_MLPIR, backend=bk) for bk in all_ad]
    for out, bk in zip(runs, all_ad, strict=True):
        assert np.max(np.abs(_host(bk, out.w) - HANDS_AFFINE)) < 5e-3
    assert [lv.domain.m for lv in runs[0].levels] == [(2**k, 2**k) for k in range(3, 8)]
    _agreement(runs, all_ad)


@pytest.mark.fair_data
@pytest.mark.slow
@pytest.mark.parametrize(
    "regularizer, distance, reduction, det_min",
    # measured on torch and JAX (equal to 1e-12): FAIR's MLIR settings, hands
    [("elastic", 25735.260166325756, 0.03203306685023345, 0.04334087391402145),
     ("curvature", 32946.63269446981, 0.04100917110498037, 0.48381477204177686)],
)  # fmt: skip
def test_fair_hands_nonparametric_mlir(all_ad, regularizer, distance, reduction, det_min):
    T, R, domain = _hands()
    runs = [
        register(
            T, R, domain.omega, transform="nonparametric", regularizer=regularizer, alpha=1e3,
            theta=1e-2, levels=(3, 7), mu=1.0, lam=0.0, pre_registration="affine", max_iter=10,
            backend=bk,
        )
        for bk in all_ad
    ]  # fmt: skip
    for out in runs:
        np.testing.assert_allclose(out.distance, distance, rtol=1e-6)
        np.testing.assert_allclose(out.reduction, reduction, rtol=1e-6)
        np.testing.assert_allclose(out.det_min, det_min, rtol=1e-6)
        assert out.reduction < 0.1 and out.det_min > 0
    _agreement(runs, all_ad)


@pytest.mark.fair_data
@pytest.mark.slow
def test_fair_hands_readme_commands_succeed_and_a_fold_is_warned(tmp_path, capsys):
    """The README's commands on FAIR's hands with the command line's defaults. Measured
    (torch): affine converges (iterations per level 9, 18, 9, 11, 21; it exited 3 with FAIR's
    10 iterations per level); elastic α = 1e3 folds 2 cells (min det ∇y −0.052; it folded 157
    with the old defaults) and says so; α = 3e3 does not fold (min det ∇y 0.43)."""
    import json

    from multireg.cli import main

    pytest.importorskip("torch")
    _hands()  # skips without the images
    folder = fair_data_dir()
    pair = [str(folder / "hands-T.jpg"), str(folder / "hands-R.jpg")]

    def run(name, *options):
        code = main(
            ["register", *pair, *options, "--backend", "torch", "--out", str(tmp_path / name)]
        )
        out = capsys.readouterr().out
        return code, out, json.loads((tmp_path / name / "result.json").read_text())

    code, _, info = run("affine", "--transform", "affine")
    assert code == 0 and info["status"] == "converged", info["levels"]
    elastic = ("--transform", "nonparametric", "--regularizer", "elastic")
    code, out, info = run("folds", *elastic, "--alpha", "1e3")
    assert code == 0 and info["folded_cells"] > 0 and info["det_min"] < 0
    assert "warning: the map folds" in out and info["warnings"]
    code = main(["register", *pair, *elastic, "--alpha", "1e3", "--backend", "torch", "-q",
                 "--out", str(tmp_path / "quiet")])  # fmt: skip
    assert code == 0 and "multireg: warning: the map folds" in capsys.readouterr().err
    code, out, info = run("smooth", *elastic, "--alpha", "3e3")
    assert code == 0 and info["folded_cells"] == 0 and info["det_min"] > 0
    assert "warning" not in out and info["warnings"] == []
