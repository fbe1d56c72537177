"""Homotopy in θ: the path against an independent search, the tangent against finite differences,
the predictor's order, torch == JAX, Gauss–Newton scaling, warm starts == register(), step
control, and input checks.

The main problem has a path that moves: T is one Gaussian blob, R two blobs of different weights
on the line x2 = 1/2. Heavy smoothing (large θ) merges R's blobs, so the best translation lies
between them; as θ → 0 it moves onto the heavier blob. Both images are symmetric about x2 = 1/2
on a grid symmetric about it, so the minimiser has t2 = 0 and the path is a 1-D function t1(θ),
which the reference finds by a dense search over t1 with its own spline model (a dense Kronecker
solve for the coefficients, SciPy's ``map_coordinates`` to evaluate them).

Most tests share one configuration (translation, SSD, one domain), so JAX compiles its kernels
once for the module; tests that only need one backend run on torch, which compiles nothing.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.optimize import minimize_scalar

import multireg
from multireg import Domain
from multireg._backend import _instance
from multireg.data import blobs
from multireg.interpolation import _regularizer_matrix
from multireg.optimize import Status
from multireg.problems.homotopy import THETA_INFORMATION, homotopy
from multireg.problems.homotopy.kernels import _kernels
from multireg.problems.homotopy.options import _starts
from tests.conftest import AD_BACKENDS

M = (20, 20)
OMEGA = (0.0, 1.0, 0.0, 1.0)
DOMAIN = Domain(OMEGA, M)
THETAS = [100.0, 30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01]
TIGHT = 1e-11  # corrector tolerance for comparisons at the 1e-8 level


def _blob(center, sigma=0.08, domain=DOMAIN):
    x = domain.cell_centers().reshape(*domain.m, domain.dim)
    return np.exp(-0.5 * np.sum((x - np.asarray(center)) ** 2, axis=-1) / sigma**2)


T_IMG = _blob((0.5, 0.5))
R_IMG = _blob((0.4, 0.5)) + 0.6 * _blob((0.62, 0.5))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These problems are tiny (at most a few thousand points): torch's intra-op threads only add
    synchronisation, which costs 10-100x on a loaded machine. Restored after the module."""
    if "torch" not in AD_BACKENDS:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch():
    if "torch" not in AD_BACKENDS:
        pytest.skip("needs torch")
    return _instance("torch")


def _run(bk, **options):
    options = {"transform": "translation", "tol": TIGHT, "backend": bk, **options}
    return homotopy(T_IMG, R_IMG, OMEGA, **options)


# ------------------------------------------------------------------------------- references


def _coefficients_ref(data, theta):
    """(⊗_k (BᵀB + θP)) c = (⊗_k Bᵀ) d, solved as one dense system (FAIR's moments model)."""
    M_, rhs = np.ones((1, 1)), np.ones((1, 1))
    for m in data.shape:
        B = 4 * np.eye(m) + np.eye(m, k=1) + np.eye(m, k=-1)
        M_ = np.kron(M_, B.T @ B + theta * _regularizer_matrix("moments", m))
        rhs = np.kron(rhs, B.T)
    return np.linalg.solve(M_, rhs @ data.ravel()).reshape(data.shape)


def _spline_ref(coef, x):
    xi = (x - np.array(DOMAIN.lower)) / np.array(DOMAIN.h) - 0.5
    return ndimage.map_coordinates(
        36.0 * coef, xi.T, order=3, mode="grid-constant", prefilter=False
    )


def _ssd_ref(theta, T=T_IMG, R=R_IMG):
    """t1 ↦ J((t1, 0), θ) = ½·hd·‖T_θ(x + t) − R_θ(x)‖², independent of the library."""
    x = DOMAIN.cell_centers()
    cT = _coefficients_ref(T, theta)
    Rc = _spline_ref(_coefficients_ref(R, theta), x)

    def J(t1):
        r = _spline_ref(cT, x + np.array([t1, 0.0])) - Rc
        return 0.5 * DOMAIN.cell_volume * float(r @ r)

    return J


def _global_t1(theta):
    """The global minimiser over t1 ∈ [−0.3, 0.3]: a dense scan, then a bounded refinement."""
    J = _ssd_ref(theta)
    grid = np.linspace(-0.3, 0.3, 601)
    t = grid[np.argmin([J(v) for v in grid])]
    return minimize_scalar(J, bounds=(t - 2e-3, t + 2e-3), options={"xatol": 1e-12}).x


def _rms_cells(w1, w2):
    """RMS map distance in cells for translations: ‖(w1 − w2)/h‖."""
    return float(np.linalg.norm((np.asarray(w1) - np.asarray(w2)) / np.array(DOMAIN.h)))


# ------------------------------------------------------------------------------- the path


def test_path_follows_the_global_minimiser(ad_bk):
    res = _run(ad_bk, thetas=THETAS)
    assert res.success, res.message
    ws = res.ws
    reference = np.array([_global_t1(theta) for theta in THETAS])
    np.testing.assert_allclose(ws[:, 0], reference, rtol=0, atol=1e-7)
    np.testing.assert_allclose(ws[:, 1], 0.0, atol=1e-9)
    assert ws[-1, 0] - ws[0, 0] > 1.0 * DOMAIN.h[0]  # the path moves by more than a cell
    assert np.all(res.grad_norms <= TIGHT * 10)
    assert res.theta == THETAS[-1]
    assert res.distance == pytest.approx(_ssd_ref(THETAS[-1])(ws[-1, 0]), rel=1e-9)
    warped = ad_bk.to_numpy(res.warped)
    x = DOMAIN.cell_centers()
    expected = _spline_ref(_coefficients_ref(T_IMG, THETAS[-1]), x + ws[-1]).reshape(M)
    np.testing.assert_allclose(warped, expected, atol=1e-10)


def test_tangent_matches_finite_differences_of_the_path(ad_bk):
    theta, eps = 1.0, 1e-3
    res = _run(ad_bk, thetas=[theta, 0.5])
    tangent = res.path[0].tangent
    assert tangent is not None and res.path[1].tangent is None  # none needed at the end
    w = res.path[0].w

    def corrected(t):
        out = _run(ad_bk, thetas=[t], w0=w)
        assert out.success
        return out.ws[0]

    fd = (corrected(theta * math.exp(eps)) - corrected(theta * math.exp(-eps))) / (2 * eps)
    assert abs(fd[0]) > 1e-3  # dw/d(log θ) is not trivially zero here
    # central differences: O(eps²) ≈ 1e-6 relative, corrector error ≈ 1e-11/eps
    np.testing.assert_allclose(tangent, fd, rtol=0, atol=1e-6 * abs(fd[0]) + 1e-8)


def test_mixed_derivative_differentiates_both_images(ad_bk):
    """∂_s∇_w J (s = log θ) from the kernel equals central differences of ∇_w J in s with both
    T_θ and R_θ rebuilt, and differs from the derivative with R frozen."""
    bk, eps = ad_bk, 1e-4
    k = _kernels(bk, multireg.transform("translation", dim=2), multireg.SSD(), DOMAIN)
    T, R = bk.asarray(T_IMG), bk.asarray(R_IMG)
    x = DOMAIN.cell_centers(bk.xp, dtype=T.dtype)
    w = bk.asarray(np.array([0.03, 0.0]))
    theta = 1.0

    def grad(t_T, t_R):
        cT, _ = k["images"](bk.asarray(np.array(t_T)), T, R, x)
        _, Rc = k["images"](bk.asarray(np.array(t_R)), T, R, x)
        return bk.to_numpy(k["value_and_grad"](w, cT, Rc, x)[1])

    up, down = theta * math.exp(eps), theta * math.exp(-eps)
    both = (grad(up, up) - grad(down, down)) / (2 * eps)
    template_only = (grad(up, theta) - grad(down, theta)) / (2 * eps)
    mixed = bk.to_numpy(k["mixed"](w, bk.asarray(np.array(theta)), T, R, x))
    np.testing.assert_allclose(mixed, both, rtol=1e-6, atol=1e-6 * np.abs(both).max())
    assert np.abs(mixed - template_only).max() > 1e-2 * np.abs(mixed).max()


@pytest.mark.parametrize(("predictor", "order"), [("tangent", 2), ("secant", 2), ("none", 1)])
def test_predictor_error_order(ad_bk, predictor, order):
    """Error of one predicted step against the corrected point ∝ Δs^order (fitted slope)."""
    theta = 1.0
    steps = np.array([0.4, 0.2, 0.1, 0.05])
    errors = []
    for ds in steps:
        # the secant needs a previous point: one step before, of the same length
        before = [theta * math.exp(ds)] if predictor == "secant" else []
        res = _run(ad_bk, thetas=[*before, theta, theta * math.exp(-ds)], predictor=predictor)
        assert res.success
        errors.append(res.path[-1].predictor_error)
        # the estimate is the distance of the predicted map from the corrected one, in cells
        if predictor == "none":
            assert errors[-1] == pytest.approx(_rms_cells(res.ws[-1], res.ws[-2]), rel=1e-9)
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert slope == pytest.approx(order, abs=0.2), (errors, slope)


def test_torch_and_jax_give_the_same_path(all_ad):
    """The same θ, the same corrected points (to 1e-8) and the same corrector work. The last
    Newton step of a corrector decreases J by a few ulps (‖∇J‖ from 2e-9 to 1e-17 at J = 3e-3),
    so whether Armijo takes it whole or halves it (and needs one more iteration) is decided by
    rounding, which differs between the frameworks: iteration counts may differ by one there."""
    runs = {}
    for bk in all_ad:
        runs[bk.name] = [
            _run(bk, thetas=THETAS),
            _run(bk, theta_range=(100.0, 0.01), step="adaptive", target_error=0.05),
        ]
    (a_fixed, a_adaptive), (b_fixed, b_adaptive) = runs.values()
    for a, b in ((a_fixed, b_fixed), (a_adaptive, b_adaptive)):
        np.testing.assert_allclose(a.thetas, b.thetas, rtol=1e-10)
        assert np.abs(a.iterations - b.iterations).max() <= 1, (a.iterations, b.iterations)
        assert abs(int(a.iterations.sum()) - int(b.iterations.sum())) <= 1
        scale = np.abs(a.ws).max()
        np.testing.assert_allclose(a.ws, b.ws, rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(a.funs, b.funs, rtol=1e-8)


# ---------------------------------------------------------------------------- Gauss–Newton


def test_gauss_newton_hessian_is_scaled_like_the_objective(ad_bk):
    """H_GN = hd·J_rᵀJ_r for ψ = ½·hd·‖r‖²: equal to the exact Hessian where r = 0, and to hd·JᵀJ
    with J from finite differences of the independent model; not equal to it where r ≠ 0."""
    bk = ad_bk
    k = _kernels(bk, multireg.transform("translation", dim=2), multireg.SSD(), DOMAIN)
    theta = bk.asarray(np.array(0.3))
    x = DOMAIN.cell_centers(bk.xp, dtype=bk.xp.float64)
    w = bk.asarray(np.zeros(2))
    # zero residual: T = R at the identity
    cT, Rc = k["images"](theta, bk.asarray(R_IMG), bk.asarray(R_IMG), x)
    gn = bk.to_numpy(k["gn_matrix"](w, cT, Rc, x))
    exact = bk.to_numpy(k["hessian"](w, cT, Rc, x))
    np.testing.assert_allclose(gn, exact, rtol=1e-10, atol=1e-12 * np.abs(exact).max())
    coef, h = _coefficients_ref(R_IMG, 0.3), 1e-6
    xc = DOMAIN.cell_centers()
    columns = [
        (_spline_ref(coef, xc + h * e) - _spline_ref(coef, xc - h * e)) / (2 * h) for e in np.eye(2)
    ]
    Jr = np.stack(columns, axis=1)
    expected = DOMAIN.cell_volume * Jr.T @ Jr  # finite differences: ~1e-10 relative error
    np.testing.assert_allclose(gn, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    # a large residual: the exact Hessian has the second-order term r·∇²T
    cT, Rc = k["images"](theta, bk.asarray(T_IMG), bk.asarray(R_IMG), x)
    gn = bk.to_numpy(k["gn_matrix"](w, cT, Rc, x))
    exact = bk.to_numpy(k["hessian"](w, cT, Rc, x))
    assert np.abs(gn - exact).max() > 1e-2 * np.abs(exact).max()


def test_gauss_newton_predictor_and_corrector_follow_the_same_path(ad_bk):
    exact = _run(ad_bk, thetas=THETAS)
    gn = _run(ad_bk, thetas=THETAS, hessian="gauss-newton", corrector="gauss-newton")
    assert gn.success
    np.testing.assert_allclose(gn.ws, exact.ws, rtol=0, atol=1e-8)
    # the GN tangent is a different (approximate) direction, so its predictions differ
    assert not np.allclose(gn.predictor_errors[1:], exact.predictor_errors[1:], rtol=1e-3)


# --------------------------------------------------------------------- multiscale, correctors


def test_predictor_none_reproduces_warm_started_registrations():
    """predictor="none" is multiscale continuation: each θ corrected from the previous point,
    as a chain of register(theta=θ, w0=previous, method="newton") calls does (torch: register's
    kernels are keyed by θ, so JAX would compile them once per θ)."""
    bk = _torch()
    thetas = THETAS[::2]
    res = _run(bk, thetas=thetas, predictor="none")
    w = None
    for theta, point in zip(thetas, res.path, strict=True):
        reg = multireg.register(
            T_IMG, R_IMG, OMEGA, transform="translation", theta=theta, method="newton",
            w0=w, backend=bk, tol_j=0.0, tol_y=0.0, tol_g=0.0, max_iter=50,
        )  # fmt: skip
        w = reg.w
        np.testing.assert_allclose(point.w, bk.to_numpy(w), rtol=0, atol=1e-9)
        assert point.tangent is None


@pytest.mark.parametrize("corrector", ["trust-region", "gauss-newton"])
def test_other_correctors_find_the_same_path(corrector):
    bk = _torch()
    reference = _run(bk, thetas=THETAS[::2])
    res = _run(bk, thetas=THETAS[::2], corrector=corrector)
    assert res.success, res.message
    np.testing.assert_allclose(res.ws, reference.ws, rtol=0, atol=1e-8)


@contextlib.contextmanager
def _jax_compilations():
    """The names of JAX's compilation events (traces, lowerings, compiles) inside the block."""
    from jax import monitoring

    events = []

    def listener(name, *args, **kwargs):
        if name.startswith("/jax/core/compile/"):
            events.append(name)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        monitoring.unregister_event_duration_listener(listener)


def test_another_theta_range_compiles_nothing_on_jax():
    """θ enters every kernel as a 0-d array (issue 13.2): a second path over other scales, with
    another number of steps, adaptive steps and another tolerance, traces and compiles no new
    program. Counted with JAX's monitoring events, never timed."""
    if "jax" not in AD_BACKENDS:
        pytest.skip("needs jax")
    bk = _instance("jax")
    _run(bk, theta_range=(100.0, 0.01), n_steps=4)
    _run(bk, theta_range=(100.0, 0.01), n_steps=4, step="adaptive")
    with _jax_compilations() as events:
        _run(bk, theta_range=(37.0, 0.003), n_steps=7, tol=1e-9)
        _run(bk, theta_range=(50.0, 0.02), n_steps=5, step="adaptive", target_error=0.2)
    assert events == []


@pytest.mark.slow
def test_another_ngf_edge_compiles_nothing_on_jax():
    """NGF's edge is data in the homotopy's kernels as in ``register`` (issue 13.2): a path with
    another edge traces and compiles no new program, and the edge reaches the kernels (another
    edge, another objective along the path)."""
    if "jax" not in AD_BACKENDS:
        pytest.skip("needs jax")
    bk = _instance("jax")
    options = dict(theta_range=(10.0, 0.1), n_steps=3)
    first = _run(bk, distance=multireg.NGF(edge=0.3), **options)
    with _jax_compilations() as events:
        other = _run(bk, distance=multireg.NGF(edge=3.0), **options)
    assert events == []
    assert other.path[0].fun != pytest.approx(first.path[0].fun, rel=1e-6)


def test_each_point_computes_its_hessian_once(monkeypatch):
    """The corrector's last iterate, the tangent and λ_min need ∇²J at the same corrected point,
    and a prediction already on the path needs ∇J there twice: each is computed once (issue 13.5:
    on torch a Hessian is most of a Newton iteration). Counted per (w, θ), not timed."""
    import sys

    bk = _torch()
    module = sys.modules["multireg.problems.homotopy.path"]  # where homotopy() builds them
    hessians, gradients = [], []

    def counted(*configuration, **keywords):
        kernels = dict(_kernels(*configuration, **keywords))
        for name in {"hessian", "value_grad_hessian", "value_and_grad"} & set(kernels):

            def wrapped(w, cT, *rest, kernel=kernels[name], name=name):
                key = (bk.to_numpy(w).tobytes(), bk.to_numpy(cT).tobytes())
                (gradients if name == "value_and_grad" else hessians).append(key)
                return kernel(w, cT, *rest)

            kernels[name] = wrapped
        return kernels

    monkeypatch.setattr(module, "_kernels", counted)
    res = _run(bk, thetas=THETAS)
    assert res.success
    assert hessians  # the counting kernels were the ones used
    assert len(hessians) == len(set(hessians)), (len(hessians), len(set(hessians)))
    assert len(gradients) == len(set(gradients)), (len(gradients), len(set(gradients)))


def test_single_scale_is_the_corrector_alone(ad_bk):
    res = _run(ad_bk, thetas=[0.01])
    assert len(res.path) == 1 and math.isnan(res.path[0].predictor_error)
    assert res.path[0].tangent is None and res.success
    assert res.corrector_iterations == res.path[0].iterations > 0


# ----------------------------------------------------------------------------- step control


def test_adaptive_steps_keep_the_error_target_with_fewer_points(ad_bk):
    fixed = _run(ad_bk, theta_range=(100.0, 0.01), n_steps=20)
    target, n0 = 0.05, 6
    res = _run(ad_bk, theta_range=(100.0, 0.01), step="adaptive", target_error=target)
    assert res.success and res.thetas[-1] == 0.01
    assert len(res.path) < len(fixed.path) / 2
    np.testing.assert_allclose(res.ws[-1], fixed.ws[-1], rtol=0, atol=1e-9)
    steps = np.diff(np.log(res.thetas))
    assert steps.min() < 0.5 * steps.max() or res.rejected > 0  # the step actually adapts
    for point in res.path[1:]:
        assert not point.jump
        assert point.predictor_error <= 4 * target  # f ≤ 2 for an order-2 predictor
        assert point.iterations <= 2 * n0


def test_an_unreachable_target_jumps_every_step():
    """With an error target no step can meet, every step shrinks below min_step and becomes a
    jump (a warm-started correction); the path still ends at the last θ on the same minimiser."""
    bk = _torch()
    options = dict(theta_range=(10.0, 0.1), step="adaptive", target_error=1e-12, min_step=0.5)
    res = _run(bk, **options)
    assert res.success
    assert all(p.jump for p in res.path[1:]) and res.rejected >= len(res.path) - 1
    steps = -np.diff(np.log(res.thetas))
    np.testing.assert_allclose(steps[:-1], 0.5)
    assert res.corrector_iterations > res.iterations.sum()  # rejected trials are counted
    reference = _run(bk, thetas=[10.0, 0.1])
    np.testing.assert_allclose(res.ws[-1], reference.ws[-1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("step", ["fixed", "adaptive"])
def test_callback_sees_every_accepted_point(step):
    bk = _torch()
    seen = []
    res = _run(
        bk,
        theta_range=(10.0, 0.1),
        n_steps=5,
        step=step,
        callback=lambda *a: seen.append(a),
    )
    assert [s[0] for s in seen] == list(res.thetas)
    assert [s[2] for s in seen] == list(res.iterations)
    np.testing.assert_allclose([s[1] for s in seen], [p.fun for p in res.path])


def test_non_convergence_is_reported_not_raised(ad_bk):
    res = _run(ad_bk, thetas=THETAS[:3], max_corrector_iter=1, w0=[0.2, 0.1])
    assert not res.success
    assert any(p.status is Status.MAX_ITERATIONS for p in res.path)


# ------------------------------------------------------------- transformations, dimensions


@pytest.mark.parametrize(
    ("m", "transform", "p"),
    [
        ((12, 12), "rigid", None),
        ((12, 12), "affine", None),
        ((12, 12), "bspline", (3, 3)),
        ((6, 6, 6), "translation", None),
        ((6, 6, 6), "affine", None),
    ],
)
def test_every_transformation_in_2d_and_3d(m, transform, p):
    """torch only: the kernels are backend-neutral (torch == JAX is tested above), and each new
    configuration costs JAX a compilation of several seconds."""
    bk = _torch()
    R, domain = blobs(m, seed=3, n_blobs=3)
    shift = np.zeros(len(m))
    shift[0] = 0.5 * domain.h[0]
    x = domain.cell_centers()
    T = multireg.spline_interpolate(multireg.spline_coefficients(R), domain, x + shift)
    T = T.reshape(m)
    res = homotopy(
        T, R, domain.omega, transform=transform, p=p, thetas=[10.0, 1.0, 0.1], backend=bk
    )
    assert res.success, res.message
    # T(x) = R(x + shift): the map should move by about −shift (smoothing both images with the
    # same θ does not commute exactly with a shift by half a cell)
    displacement = np.mean(bk.to_numpy(res.transform(res.w, bk.asarray(x))) - x, axis=0)
    np.testing.assert_allclose(displacement, -shift, rtol=0, atol=0.25 * shift[0])


def test_matrix_free_path_equals_dense_path(monkeypatch):
    """Above DENSE_MAX parameters the Hessians are operators (CG on hvp); force that path."""
    bk = _torch()
    R, domain = blobs((12, 12), seed=3, n_blobs=3)
    x = domain.cell_centers()
    T = multireg.spline_interpolate(multireg.spline_coefficients(R), domain, x + 0.02)
    options = dict(transform="bspline", p=(2, 2), thetas=[10.0, 0.1], backend=bk, tol=1e-10)
    dense = homotopy(T.reshape(12, 12), R, domain.omega, **options)
    monkeypatch.setattr(multireg.optimize, "DENSE_MAX", 4)
    free = homotopy(T.reshape(12, 12), R, domain.omega, **options)
    assert free.success
    np.testing.assert_allclose(free.ws, dense.ws, rtol=0, atol=1e-8)
    np.testing.assert_allclose(
        np.stack([p.tangent for p in free.path[:-1]]),
        np.stack([p.tangent for p in dense.path[:-1]]),
        rtol=1e-6,
        atol=1e-9,
    )


# ---------------------------------------------------------------------------------- input


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (dict(predictor="euler"), ValueError, "predictor must be one of"),
        (dict(hessian="bfgs"), ValueError, "hessian must be one of"),
        (dict(corrector="lbfgs"), ValueError, "corrector must be one of"),
        (dict(step="auto"), ValueError, "step must be one of"),
        (dict(transform="elastic"), ValueError, "transform must be one of"),
        (dict(transform="bspline"), ValueError, "needs p"),
        (dict(p=(3, 3)), ValueError, "p .* applies to transform='bspline'"),
        (dict(thetas=[1.0, 2.0]), ValueError, "strictly decreasing"),
        (dict(thetas=[1.0, 0.0]), ValueError, "thetas must be finite and > 0"),
        (dict(thetas=[]), ValueError, "at least one value"),
        (dict(thetas=[1.0, 0.1], n_steps=5), ValueError, "either thetas or theta_range"),
        (dict(theta_range=(0.1, 1.0)), ValueError, "theta_range must be"),
        (dict(theta_range=1.0), TypeError, "theta_range must be a pair"),
        (dict(n_steps=1), ValueError, "n_steps must be ≥ 2"),
        (dict(n_steps=2.5), TypeError, "n_steps must be an int"),
        (dict(thetas=[1.0], step="adaptive"), ValueError, "at least two scales"),
        (dict(tol=0.0), ValueError, "tol must be"),
        (dict(max_corrector_iter=0), ValueError, "max_corrector_iter must be ≥ 1"),
        (dict(target_error=-1.0), ValueError, "target_error must be"),
        (dict(target_iterations=0), ValueError, "target_iterations must be ≥ 1"),
        (dict(min_step=math.nan), ValueError, "min_step must be"),
        (dict(w0=[0.0, 0.0, 0.0]), ValueError, r"w0 must have shape \(2,\)"),
        (dict(w0=[math.nan, 0.0]), ValueError, "w0 contains NaN"),
        (dict(distance="mi", corrector="gauss-newton"), ValueError, "no Gauss–Newton form"),
        (dict(distance=3), TypeError, "distance must be a name or a Distance"),
        (dict(dtype="float16"), ValueError, "dtype must be one of"),
        (dict(backend="numpy"), ValueError, "cannot differentiate"),
        (dict(tolerance=1e-3), TypeError, "unexpected keyword"),
        (dict(callback="print"), TypeError, "callback must be callable"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(options, error, match):
    options = {"transform": "translation", **options}
    with pytest.raises(error, match=match):
        homotopy(T_IMG, R_IMG, OMEGA, **options)


def test_bad_images_are_rejected():
    with pytest.raises(ValueError, match=r"T has shape .* but R has shape"):
        homotopy(T_IMG, R_IMG[:-1], OMEGA)
    with pytest.raises(ValueError, match="R is constant"):
        homotopy(T_IMG, np.ones(M), OMEGA)
    with pytest.raises(ValueError, match="omega must have"):
        homotopy(T_IMG, R_IMG, (0.0, 1.0))


# ------------------------------------------------- θ_max from the data, folds, several starts
#
# A rotated pair on the hands' domain (Watson et al.'s setting, issue 14): four blobs, the
# template the reference rotated by 150° about the centre, so that T(y(x)) = R(x) for y the
# rotation by 150°. From the identity the path of every schedule ends at a wrong rotation; the
# fixed schedule (1e3, 1e-3) in 20 values also passes a fold with the affine transform.

OMEGA_HANDS = (0.0, 20.0, 0.0, 25.0)


def _rotated_blobs(m, degrees, seed=0):
    R, domain = blobs(m, OMEGA_HANDS, n_blobs=4, seed=seed)
    c = np.array(domain.lower) + np.array(domain.extent) / 2
    a = math.radians(degrees)
    Q = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    x = domain.cell_centers()
    # T(x) = R(Qᵀ(x − c) + c)
    coef = multireg.spline_coefficients(R)
    T = multireg.spline_interpolate(coef, domain, (x - c) @ Q + c)
    return np.asarray(T).reshape(m), R, domain


def _rotation_angle(res, bk, domain):
    """The rotation (degrees in [0, 360)) closest to the linear part of the final map."""
    c = np.array(domain.lower) + np.array(domain.extent) / 2
    pts = c + np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = bk.to_numpy(res.transform(bk.asarray(res.ws[-1]), bk.asarray(pts)))
    A = np.stack([y[1] - y[0], y[2] - y[0]], axis=1)
    return math.degrees(math.atan2(A[1, 0] - A[0, 1], A[0, 0] + A[1, 1])) % 360


def _angle_error(a, b):
    return abs((a - b + 180) % 360 - 180)


def _one_ad():
    """JAX where installed (these paths are 10-100x slower in torch's eager mode; torch == JAX
    is tested above), else torch."""
    if not AD_BACKENDS:
        pytest.skip("needs torch or jax")
    return _instance("jax" if "jax" in AD_BACKENDS else "torch")


def test_several_starts_recover_a_large_rotation():
    ad_bk = _one_ad()
    T, R, domain = _rotated_blobs((16, 16), 150.0)
    options = dict(transform="rigid", backend=ad_bk, n_steps=12)
    old = homotopy(T, R, OMEGA_HANDS, theta_range=(1e3, 1e-3), **options)
    assert _angle_error(_rotation_angle(old, ad_bk, domain), 150.0) > 90  # the identity's branch
    res = homotopy(T, R, OMEGA_HANDS, starts=3, **options)
    assert res.success, res.message
    assert _angle_error(_rotation_angle(res, ad_bk, domain), 150.0) < 0.1
    assert len(res.branches) == 3 and res.branches[res.best_branch].distance == res.distance
    assert res.distance == min(b.distance for b in res.branches)
    assert res.distance < 1e-3 * old.distance
    # the starts are the rotations about the centre by 0°, 120°, 240°
    w_starts = _starts(3, res.transform, domain)
    x = domain.cell_centers()
    c = np.array(domain.lower) + np.array(domain.extent) / 2
    for k, w in enumerate(w_starts):
        a = math.radians(120.0 * k)
        Q = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        np.testing.assert_allclose(res.transform(w, x), (x - c) @ Q.T + c, atol=1e-12)
    # every branch was traced on the same schedule
    for b in res.branches:
        np.testing.assert_array_equal(b.thetas, res.thetas)


def test_a_fold_on_the_path_is_reported():
    """The study's schedule in 20 values, affine: the path from θ = 1e3 crosses from one branch
    of minimisers to another between two accepted points. The event is recorded, ``folded`` says
    so, and the step, retraced finely through the public API, does not stay on one branch."""
    bk = _one_ad()
    T, R, _ = _rotated_blobs((24, 24), 150.0)
    res = homotopy(
        T, R, OMEGA_HANDS, transform="affine", theta_range=(1e3, 1e-3), n_steps=20, backend=bk
    )
    assert res.folded and [e.kind for e in res.events] == ["fold"]
    assert "not necessarily the global minimiser" in res.message
    event = res.events[0]
    assert event.eigenvalue <= 0
    k = list(res.thetas).index(event.theta_from)
    assert res.thetas[k + 1] == event.theta_to
    fine = homotopy(
        T, R, OMEGA_HANDS, transform="affine", theta_range=(event.theta_from, event.theta_to),
        step="adaptive", target_error=0.05, min_step=1e-3, w0=res.ws[k], backend=bk,
    )  # fmt: skip
    ends_apart = np.linalg.norm(fine.ws[-1] - res.ws[k + 1]) > 1e-3
    assert any(p.jump for p in fine.path) or ends_apart
    # every other step is followed on one branch: each retraced finely ends where the path does
    j = k - 1
    fine = homotopy(
        T, R, OMEGA_HANDS, transform="affine", theta_range=(res.thetas[j], res.thetas[j + 1]),
        step="adaptive", target_error=0.05, min_step=1e-3, w0=res.ws[j], backend=bk,
    )  # fmt: skip
    assert not any(p.jump for p in fine.path)
    np.testing.assert_allclose(fine.ws[-1], res.ws[j + 1], atol=1e-6)


def test_a_minimiser_that_becomes_a_saddle_is_reported(ad_bk):
    """R's two equal blobs are symmetric about T's blob: t = 0 is a critical point at every θ, a
    minimiser while the smoothing merges R's blobs and a saddle once they separate (a pitchfork).
    The corrector's gradient test holds there, so only the Hessian tells. The sign of λ_min at
    each point matches the curvature d²J/dt1² of the independent model at t = 0."""
    T, R = _blob((0.5, 0.5)), _blob((0.38, 0.5)) + _blob((0.62, 0.5))
    res = homotopy(T, R, OMEGA, transform="translation", thetas=THETAS, tol=TIGHT, backend=ad_bk)
    np.testing.assert_allclose(res.ws, 0.0, atol=1e-12)
    h = 1e-4
    for theta, lam in zip(THETAS, res.min_eigenvalues, strict=True):
        J = _ssd_ref(theta, T, R)
        curvature = (J(h) - 2 * J(0.0) + J(-h)) / h**2
        assert np.sign(lam) == np.sign(curvature), (theta, lam, curvature)
    assert res.min_eigenvalues[0] > 0 > res.min_eigenvalues[-1]
    assert [e.kind for e in res.events] == ["indefinite"]
    k = int(np.argmax(res.min_eigenvalues <= 0))
    assert (res.events[0].theta_from, res.events[0].theta_to) == (THETAS[k - 1], THETAS[k])
    assert not res.success and res.folded and "not a minimiser" in res.message
    # the same path with unequal blobs bends onto one of them: one branch, no event
    res = _run(ad_bk, thetas=THETAS)
    assert res.success and not res.events and np.all(res.min_eigenvalues > 0)


def test_theta_max_from_the_data_scales_with_the_grid():
    """θ acts on the coefficients in index units (a smoothing length ∝ θ^¼ cells): the same image
    on a grid twice as fine needs θ 2⁴ = 16 times larger for the same smoothing, and the rule
    finds that; the fixed schedule does not. The schedule starts at the chosen θ_max, where the
    information ratio crosses THETA_INFORMATION."""
    bk = _torch()
    chosen = []
    for m in (16, 32):
        R, _ = blobs((m, m), OMEGA_HANDS, n_blobs=4, seed=5)
        res = homotopy(R, R, OMEGA_HANDS, transform="translation", n_steps=2, backend=bk)
        choice = res.theta_choice
        assert choice.method == "data" and res.thetas[0] == choice.theta_max
        assert res.thetas[-1] == 1e-3
        grid, info = np.array(choice.thetas), np.array(choice.information)
        assert info[0] == 1.0
        assert np.all(info[grid <= choice.theta_max] >= THETA_INFORMATION)
        assert info[np.argmax(grid > choice.theta_max)] < THETA_INFORMATION
        chosen.append(choice.theta_max)
    assert 10 < chosen[1] / chosen[0] < 25


def test_an_explicit_schedule_overrides_the_data():
    bk = _one_ad()
    default = _run(bk, n_steps=5)
    assert default.theta_choice.method == "data" and default.thetas[0] != 1e3
    for options in (dict(theta_range=(1e3, 1e-3), n_steps=5), dict(thetas=[1e3, 1.0, 1e-3])):
        res = _run(bk, **options)
        assert res.theta_choice.method == "given" and res.theta_choice.theta_max == 1e3
        assert res.thetas[0] == 1e3 and res.thetas[-1] == 1e-3
        assert len(res.thetas) == options.get("n_steps", 3)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (dict(starts=0), ValueError, "starts must be ≥ 1"),
        (dict(starts=True), TypeError, "starts must be an int or a sequence"),
        (dict(starts="four"), TypeError, "starts must be an int or a sequence"),
        (dict(starts=[]), ValueError, "starts must hold at least one"),
        (dict(starts=3, transform="translation"), ValueError, "2D rigid or affine"),
        (dict(starts=[[0.0, 0.0], [0.0]]), ValueError, r"starts\[1\] must have shape \(2,\)"),
        (dict(starts=[[0.0, math.inf]]), ValueError, r"starts\[0\] contains NaN"),
        (dict(starts=2, w0=[0.0, 0.0, 0.0], transform="rigid"), ValueError, "either w0 or starts"),
    ],
)
def test_bad_starts_are_rejected(options, error, match):
    options = {"transform": "translation", **options}
    with pytest.raises(error, match=match):
        homotopy(T_IMG, R_IMG, OMEGA, **options)
