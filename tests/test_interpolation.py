"""Image models: d-linear and cubic-spline interpolation, regularised spline coefficients.

References are independent of the code under test: SciPy's ``map_coordinates`` (linear with
``grid-constant`` zero padding; cubic with ``prefilter=False`` evaluates the same spline sum in the
normalised basis, hence the factor 6**d), a dense Kronecker solve for the separable coefficients,
and the B3'' Gram matrix by quadrature of SciPy's B-spline.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.interpolate import BSpline

import multireg
from multireg import Domain
from multireg.interpolation import (
    ImageModel,
    _regularizer_matrix,
    image_model,
    linear_interpolate,
    spline_coefficients,
    spline_interpolate,
)
from multireg.testing import taylor_test
from tests.conftest import BACKENDS, assert_close, rtol

DOMAINS = {
    1: Domain((-1.0, 2.0), (60,)),
    2: Domain((0.0, 2.0, -1.0, 3.0), (10, 6)),
    3: Domain((0.0, 1.0, 0.0, 2.0, -1.0, 1.0), (4, 5, 3)),
}
# Every domain has 60 cells and every point set 60 points, so JAX compiles each eager op once.
REGULARIZERS = ("moments", "gradient", "identity")


# ------------------------------------------------------------------------------- references


def _image(domain, seed=0):
    return np.random.default_rng(seed).standard_normal(domain.m)


def _points(domain, n=60, seed=1, margin=2.5):
    """Random points over the domain widened by ``margin`` cells (beyond the spline's support)."""
    rng = np.random.default_rng(seed)
    lo = np.array(domain.lower) - margin * np.array(domain.h)
    hi = np.array(domain.upper) + margin * np.array(domain.h)
    return rng.uniform(lo, hi, (n, domain.dim))


def _xi(domain, x):
    return (x - np.array(domain.lower)) / np.array(domain.h) - 0.5


def _linear_ref(data, domain, x):
    return ndimage.map_coordinates(data, _xi(domain, x).T, order=1, mode="grid-constant")


def _spline_ref(coef, domain, x):
    scaled = 6.0**coef.ndim * coef  # scipy's B3 is normalised; FAIR's b = 6 B3 per axis
    return ndimage.map_coordinates(
        scaled, _xi(domain, x).T, order=3, mode="grid-constant", prefilter=False
    )


def _gram_b3_second_derivative(m):
    """``G[i, j] = ∫ B3''(s - i) B3''(s - j) ds`` over the real line (2-point Gauss per piece,
    exact: the integrand is a product of linear pieces)."""
    d2 = BSpline.basis_element(np.arange(5.0), extrapolate=False).derivative(2)
    nodes, weights = np.polynomial.legendre.leggauss(2)
    s = np.concatenate([k + 0.5 + 0.5 * nodes for k in range(-2, m + 2)])
    w = np.tile(0.5 * weights, m + 4)
    basis = np.nan_to_num(d2(s[None, :] - np.arange(m)[:, None] + 2.0))  # centred at 0
    return (basis * w) @ basis.T


def _penalty_ref(regularizer, m):
    if regularizer == "moments":
        return 36.0 * _gram_b3_second_derivative(m)
    if regularizer == "gradient":
        D = -np.eye(m)[:-1] + np.eye(m)[1:]
        return D.T @ D
    return np.eye(m)


def _coefficients_ref(data, theta, regularizer):
    """The separable solve as one dense system: (⊗_k M_k) vec(C) = (⊗_k B_kᵀ) vec(D)."""
    M = Bt = np.ones((1, 1))
    for m in data.shape:
        B = 4.0 * np.eye(m) + np.eye(m, k=1) + np.eye(m, k=-1)
        M = np.kron(M, B.T @ B + theta * _penalty_ref(regularizer, m))
        Bt = np.kron(Bt, B.T)
    return np.linalg.solve(M, Bt @ data.ravel()).reshape(data.shape)


def _to(bk, *arrays):
    return tuple(bk.asarray(a) for a in arrays)


# ------------------------------------------------------------------------------- linear


@pytest.mark.parametrize("d", [1, 2, 3])
def test_linear_matches_scipy_grid_constant(bk, d):
    domain = DOMAINS[d]
    hull = _points(domain, 30, margin=-0.5)  # margin -1/2 cell: the hull of the cell centres
    data, x = (
        _image(domain),
        np.concatenate([hull, _points(domain, 30, seed=2, margin=max(domain.m) / 2)]),
    )
    values = bk.to_numpy(linear_interpolate(*_to(bk, data), domain, *_to(bk, x)))
    assert_close(bk, values, _linear_ref(data, domain, x))
    data_, centres = _to(bk, data, domain.cell_centers())
    assert_close(bk, linear_interpolate(data_, domain, centres), data.ravel())
    # scipy's "constant" mode agrees inside the hull of the cell centres only
    xi = _xi(domain, x)
    inside = np.all((xi >= 0) & (xi <= np.array(domain.m) - 1), axis=1)
    constant = ndimage.map_coordinates(data, xi.T, order=1, mode="constant")
    assert inside.sum() >= 30 and (~inside).sum() > 10
    assert_close(bk, values[inside], constant[inside])


def test_linear_falls_to_zero_over_the_half_cell_outside(bk):
    domain = Domain((0.0, 2.0), (2,))  # h = 1, centres at 0.5 and 1.5
    x = np.array([[-1.0], [-0.5], [0.0], [0.5], [1.0], [1.5], [2.0], [2.5], [3.0]])
    values = linear_interpolate(*_to(bk, np.array([2.0, 4.0])), domain, *_to(bk, x))
    assert_close(bk, values, [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 2.0, 0.0, 0.0])


# ------------------------------------------------------------------------------- spline


@pytest.mark.parametrize("d", [1, 2, 3])
def test_spline_evaluation_matches_scipy(bk, d):
    domain = DOMAINS[d]
    coef, x = _image(domain), _points(domain)
    values = spline_interpolate(*_to(bk, coef), domain, *_to(bk, x))
    assert_close(bk, values, _spline_ref(coef, domain, x))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_spline_is_zero_far_outside_and_propagates_nan(bk, d):
    """Far-away points read the zero padding (no out-of-range gather); a NaN point gives NaN only
    in its own value."""
    domain = DOMAINS[d]
    coef, x = _image(domain), _points(domain, 6)
    far = np.full((4, d), 0.5 * (domain.lower[0] + domain.upper[0]))
    far[0, 0], far[1, -1], far[2, 0], far[3, -1] = -1e9, 1e9, -1e300, 1e300
    bad = x[:1].copy()
    bad[0, -1] = np.nan
    with np.errstate(invalid="ignore"):  # NumPy warns when it casts the NaN to an index
        points = _to(bk, np.vstack([x, far, bad]))
        values = bk.to_numpy(spline_interpolate(*_to(bk, coef), domain, *points))
    assert_close(bk, values[:6], _spline_ref(coef, domain, x))
    assert np.array_equal(values[6:10], np.zeros(4))
    assert np.isnan(values[10])


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize(
    ("regularizer", "theta"),
    [("moments", 0.0), ("moments", 2.5), ("gradient", 2.5), ("identity", 2.5)],
)
def test_spline_coefficients_match_dense_reference(bk, d, regularizer, theta):
    data = _image(DOMAINS[d])
    coef = spline_coefficients(*_to(bk, data), theta, regularizer=regularizer)
    assert_close(bk, coef, _coefficients_ref(data, theta, regularizer))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 9])
def test_moments_matrix_is_36_times_the_b3_second_derivative_gram_matrix(m):
    np.testing.assert_allclose(
        _regularizer_matrix("moments", m), 36.0 * _gram_b3_second_derivative(m), atol=1e-12
    )


@pytest.mark.parametrize("d", [1, 2, 3])
def test_theta_zero_interpolates(bk, d):
    domain = DOMAINS[d]
    data = _image(domain)
    model = ImageModel("spline", theta=0.0)
    coef = model.coefficients(*_to(bk, data))
    values = model.evaluate(coef, domain, *_to(bk, domain.cell_centers()))
    assert_close(bk, values, data.ravel())


THETAS = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_smoothing_is_monotone_in_theta_1d(bk, regularizer):
    # 1D is Tikhonov: along the path the penalty cᵀRc falls and the misfit |Bc - d| grows
    # (for "moments", cᵀRc = ∫(s'')² exactly, by the Gram test above).
    data = _image(Domain((0.0, 1.0), (16,)))
    B = 4.0 * np.eye(16) + np.eye(16, k=1) + np.eye(16, k=-1)
    R = _penalty_ref(regularizer, 16)
    coefs = [
        bk.to_numpy(spline_coefficients(*_to(bk, data), t, regularizer=regularizer)) for t in THETAS
    ]
    penalty = [c @ R @ c for c in coefs]
    misfit = [np.linalg.norm(B @ c - data) for c in coefs]
    assert np.all(np.diff(penalty) < 0) and np.all(np.diff(misfit) > 0)


def test_smoothing_is_monotone_in_theta_2d(bk):
    domain = DOMAINS[2]
    data = _image(domain)
    fine = Domain(domain.omega, tuple(4 * m for m in domain.m)).cell_centers()
    tv = []
    for theta in THETAS:
        coef = spline_coefficients(*_to(bk, data), theta)
        s = bk.to_numpy(spline_interpolate(coef, domain, *_to(bk, fine)))
        s = s.reshape(4 * np.array(domain.m))
        tv.append(np.abs(np.diff(s, axis=0)).sum() + np.abs(np.diff(s, axis=1)).sum())
    assert np.all(np.diff(tv) < 0)


# ------------------------------------------------------------------------------- model


def test_image_model_dispatches_and_validates(bk):
    domain = DOMAINS[2]
    data, x = _to(bk, _image(domain), _points(domain))
    linear = image_model("linear")
    assert linear.coefficients(data) is data
    assert_close(
        bk, linear.evaluate(data, domain, x), bk.to_numpy(linear_interpolate(data, domain, x))
    )
    smooth = image_model("spline", theta=0.5, regularizer="gradient")
    coef = smooth.coefficients(data)
    assert_close(bk, coef, bk.to_numpy(spline_coefficients(data, 0.5, regularizer="gradient")))
    assert_close(
        bk, smooth.evaluate(coef, domain, x), bk.to_numpy(spline_interpolate(coef, domain, x))
    )
    override = smooth.coefficients(data, theta=bk.asarray(np.array(2.0)))
    assert_close(bk, override, bk.to_numpy(spline_coefficients(data, 2.0, regularizer="gradient")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        smooth.theta = 1.0


# ------------------------------------------------------------------------------- derivatives


def _derivatives(bk, domain, data, r, x, v, theta, dtheta):
    """Gradient and HVP of the SSD ``½|T - r|²`` and the JVP of T: for the spline in x, and
    (2D) the linear model in x and the spline in theta."""
    coef = spline_coefficients(data, 0.7)
    models = [
        (lambda y: spline_interpolate(coef, domain, y), x, v),
        (lambda y: linear_interpolate(data, domain, y), x, v),
        (lambda t: spline_interpolate(spline_coefficients(data, t), domain, x), theta, dtheta),
    ][: 3 if domain.dim == 2 else 1]
    out = []
    for f, z, dz in models:

        def ssd(z, f=f):
            return 0.5 * bk.xp.sum((f(z) - r) ** 2)

        out += [bk.value_and_grad(ssd)(z)[1], bk.jvp(f, z, dz)[1], bk.hvp(ssd, z, dz)]
    return out


@pytest.mark.parametrize("d", [2, 3])
def test_torch_and_jax_agree_on_derivatives(all_ad, d):
    # 2D runs under bk.jit (jax.jit: one compile instead of hundreds of eager ones). 3D runs
    # eagerly, because XLA takes many seconds to compile the 64-term 3D spline's derivatives,
    # and only the spline in x, to bound JAX's eager compiles (the linear and theta paths are
    # the same code as in 2D, and are Taylor-tested in 3D on each backend below).
    domain = DOMAINS[d]
    args = (
        _image(domain),
        _image(Domain((0.0, 1.0), (60,)), 3),
        _points(domain),
        _points(domain, seed=4),
        np.array(0.7),
        np.array(1.0),
    )
    results = []
    for bk in all_ad:
        run = functools.partial(_derivatives, bk, domain)
        results.append((bk.jit(run) if d == 2 else run)(*_to(bk, *args)))
    first, *others = (
        [bk.to_numpy(a) for a in out] for bk, out in zip(all_ad, results, strict=True)
    )
    for other in others:
        for a, b in zip(other, first, strict=True):
            assert_close(all_ad[0], a, b)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_taylor_spline_in_x(ad_bk, d):
    domain = DOMAINS[d]
    coef, x = _to(ad_bk, _image(domain), _points(domain))
    v = ad_bk.asarray(np.random.default_rng(5).standard_normal((x.shape[0], d)))
    t0 = 0.1 * min(domain.h)  # start in the asymptotic regime
    result = taylor_test(ad_bk, lambda y: spline_interpolate(coef, domain, y), x, v, t0=t0, steps=8)
    assert abs(result.order - 2.0) < 0.1


@pytest.mark.parametrize("d", [2, 3])
def test_taylor_spline_in_theta(ad_bk, d):
    domain = DOMAINS[d]
    data, x = _to(ad_bk, _image(domain), _points(domain))
    theta, direction = _to(ad_bk, np.array(0.5), np.array(1.0))

    def f(t):
        return spline_interpolate(spline_coefficients(data, t), domain, x)

    result = taylor_test(ad_bk, f, theta, direction, t0=0.25, steps=8)
    assert abs(result.order - 2.0) < 0.1


@pytest.mark.parametrize("d", [1, 2, 3])
def test_taylor_linear_in_x_inside_cells(ad_bk, d):
    # Steps stay inside one cell (fractional index in [0.3, 0.7], moves below 0.2 cell), where the
    # model is a d-linear polynomial: the remainder is the t² cross term, or rounding in 1D.
    domain = DOMAINS[d]
    rng = np.random.default_rng(6)
    cells = rng.integers(-1, np.array(domain.m), (60, d))
    xi = cells + rng.uniform(0.3, 0.7, (60, d))
    x0 = np.array(domain.lower) + (xi + 0.5) * np.array(domain.h)
    v0 = rng.uniform(-1.0, 1.0, (60, d)) * np.array(domain.h)
    data, x, v = _to(ad_bk, _image(domain), x0, v0)
    result = taylor_test(
        ad_bk, lambda y: linear_interpolate(data, domain, y), x, v, t0=0.2, steps=8
    )
    if d == 1:
        assert np.max(result.e1) <= 1e-12 * np.max(result.e0)
    else:
        assert abs(result.order - 2.0) < 0.05


# ------------------------------------------------------------------------------- strict, float32


@pytest.mark.parametrize("d", [2, 3])
def test_forward_kernels_run_on_array_api_strict(strict_bk, np_bk, d):
    domain = DOMAINS[d]
    data, x = _image(domain), _points(domain)
    for bk in (strict_bk, np_bk):
        out = [linear_interpolate(*_to(bk, data), domain, *_to(bk, x))]
        for regularizer in REGULARIZERS:
            coef = spline_coefficients(*_to(bk, data), 1.5, regularizer=regularizer)
            out += [coef, spline_interpolate(coef, domain, *_to(bk, x))]
        if bk is strict_bk:
            strict = [bk.to_numpy(o) for o in out]
    for a, b in zip(strict, out, strict=True):
        assert_close(np_bk, a, bk.to_numpy(b))


def test_float32_agrees_with_float64(bk):
    domain = DOMAINS[3]
    data, x = _image(domain), _points(domain)

    def run(dtype):
        data_, x_ = (bk.asarray(a, dtype=dtype) for a in (data, x))
        coef = spline_coefficients(data_, 1.0)
        return [linear_interpolate(data_, domain, x_), coef, spline_interpolate(coef, domain, x_)]

    for single, double in zip(run("float32"), run("float64"), strict=True):
        assert str(single.dtype).endswith("float32")
        assert_close(bk, single, bk.to_numpy(double), rtol=rtol("float32"))


# ------------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_naming_the_argument(bk):
    domain = DOMAINS[2]
    data, x = _to(bk, _image(domain), _points(domain))
    wrong = bk.asarray(np.ones((5, 6)))
    cases = [
        (ValueError, "data has shape", lambda: linear_interpolate(wrong, domain, x)),
        (ValueError, "coef has shape", lambda: spline_interpolate(wrong, domain, x)),
        (ValueError, "coef has shape", lambda: image_model().evaluate(wrong, domain, x)),
        (
            ValueError,
            r"x must have shape \(n, 2\)",
            lambda: linear_interpolate(data, domain, x[:, :1]),
        ),
        (ValueError, "x must have shape", lambda: spline_interpolate(data, domain, x[:, 0])),
        (TypeError, "domain must be a Domain", lambda: linear_interpolate(data, (0, 1, 0, 1), x)),
        (TypeError, "data must be an array", lambda: spline_coefficients([[1.0, 2.0]])),
        (
            ValueError,
            "data must have 1, 2 or 3",
            lambda: spline_coefficients(bk.asarray(np.ones((2,) * 4))),
        ),
        (ValueError, "theta must be finite and >= 0", lambda: spline_coefficients(data, -1.0)),
        (ValueError, "theta must be finite and >= 0", lambda: spline_coefficients(data, math.nan)),
        (
            ValueError,
            "theta must be a 0-d array",
            lambda: spline_coefficients(data, bk.asarray(np.ones(2))),
        ),
        (TypeError, "theta must be a real number", lambda: spline_coefficients(data, "1")),
        (
            ValueError,
            "regularizer must be one of",
            lambda: spline_coefficients(data, regularizer="moment"),
        ),
        (ValueError, "kind must be one of", lambda: image_model("cubic")),
        (TypeError, "unknown image model option", lambda: image_model("spline", thetta=1.0)),
        (ValueError, "regularizer must be one of", lambda: image_model("spline", regularizer="tv")),
        (ValueError, "theta must be finite and >= 0", lambda: image_model("spline", theta=-2.0)),
        (ValueError, "linear model has no smoothing", lambda: image_model("linear", theta=1.0)),
        (
            ValueError,
            "linear model has no smoothing",
            lambda: image_model("linear").coefficients(data, 1.0),
        ),
        (
            TypeError,
            "theta must be a Python number",
            lambda: ImageModel(theta=bk.asarray(np.array(1.0))),
        ),
    ]
    integer = bk.xp.asarray(np.arange(30).reshape(6, 5))
    cases += [
        (TypeError, "data must have a real floating dtype", lambda: spline_coefficients(integer)),
        (
            TypeError,
            "data must have a real floating dtype",
            lambda: linear_interpolate(integer, domain, x),
        ),
        (
            TypeError,
            "coef must have a real floating dtype",
            lambda: spline_interpolate(integer, domain, x),
        ),
        (
            TypeError,
            "x must have a real floating dtype",
            lambda: linear_interpolate(data, domain, integer[:, :2]),
        ),
    ]
    if bk.name != "numpy":  # a NumPy theta with another framework's data
        message = "theta must be a Python number or an array of data's namespace"
        cases.append((TypeError, message, lambda: spline_coefficients(data, np.array(1.0))))
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


def test_static_checks_and_traced_theta_under_jit():
    if "jax" not in BACKENDS:
        pytest.skip("needs the jax backend")
    jax_bk = multireg.get_backend("jax")
    domain = DOMAINS[2]
    data, x = _to(jax_bk, _image(domain), _points(domain))
    smooth = jax_bk.jit(lambda t: spline_interpolate(spline_coefficients(data, t), domain, x))
    eager = spline_interpolate(spline_coefficients(data, 0.3), domain, x)
    assert_close(jax_bk, smooth(jax_bk.asarray(np.array(0.3))), jax_bk.to_numpy(eager))
    linear = jax_bk.jit(lambda y: linear_interpolate(data, domain, y))
    assert_close(jax_bk, linear(x), _linear_ref(jax_bk.to_numpy(data), domain, jax_bk.to_numpy(x)))
    with pytest.raises(ValueError, match="x must have shape"):
        linear(x[:, :1])


# ------------------------------------------------------------------------------- hypothesis


@settings(max_examples=5)
@given(draw=st.data())
def test_random_images_agree_with_the_references(bk, draw):
    d = draw.draw(st.integers(1, 3), label="d")
    m = tuple(draw.draw(st.lists(st.integers(1, 5), min_size=d, max_size=d), label="m"))
    seed = draw.draw(st.integers(0, 2**16), label="seed")
    theta = draw.draw(st.sampled_from([0.0, 0.3, 4.0]), label="theta")
    regularizer = draw.draw(st.sampled_from(REGULARIZERS), label="regularizer")
    domain = Domain(tuple(v for k in range(d) for v in (-0.5 * k, 1.0 + k)), m)
    data, x = _image(domain, seed), _points(domain, seed=seed + 1)
    coef = spline_coefficients(*_to(bk, data), theta, regularizer=regularizer)
    coef_ref = _coefficients_ref(data, theta, regularizer)
    assert_close(bk, coef, coef_ref)
    assert_close(
        bk, spline_interpolate(coef, domain, *_to(bk, x)), _spline_ref(coef_ref, domain, x)
    )
    assert_close(
        bk, linear_interpolate(*_to(bk, data), domain, *_to(bk, x)), _linear_ref(data, domain, x)
    )
