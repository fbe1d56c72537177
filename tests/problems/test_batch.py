"""register_batch (issue 16): a batch of pairs gives what looping register over them gives, pair
by pair (values, iterations, function evaluations, statuses, messages), on every backend; bad
input is refused before any work, naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

import multireg
from multireg import spline_coefficients, spline_interpolate
from multireg._backend import _instance
from multireg.data import blobs
from multireg.grid import Domain
from multireg.optimize import Status
from multireg.problems import _batch_kernels
from multireg.problems._batch_kernels import spline_values
from multireg.problems.batch import register_batch
from tests.conftest import AD_BACKENDS

M = (32, 32)
OPTIONS = dict(transform="affine", levels=2, theta=1e-2)  # θ: the reference is smoothed too
MOTIONS = [
    (np.eye(2), (0.0, 0.0)),  # already aligned: stops at once
    (((1.03, 0.02), (-0.01, 0.98)), (0.02, -0.01)),
    (((0.97, -0.03), (0.02, 1.02)), (-0.03, 0.02)),
    (((1.1, 0.15), (-0.12, 0.92)), (0.08, -0.06)),
    (((1.2, 0.25), (-0.2, 0.85)), (0.12, -0.1)),  # needs the most iterations
]


@pytest.fixture(
    params=[
        # JAX compiles the batched kernels for each size of the set of pairs still iterating
        # and each level: ~40 s cold on the shared 2-core machine (torch: ~5 s)
        pytest.param(name, marks=pytest.mark.slow) if name == "jax" else name
        for name in AD_BACKENDS
    ]
)
def ad_bk(request):
    return _instance(request.param)


def _series():
    """The reference and templates moved by known affine maps (y = A(x − c) + c + b)."""
    R, domain = blobs(M)
    x = domain.cell_centers()
    coef = spline_coefficients(R, 0.0)
    Ts = []
    for A, b in MOTIONS:
        y = (x - 0.5) @ np.asarray(A).T + 0.5 + np.asarray(b)
        Ts.append(spline_interpolate(coef, domain, y).reshape(M))
    return Ts, R, domain.omega


def _same(batch, loop, bk):
    """Pair by pair and level by level: the loop's decisions and values, to round-off."""
    assert len(batch) == len(loop)
    for b, r in zip(batch, loop, strict=True):
        assert b.iterations == r.iterations
        assert b.status is r.status
        for lb, lr in zip(b.levels, r.levels, strict=True):
            assert lb.domain == lr.domain and lb.stage == lr.stage
            assert lb.result.status is lr.result.status
            assert lb.result.message == lr.result.message
            assert lb.result.nfev == lr.result.nfev
            assert lb.result.fun == pytest.approx(lr.result.fun, rel=1e-10, abs=1e-14)
            assert [h.step_length for h in lb.result.history] == [
                h.step_length for h in lr.result.history
            ]
        np.testing.assert_allclose(bk.to_numpy(b.w), bk.to_numpy(r.w), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bk.to_numpy(b.y), bk.to_numpy(r.y), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            bk.to_numpy(b.warped), bk.to_numpy(r.warped), rtol=1e-10, atol=1e-12
        )
        assert b.distance == pytest.approx(r.distance, rel=1e-10, abs=1e-14)
        assert b.reduction == pytest.approx(r.reduction, rel=1e-10, abs=1e-14)
        assert b.backend == r.backend and b.transform == r.transform


def test_a_series_onto_one_reference_equals_the_loop(ad_bk):
    Ts, R, omega = _series()
    batch = register_batch(Ts, R, omega, backend=ad_bk.name, **OPTIONS)
    loop = [multireg.register(T, R, omega, backend=ad_bk.name, **OPTIONS) for T in Ts]
    _same(batch, loop, ad_bk)
    # the pairs took different paths: the aligned one stopped at once, unchanged
    assert batch[0].iterations == (0, 0)
    np.testing.assert_array_equal(ad_bk.to_numpy(batch[0].w), [1, 0, 0, 0, 1, 0])
    assert len({b.iterations for b in batch}) >= 3
    # and each undid its motion φ(x) = A(x − c) + c + b: φ(y(x)) ≈ x
    x = ad_bk.to_numpy(batch[0].y)  # the identity's: the cell centres
    for b, (A, shift) in zip(batch[1:], MOTIONS[1:], strict=True):
        y = ad_bk.to_numpy(b.y)
        back = (y - 0.5) @ np.asarray(A).T + 0.5 + np.asarray(shift)
        np.testing.assert_allclose(back, x, atol=1e-2)


def test_statuses_differ_per_pair_as_in_the_loop(ad_bk):
    """max_iter = 1: the aligned pair and the small motions converge, the large ones stop at
    max_iter; each pair's status is its own."""
    Ts, R, omega = _series()
    batch = register_batch(Ts, R, omega, backend=ad_bk.name, max_iter=1, **OPTIONS)
    loop = [
        multireg.register(T, R, omega, backend=ad_bk.name, max_iter=1, **OPTIONS) for T in Ts
    ]  # fmt: skip
    _same(batch, loop, ad_bk)
    statuses = [b.status for b in batch]
    assert statuses[0] is Status.CONVERGED and statuses[-1] is Status.MAX_ITERATIONS


def test_one_reference_per_template_and_a_start(ad_bk):
    """Pairs with their own references (the templates are now the references' roles swapped),
    given as one stacked array, with a common start w0."""
    Ts, R, omega = _series()
    w0 = np.array([1.01, 0.0, 0.0, 0.0, 0.99, 0.0])
    Rs = np.stack(Ts[1:])
    options = dict(OPTIONS, w0=w0)
    batch = register_batch([R] * 4, Rs, omega, backend=ad_bk.name, **options)
    loop = [multireg.register(R, Ri, omega, backend=ad_bk.name, **options) for Ri in Ts[1:]]
    _same(batch, loop, ad_bk)


def test_pairs_in_chunks_equal_the_loop(ad_bk, monkeypatch):
    """Kernels that take the pairs in chunks (here of 4 on the 32² level: 4 + 3, the short one
    padded on JAX) give the loop's results, the pairs in their order."""
    monkeypatch.setitem(_batch_kernels.CHUNK_POINTS, ad_bk.name, 4 * M[0] * M[1])
    monkeypatch.setattr(_batch_kernels, "_KERNELS", {})
    Ts, R, omega = _series()
    Ts = Ts + Ts[3:] + Ts[1:2]  # 7 pairs, the last ones repeated in another order
    batch = register_batch(Ts, R, omega, backend=ad_bk.name, **OPTIONS)
    loop = [multireg.register(T, R, omega, backend=ad_bk.name, **OPTIONS) for T in Ts]
    _same(batch, loop, ad_bk)


def test_linear_model_and_rigid_equal_the_loop(ad_bk):
    """The linear image model (interpolated per pair under vmap) with a rigid map."""
    Ts, R, omega = _series()
    options = dict(levels=2, transform="rigid", image_model="linear")
    batch = register_batch(Ts, R, omega, backend=ad_bk.name, **options)
    loop = [multireg.register(T, R, omega, backend=ad_bk.name, **options) for T in Ts]
    _same(batch, loop, ad_bk)


def test_extreme_intensities_as_in_the_loop(ad_bk):
    """Intensities near 1e200 (computed on exactly rescaled images, reported in the user's
    units): the same as the loop, the reference scaled with each pair."""
    Ts, R, omega = _series()
    Ts, R = [T * 1e200 for T in Ts], R * 1e200
    batch = register_batch(Ts, R, omega, backend=ad_bk.name, **OPTIONS)
    loop = [multireg.register(T, R, omega, backend=ad_bk.name, **OPTIONS) for T in Ts]
    assert all(b.intensity_exponent != 0 for b in batch)
    _same(batch, loop, ad_bk)


@pytest.mark.parametrize(
    ("name", "m"),
    [
        # JAX compiles the 3-D stencil (64 gathers, four sums) in ~10 s on the shared machine
        pytest.param(name, m, marks=pytest.mark.slow)
        if name == "jax" and len(m) == 3
        else (name, m)
        for name in AD_BACKENDS
        for m in ((7, 5), (6, 5, 4))
    ],
)
def test_batched_spline_gradient_is_the_derivative_of_each_pairs_spline(name, m):
    """The batched kernels' [T, ∇T] (one stencil pass, the weights' derivatives written out)
    is, pair by pair, the single-pair spline and its derivative by AD, at points inside, near
    and beyond the support (where both are 0)."""
    bk = _instance(name)
    xp, d = bk.xp, len(m)
    domain = Domain(tuple(v for k in range(d) for v in (0.0, 1.0 + 0.5 * k)), m)
    rng = np.random.default_rng(1)
    pairs, n = 3, 40
    coef = rng.standard_normal((pairs, *m))
    lo, hi = np.asarray(domain.lower), np.asarray(domain.upper)
    Y = lo + (hi - lo) * rng.uniform(-0.6, 1.6, size=(pairs, n, d))  # some beyond the support
    both = bk.jit(lambda c, y: spline_values(xp, c, domain, y, gradient=True))
    TdT = bk.to_numpy(both(bk.asarray(coef), bk.asarray(Y)))
    assert TdT.shape == (pairs, n, 1 + d)
    values = bk.jit(lambda c, y: spline_values(xp, c, domain, y))
    np.testing.assert_array_equal(bk.to_numpy(values(bk.asarray(coef), bk.asarray(Y))), TdT[..., 0])
    assert np.any(TdT[..., 0] == 0) and np.any(TdT[..., 0] != 0)

    def single(c, y):  # one pair: the spline and its derivative by AD
        T, pullback = bk.vjp(lambda u: spline_interpolate(c, domain, u), y)
        return T, pullback(xp.ones_like(T))

    single = bk.jit(single)
    for i in range(pairs):
        T, grad = single(bk.asarray(coef[i]), bk.asarray(Y[i]))
        np.testing.assert_allclose(TdT[i, :, 0], bk.to_numpy(T), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(TdT[i, :, 1:], bk.to_numpy(grad), rtol=1e-12, atol=1e-12)


def _bad(**changes):
    Ts, R, omega = _series()
    args = dict(Ts=Ts[:2], R=R, omega=omega)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (dict(Ts=[]), ValueError, "Ts is empty"),
        (dict(Ts=[blobs(M)[0], blobs((16, 16))[0]]), ValueError, "Ts\\[1\\]"),
        (dict(Ts=[blobs(M)[0], np.full(M, np.nan)]), ValueError, "Ts\\[1\\] contains NaN"),
        (dict(R=[blobs(M)[0]] * 3), ValueError, "R must be one image"),
        (dict(R=np.zeros((16, 16))), ValueError, "R"),
        (dict(Ts=3.0), TypeError, "Ts must be a sequence"),
        (dict(method="lbfgs"), ValueError, "method"),
        (dict(transform="nonparametric"), ValueError, "nonparametric"),
        (dict(transform="bspline", p=(8, 8)), ValueError, "parameters"),
        (dict(w0=np.zeros(5)), ValueError, "w0"),
        (dict(w0=np.full(6, np.nan)), ValueError, "w0 contains NaN"),
        (dict(max_iter=-1), ValueError, "max_iter"),
        (dict(distance="mi"), ValueError, "Gauss–Newton"),
        (dict(levels="all"), ValueError, "levels"),
        (dict(tol_j=-1.0), ValueError, "tol_j"),
        (dict(max_iters=3), TypeError, "max_iters"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(changes, error, match):
    args = _bad(**changes)
    with pytest.raises(error, match=match):
        register_batch(args.pop("Ts"), args.pop("R"), args.pop("omega"), **args)
