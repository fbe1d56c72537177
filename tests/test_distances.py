"""Distance measures D = ψ(r): values against NumPy references, invariants, derivatives."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from multireg import Domain
from multireg.data import blobs
from multireg.distances import MI, NCC, NGF, SSD, Distance, _parzen, distance
from multireg.testing import taylor_test
from tests.conftest import assert_close, rtol

# Both domains have 120 cells and every MI has 8 x 6 bins: JAX compiles each operation once per
# shape, and reusing shapes keeps the file fast.
DOMAINS = {
    "2d": Domain((0.0, 2.0, 0.0, 1.5), (12, 10)),
    "3d": Domain((0.0, 1.0, 0.0, 1.2, -0.5, 0.5), (6, 5, 4)),
}
BINS = {"bins_T": 8, "bins_R": 6}
DISTANCES = {
    "ssd": SSD(),
    "ncc": NCC(),
    "ngf": NGF(),
    "ngf-edge": NGF(edge=0.5),
    "mi": MI(**BINS),
    "mi-ranges": MI(**BINS, range_T=(-0.2, 1.3), range_R=(0.0, 1.0)),
}
GN = [name for name, D in DISTANCES.items() if D.gauss_newton]
# derivative tests skip the variants whose code differs from these only in constants
DIFFERENTIATED = ["ssd", "ncc", "ngf", "mi"]


def _pair(domain: Domain, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth reference R in [0, 1] and a different, slightly noisy template T."""
    R, _ = blobs(domain.m, domain.omega, seed=seed)
    T, _ = blobs(domain.m, domain.omega, seed=seed + 1)
    return T + 0.05 * np.random.default_rng(seed).standard_normal(domain.m), R


# ------------------------------------------------------------------------ NumPy references


def _ngf_residual_ref(T, R, domain, edge):
    gT, gR = np.gradient(T, *domain.h), np.gradient(R, *domain.h)
    TR = sum(a * b for a, b in zip(gT, gR, strict=True))
    TT, RR = sum(a * a for a in gT), sum(b * b for b in gR)
    if edge is None:
        edge = 0.1 * np.sqrt(RR.max()) or 1.0
    return (TR / np.sqrt(TT + edge**2) / np.sqrt(RR + edge**2)).ravel()


def _beta(x):
    """The cardinal cubic B-spline (integral 1, support [-2, 2])."""
    a = np.abs(x)
    return np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def _mi_ref(T, R, bins_T, bins_R, range_T, range_R):
    lo, hi = R.min(), R.max()
    default = (lo, hi if hi > lo else lo + 1.0)
    hist = np.zeros((bins_T, bins_R))
    for t, r in zip(T.ravel(), R.ravel(), strict=True):
        weights = []
        for v, (a, b), bins in ((t, range_T or default, bins_T), (r, range_R or default, bins_R)):
            s = 1 + (v - a) / (b - a) * (bins - 3)
            weights.append(_beta(s - np.arange(bins)))
        hist += np.outer(*weights)
    p = hist / hist.sum()

    def plogp(q):
        return np.sum(q * np.log(q + 1e-6))

    return plogp(p.sum(axis=1)) + plogp(p.sum(axis=0)) - plogp(p)


def _reference(D, T, R, domain):
    hd = np.prod(domain.h)
    if isinstance(D, SSD):
        return 0.5 * hd * np.sum((T - R) ** 2)
    if isinstance(D, NCC):
        denom = np.sum(R * R) * np.sum(T * T)
        return 1.0 - np.sum(R * T) ** 2 / denom if denom > 0 else 1.0
    if isinstance(D, NGF):
        return hd * np.sum(1 - _ngf_residual_ref(T, R, domain, D.edge) ** 2)
    return _mi_ref(T, R, D.bins_T, D.bins_R, D.range_T, D.range_R)


def _residual_and_weight_ref(D, T, R, domain):
    hd = np.prod(domain.h)
    if isinstance(D, SSD):
        return (T - R).ravel(), hd
    if isinstance(D, NCC):
        return T.ravel(), 2 / np.sum(T * T)
    return _ngf_residual_ref(T, R, domain, D.edge), 2 * hd


# Evaluations are jitted (JAX compiles one graph instead of every operation eagerly) and cached
# per backend, distance and domain (all hashable), so tests and hypothesis examples share them.
@functools.cache
def _forward(bk, D, domain):
    """``(Tc, Rc) -> D(Tc, Rc)``."""
    return bk.jit(lambda Tc, Rc: D(Tc, Rc, domain))


def _value(bk, D, T, R, domain):
    return float(bk.to_numpy(_forward(bk, D, domain)(bk.asarray(T), bk.asarray(R))))


@functools.cache
def _value_and_grad(bk, D, domain):
    """``(Tc, Rc) -> (D(Tc), ∇_T D)``."""
    return bk.jit(lambda Tc, Rc: bk.value_and_grad(lambda T: D(T, Rc, domain))(Tc))


@functools.cache
def _hvp(bk, D, domain):
    """``(Tc, Rc, v) -> ∇²_T D v``."""
    return bk.jit(lambda Tc, Rc, v: bk.hvp(lambda T: D(T, Rc, domain), Tc, v))


# ------------------------------------------------------------------------ values


@pytest.mark.parametrize("dim", DOMAINS)
@pytest.mark.parametrize("name", DISTANCES)
def test_value_matches_numpy_reference(bk, name, dim):
    D, domain = DISTANCES[name], DOMAINS[dim]
    T, R = _pair(domain)
    value = _forward(bk, D, domain)(bk.asarray(T), bk.asarray(R))
    assert value.shape == () and value.dtype == bk.xp.float64
    assert isinstance(D, Distance)
    assert_close(bk, bk.to_numpy(value), _reference(D, T, R, domain), rtol=1e-12)


@pytest.mark.parametrize("dim", DOMAINS)
@pytest.mark.parametrize("name", GN)
def test_residual_and_positive_gauss_newton_weight(bk, name, dim):
    D, domain = DISTANCES[name], DOMAINS[dim]
    T, R = _pair(domain)
    Rc = bk.asarray(R)
    r = D.residual(bk.asarray(T), Rc, domain)
    W = D.gn_weight(r, Rc, domain)
    r_ref, W_ref = _residual_and_weight_ref(D, T, R, domain)
    assert_close(bk, r, r_ref, rtol=1e-13)
    assert W.shape == () and float(bk.to_numpy(W)) > 0
    assert_close(bk, W, W_ref, rtol=1e-14)


def test_ssd_and_ncc_gradients_match_the_formulas(ad_bk):
    domain = DOMAINS["3d"]
    T, R = _pair(domain)
    hd = np.prod(domain.h)
    Tc, Rc = ad_bk.asarray(T), ad_bk.asarray(R)
    _, g = _value_and_grad(ad_bk, SSD(), domain)(Tc, Rc)
    assert_close(ad_bk, g, hd * (T - R), rtol=1e-13)
    _, g = _value_and_grad(ad_bk, NCC(), domain)(Tc, Rc)
    RT, RR, TT = np.sum(R * T), np.sum(R * R), np.sum(T * T)
    assert_close(ad_bk, g, -2 * RT / (RR * TT) * R + 2 * RT**2 / (RR * TT**2) * T, rtol=1e-12)


# ------------------------------------------------------------------------ derivatives


@pytest.mark.parametrize("dim", DOMAINS)
@pytest.mark.parametrize("name", DIFFERENTIATED)
def test_taylor_second_order_for_value_and_gradient(ad_bk, name, dim):
    """D(T + tv) - D(T) - t <∇D, v> and ∇D(T + tv) - ∇D(T) - t ∇²D v both fall like t²."""
    D, domain = DISTANCES[name], DOMAINS[dim]
    T, R = _pair(domain)
    Tc, Rc = ad_bk.asarray(T), ad_bk.asarray(R)
    v = ad_bk.asarray(0.2 * np.random.default_rng(2).standard_normal(domain.m))
    value_and_grad = _value_and_grad(ad_bk, D, domain)
    _, g = value_and_grad(Tc, Rc)
    forward = _forward(ad_bk, D, domain)
    result = taylor_test(ad_bk, lambda Tc: forward(Tc, Rc), Tc, v, jv=ad_bk.xp.sum(g * v))
    assert result.order == pytest.approx(2.0, abs=0.2), result
    hv = _hvp(ad_bk, D, domain)(Tc, Rc, v)
    result = taylor_test(ad_bk, lambda Tc: value_and_grad(Tc, Rc)[1], Tc, v, jv=hv)
    # SSD's gradient is affine in T: its remainder is rounding only, below the floor
    linear = isinstance(D, SSD) and result.e1.max() <= 1e-12 * result.e0.max()
    assert linear or result.order == pytest.approx(2.0, abs=0.2), result


@pytest.mark.parametrize("dim", DOMAINS)
def test_ssd_gauss_newton_hessian_is_the_exact_hessian(ad_bk, dim):
    domain, D = DOMAINS[dim], SSD()
    T, R = _pair(domain)
    Tc, Rc = ad_bk.asarray(T), ad_bk.asarray(R)
    v = ad_bk.asarray(np.random.default_rng(4).standard_normal(domain.m))

    def residual(Tc):
        return D.residual(Tc, Rc, domain)

    r, Jv = ad_bk.jvp(residual, Tc, v)
    _, pullback = ad_bk.vjp(residual, Tc)
    gn = pullback(D.gn_weight(r, Rc, domain) * Jv)
    exact = _hvp(ad_bk, D, domain)(Tc, Rc, v)
    assert_close(ad_bk, gn, ad_bk.to_numpy(exact), rtol=1e-13)


def test_ngf_weight_flips_the_sign_of_the_exact_outer_hessian(ad_bk):
    domain, D = DOMAINS["2d"], NGF()
    T, R = _pair(domain)
    Rc = ad_bk.asarray(R)
    r = D.residual(ad_bk.asarray(T), Rc, domain)
    u = np.random.default_rng(5).standard_normal(domain.n)
    outer_hvp = ad_bk.jit(lambda r, u: ad_bk.hvp(lambda r: D.outer(r, Rc, domain), r, u))
    exact = outer_hvp(r, ad_bk.asarray(u))
    W = float(ad_bk.to_numpy(D.gn_weight(r, Rc, domain)))
    assert_close(ad_bk, exact, -W * u, rtol=1e-14)


def test_mi_has_no_gauss_newton_form(bk):
    domain, D = DOMAINS["2d"], MI()
    T, R = _pair(domain)
    r = D.residual(bk.asarray(T), bk.asarray(R), domain)
    assert not D.gauss_newton
    with pytest.raises(NotImplementedError, match="MI has no Gauss-Newton form"):
        D.gn_weight(r, bk.asarray(R), domain)


def test_values_and_checks_under_jit(ad_bk):
    domain = DOMAINS["2d"]
    T, R = _pair(domain)
    Rc = ad_bk.asarray(R)
    for D in DISTANCES.values():
        jitted = _forward(ad_bk, D, domain)
        assert float(ad_bk.to_numpy(jitted(ad_bk.asarray(T), Rc))) == pytest.approx(
            _reference(D, T, R, domain), rel=1e-12
        )
        with pytest.raises(ValueError, match=r"Tc has shape \(12, 9\)"):
            jitted(ad_bk.asarray(T[:, :9]), Rc)


# ------------------------------------------------------------------------ invariants


@pytest.mark.parametrize("dim", DOMAINS)
def test_ssd_invariants(bk, dim):
    domain = DOMAINS[dim]
    T, R = _pair(domain)
    assert _value(bk, SSD(), R, R, domain) == 0.0
    assert _value(bk, SSD(), T, R, domain) == pytest.approx(
        0.5 * np.prod(domain.h) * np.sum((T - R) ** 2), rel=1e-13
    )


@pytest.mark.parametrize("dim", DOMAINS)
def test_ncc_invariants(bk, dim):
    domain, D = DOMAINS[dim], NCC()
    T, R = _pair(domain)
    value = _value(bk, D, T, R, domain)
    assert 0 < value < 1
    for c in (3.0, 0.01, -2.0):  # scale invariant in T and R (the square hides the sign)
        assert _value(bk, D, c * T, R, domain) == pytest.approx(value, rel=1e-13)
        assert _value(bk, D, T, c * R, domain) == pytest.approx(value, rel=1e-13)
        assert _value(bk, D, c * R, R, domain) == pytest.approx(0.0, abs=1e-15)
    assert _value(bk, D, T + 1.0, R, domain) != pytest.approx(value, rel=1e-3)  # not centred


def test_ncc_guard_for_a_zero_template(bk):
    domain, D = DOMAINS["2d"], NCC()
    _, R = _pair(domain)
    zero, Rc = bk.asarray(np.zeros(domain.m)), bk.asarray(R)
    assert float(bk.to_numpy(D(zero, Rc, domain))) == 1.0
    assert float(bk.to_numpy(D.gn_weight(D.residual(zero, Rc, domain), Rc, domain))) == 0.0
    if bk.differentiable:
        _, g = _value_and_grad(bk, D, domain)(zero, Rc)
        np.testing.assert_array_equal(bk.to_numpy(g), 0.0)


@pytest.mark.parametrize("dim", DOMAINS)
def test_ngf_invariants(bk, dim):
    domain = DOMAINS[dim]
    T, R = _pair(domain)
    noise = np.random.default_rng(7).random(domain.m)
    eps = 0.5
    D = NGF(edge=eps)
    value = _value(bk, D, T, R, domain)
    assert 0 < _value(bk, D, R, R, domain) < _value(bk, D, noise, R, domain) <= domain.volume
    # edges only: contrast inversion of T, and affine changes of both with ε scaled alike
    assert _value(bk, D, -T, R, domain) == pytest.approx(value, rel=1e-13)
    for a, b, c in ((3.0, 1.0, -2.0), (-0.5, 0.2, 4.0)):
        scaled = NGF(edge=abs(a) * eps)
        assert _value(bk, scaled, a * T + b, a * R + c, domain) == pytest.approx(value, rel=1e-12)
        assert _value(bk, NGF(), a * T + b, a * R + c, domain) == pytest.approx(
            _value(bk, NGF(), T, R, domain), rel=1e-12
        )
    # with a fixed ε, stronger aligned edges score lower: T = R is not the minimiser
    assert _value(bk, D, 2 * R, R, domain) < _value(bk, D, R, R, domain)


@pytest.mark.parametrize("dim", DOMAINS)
def test_mi_invariants(bk, dim):
    domain = DOMAINS[dim]
    T, R = _pair(domain)
    lo, hi = -0.2, 1.3
    D = MI(**BINS, range_T=(lo, hi))
    value = _value(bk, D, T, R, domain)
    shuffled = np.random.default_rng(8).permutation(R.ravel()).reshape(domain.m)
    same = _value(bk, MI(**BINS), R, R, domain)
    assert same < _value(bk, MI(**BINS), shuffled, R, domain) < 0
    # monotone increasing or decreasing affine change of T, with the range mapped alike
    for a, b in ((2.5, -1.0), (-0.7, 3.0)):
        mapped = tuple(sorted((a * lo + b, a * hi + b)))
        moved = MI(**BINS, range_T=mapped)
        assert _value(bk, moved, a * T + b, R, domain) == pytest.approx(value, rel=1e-10)
    # symmetric when the roles (bins, ranges) are swapped too
    swapped = MI(bins_T=6, bins_R=8, range_T=(R.min(), R.max()), range_R=(lo, hi))
    assert _value(bk, swapped, R, T, domain) == pytest.approx(value, rel=1e-12)
    # ranges default to [min R, max R] for both images
    explicit = MI(**BINS, range_T=(R.min(), R.max()), range_R=(R.min(), R.max()))
    assert _value(bk, explicit, T, R, domain) == pytest.approx(
        _value(bk, MI(**BINS), T, R, domain), rel=1e-14
    )


def test_parzen_window_keeps_the_mass_of_values_in_range(bk):
    xp = bk.xp
    inside = bk.asarray(np.linspace(-1.0, 2.0, 120))  # both ends included
    w = bk.to_numpy(_parzen(xp, inside, -1.0, 2.0, 8))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-14)
    assert (w >= 0).all()
    outside = bk.to_numpy(_parzen(xp, bk.asarray(np.repeat([-1.3, 2.3, 5.0], 40)), -1.0, 2.0, 8))
    assert (outside.sum(axis=1) < 1).all() and (outside[80:] == 0).all()


# ------------------------------------------------------------------------ standard, dtypes


@pytest.mark.parametrize("dim", DOMAINS)
@pytest.mark.parametrize("name", DISTANCES)
def test_forward_kernels_run_on_array_api_strict(strict_bk, name, dim):
    D, domain = DISTANCES[name], DOMAINS[dim]
    T, R = _pair(domain)
    Tc, Rc = strict_bk.asarray(T), strict_bk.asarray(R)
    assert_close(strict_bk, D(Tc, Rc, domain), _reference(D, T, R, domain), rtol=1e-12)
    if D.gauss_newton:
        r = D.residual(Tc, Rc, domain)
        r_ref, W_ref = _residual_and_weight_ref(D, T, R, domain)
        assert_close(strict_bk, r, r_ref, rtol=1e-13)
        assert_close(strict_bk, D.gn_weight(r, Rc, domain), W_ref, rtol=1e-14)


@pytest.mark.parametrize("name", DISTANCES)
def test_float32(bk, name):
    D, domain = DISTANCES[name], DOMAINS["2d"]
    T, R = _pair(domain)
    Tc, Rc = bk.asarray(T, dtype="float32"), bk.asarray(R, dtype="float32")
    value = _forward(bk, D, domain)(Tc, Rc)
    assert value.dtype == bk.xp.float32
    assert_close(bk, value, _reference(D, T, R, domain), rtol=rtol("float32"))
    if D.gauss_newton:
        r = D.residual(Tc, Rc, domain)
        assert r.dtype == D.gn_weight(r, Rc, domain).dtype == bk.xp.float32


# ------------------------------------------------------------------------ bad input


def test_bad_images_are_refused_naming_the_argument(bk):
    domain = DOMAINS["2d"]
    T, R = _pair(domain)
    Tc, Rc = bk.asarray(T), bk.asarray(R)
    cases = [
        ((bk.asarray(T[:, :9]), Rc, domain), ValueError, r"Tc has shape \(12, 9\)"),
        ((Tc, bk.asarray(R[:11]), domain), ValueError, r"Rc has shape \(11, 10\)"),
        ((Tc, Rc, DOMAINS["3d"]), ValueError, r"Tc has shape \(12, 10\).*\(6, 5, 4\)"),
        ((bk.xp.astype(Tc, bk.xp.int64), Rc, domain), TypeError, "Tc must have a real floating"),
        ((Tc, bk.asarray(R, dtype="float32"), domain), TypeError, "Tc has dtype .*Rc has dtype"),
        ((T.tolist(), Rc, domain), TypeError, "Tc must be an array, not list"),
        ((Tc, Rc, (0, 1, 0, 1)), TypeError, "domain must be a Domain"),
    ]
    for D in DISTANCES.values():
        for args, error, message in cases:
            with pytest.raises(error, match=message):
                D(*args)
        with pytest.raises(
            ValueError, match=r"r has shape \(12, 10\), but must have shape \(120,\)"
        ):
            D.outer(Tc, Rc, domain)
        with pytest.raises(TypeError, match="r has dtype"):
            D.outer(bk.asarray(T.ravel(), dtype="float32"), Rc, domain)
    flat = Domain((0, 1, 0, 1), (1, 5))
    with pytest.raises(ValueError, match="NGF needs at least 2 cells per dimension"):
        NGF()(bk.asarray(np.ones((1, 5))), bk.asarray(np.ones((1, 5))), flat)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: distance("lncc"),
            ValueError,
            r"name must be one of \['mi', 'mi-gn', 'ncc', 'ngf', 'ssd'\]",
        ),
        (lambda: distance(3), ValueError, "name must be one of"),
        (
            lambda: distance("ssd", edge=1.0),
            TypeError,
            r"unknown option\(s\) \['edge'\].*no options",
        ),
        (
            lambda: distance("ngf", egde=1.0),
            TypeError,
            r"\['egde'\] for distance 'ngf'.*\['edge', 'boundary'\]",
        ),
        (lambda: distance("mi", bins=8), TypeError, r"unknown option\(s\) \['bins'\]"),
        (lambda: NGF(edge=0.0), ValueError, "edge must be finite and > 0, got 0.0"),
        (lambda: NGF(edge=-1), ValueError, "edge must be finite and > 0"),
        (lambda: NGF(edge=float("inf")), ValueError, "edge must be finite and > 0"),
        (lambda: NGF(edge="1"), TypeError, "edge must be a number, not str"),
        (lambda: NGF(1.0), TypeError, "positional"),
        (lambda: MI(bins_T=3), ValueError, "bins_T must be at least 4"),
        (lambda: MI(bins_R=8.0), TypeError, "bins_R must be an integer, not float"),
        (lambda: MI(bins_T=True), TypeError, "bins_T must be an integer, not bool"),
        (lambda: MI(range_T=(1.0, 1.0)), ValueError, r"range_T must be finite with lo < hi"),
        (lambda: MI(range_R=(0.0, float("nan"))), ValueError, "range_R must be finite"),
        (lambda: MI(range_R=(0.0,)), TypeError, r"range_R must be a pair of numbers"),
        (lambda: MI(range_T=None, range_R=3.0), TypeError, r"range_R must be a pair of numbers"),
    ],
)
def test_bad_options_are_refused_naming_the_option(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_factory_builds_each_distance():
    assert distance("ssd") == SSD()
    assert distance("NCC") == NCC()
    assert distance("ngf", edge=2) == NGF(edge=2.0)
    mi = distance("mi", bins_T=np.int64(16), range_R=[0, 255])
    assert mi == MI(bins_T=16, range_R=(0.0, 255.0)) and type(mi.bins_T) is int


# ------------------------------------------------------------------------ property test

_N = DOMAINS["2d"].n  # every domain has 120 cells
_IMAGES = hnp.arrays(np.float64, _N, elements=st.integers(0, 8).map(lambda k: k / 8))


@settings(max_examples=10)
@given(T=_IMAGES, R=_IMAGES, v=_IMAGES, dim=st.sampled_from(sorted(DOMAINS)))
def test_random_images_agree_across_backends(all_ad, np_bk, T, R, v, dim):
    """Values (all backends vs the reference), gradients and HVPs (torch vs JAX).

    Constant and zero images are included: the guards must agree with the references too.
    Absolute floors: MI is a difference of O(1) entropies, so a value near 0 carries rounding
    of O(1e-15); at (near-)constant images the derivatives nearly vanish (O(1e-8) for MI, from
    τ) and carry rounding of O(1e-17), far below the O(1e-2) derivatives of typical images.
    """
    domain = DOMAINS[dim]
    T, R, v = (a.reshape(domain.m) for a in (T, R, v))
    for name, D in DISTANCES.items():
        ref = _reference(D, T, R, domain)
        assert _value(np_bk, D, T, R, domain) == pytest.approx(ref, rel=1e-10, abs=1e-13)
        if name not in DIFFERENTIATED:
            assert _value(all_ad[0], D, T, R, domain) == pytest.approx(ref, rel=1e-10, abs=1e-13)
            continue
        derivatives = []
        for bk in all_ad:
            Tc, Rc = bk.asarray(T), bk.asarray(R)
            value, g = _value_and_grad(bk, D, domain)(Tc, Rc)
            assert float(bk.to_numpy(value)) == pytest.approx(ref, rel=1e-10, abs=1e-13)
            hv = _hvp(bk, D, domain)(Tc, Rc, bk.asarray(v))
            derivatives.append((bk.to_numpy(g), bk.to_numpy(hv)))
        for ours, theirs in zip(*derivatives, strict=True):
            assert np.isfinite(ours).all()
            atol = 1e-10 * np.abs(theirs).max() + 1e-15
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol)
