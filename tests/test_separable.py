"""The separable engine on a small super-resolution instance (16² fine, 3 frames of 8²).

One problem per backend (module scope) so that each kernel is compiled once.
"""

from __future__ import annotations

import numpy as np
import pytest

from multireg import separable, superres
from multireg.testing import adjoint_mismatch
from tests.conftest import assert_close

PROBLEM = superres.make_problem(
    m_fine=(16, 16),
    m_coarse=(8, 8),
    n_frames=3,
    rotation_sigma=0.1,
    translation_sigma=0.5,
    noise=0.02,
    seed=3,
)


@pytest.fixture(scope="module")
def setup(ad_bk):
    """The problem, a point w near the truth, and the inner solution there (solved tightly)."""
    problem = superres.build(
        PROBLEM.frames, PROBLEM.omega, PROBLEM.m_fine, alpha=1e-2, backend=ad_bk
    )
    rng = np.random.default_rng(0)
    w_np = PROBLEM.w_true + 0.03 * rng.normal(size=PROBLEM.w_true.shape)
    w_np[0] = 0.0
    w = ad_bk.asarray(w_np)
    inner = separable.solve_linear(problem, w, rtol=1e-12, max_iter=1000)
    return problem, w, inner


def _reduced(problem, w, x, f_start):
    """F(w, f(w)) at the free parameters x, with a tight inner solve."""
    w_full = separable._assemble(problem, w, x)
    f = separable.solve_linear(problem, w_full, f_start, rtol=1e-11, max_iter=1000).f
    return problem.kernels["stacked"](w_full, f, *problem.data)


def _fd_jacobian(problem, w, f, h=1e-5):
    """The reduced Jacobian by central differences of the reduced residual."""
    bk = problem.bk
    x = separable._free(problem, w)
    cols = []
    for i in range(x.shape[0]):
        e = bk.asarray(np.eye(x.shape[0])[i])
        plus = bk.to_numpy(_reduced(problem, w, x + h * e, f))
        minus = bk.to_numpy(_reduced(problem, w, x - h * e, f))
        cols.append((plus - minus) / (2 * h))
    return np.stack(cols, axis=1)


@pytest.fixture(scope="module")
def fd_jacobian(setup):
    problem, w, inner = setup
    return _fd_jacobian(problem, w, inner.f)


def test_inner_solve_converges_and_warm_start_helps(setup):
    problem, w, inner = setup
    assert inner.converged and inner.residual_norm <= 1e-12
    bk = problem.bk
    g = problem.kernels["grad_f"](w, inner.f, *problem.data)
    b = problem.kernels["grad_f"](w, bk.xp.zeros_like(inner.f), *problem.data)
    assert np.linalg.norm(bk.to_numpy(g)) <= 1e-11 * np.linalg.norm(bk.to_numpy(b))
    warm = separable.solve_linear(problem, w, inner.f, rtol=1e-10)
    assert warm.iterations == 0
    capped = separable.solve_linear(problem, w, rtol=1e-12, max_iter=3)
    assert not capped.converged and capped.iterations == 3  # reported, not raised


def test_operator_adjoint(setup):
    """⟨u, A v⟩ = ⟨Aᵀu, v⟩ for A = ∂r/∂f (jvp against vjp in f)."""
    problem, w, inner = setup
    bk = problem.bk
    rng = np.random.default_rng(1)

    def A(f):
        return problem.residual(w, f, *problem.data)

    u = bk.asarray(rng.normal(size=(problem.n_frames, 64)))
    v = bk.asarray(rng.normal(size=problem.n_f))
    assert adjoint_mismatch(bk, A, inner.f, u, v) < 1e-13


def test_implicit_jacobian_matches_finite_differences(setup, fd_jacobian):
    problem, w, inner = setup
    J, _ = separable.reduced_jacobian(problem, w, inner.f, "implicit", rtol=1e-12)
    err = np.linalg.norm(problem.bk.to_numpy(J) - fd_jacobian) / np.linalg.norm(fd_jacobian)
    # inner solves to 1e-11 and central differences with h = 1e-5: agreement to ~1e-6
    assert err < 1e-5


def test_unrolled_jacobian_converges_to_implicit(setup, fd_jacobian):
    problem, w, inner = setup
    if problem.bk.name == "torch":
        pytest.skip(
            "60 forward-mode steps through CG take ~1 min under torch.func on 2 shared cores; "
            "torch's unrolled columns are checked against JAX's in test_torch_and_jax_agree"
        )
    errors = []
    for k in (3, 60):
        J, its = separable.reduced_jacobian(problem, w, inner.f, "unrolled", unrolled_iterations=k)
        assert its == k
        J = problem.bk.to_numpy(J)
        errors.append(np.linalg.norm(J - fd_jacobian) / np.linalg.norm(fd_jacobian))
    # three CG steps miss most of df/dw; sixty (about what the inner solve needs) recover it
    assert errors[0] > 1e-2
    assert errors[1] < 1e-3


def test_approximate_jacobians_differ_by_a_known_amount(setup, fd_jacobian):
    """Kaufman drops the residual-weighted mixed term; partial drops df/dw altogether."""
    problem, w, inner = setup
    scale = np.linalg.norm(fd_jacobian)
    err = {}
    for name in ("kaufman", "partial"):
        J, _ = separable.reduced_jacobian(problem, w, inner.f, name, rtol=1e-12)
        err[name] = np.linalg.norm(problem.bk.to_numpy(J) - fd_jacobian) / scale
    # Measured on this problem (2 % noise, 0.03 from the truth): Kaufman ≈ 0.24, partial ≈ 0.9
    # relative error (implicit: < 1e-6).
    assert 1e-3 < err["kaufman"] < 0.5, err
    assert err["partial"] > 0.5, err
    assert err["kaufman"] < err["partial"]


def test_reduced_gradient_is_partial_gradient(setup, fd_jacobian):
    """d/dw Φ(w, f(w)) = ∂_w Φ(w, f) at an exact inner solve (Golub & Pereyra): the finite-
    difference reduced Jacobian, chained with F, against the envelope gradient J_wᵀF."""
    problem, w, inner = setup
    bk = problem.bk
    F = bk.to_numpy(problem.kernels["stacked"](w, inner.f, *problem.data))
    g = separable._free(problem, problem.kernels["grad_w"](w, inner.f, *problem.data))
    assert_close(bk, g, fd_jacobian.T @ F, rtol=1e-6)


def test_batched_cholesky_solve(ad_bk):
    rng = np.random.default_rng(2)
    B = rng.normal(size=(5, 3, 3))
    H = B @ np.swapaxes(B, 1, 2) + 3 * np.eye(3)
    g = rng.normal(size=(5, 3))
    x = separable.cholesky_solve(ad_bk.asarray(H), ad_bk.asarray(g))
    assert_close(ad_bk, x, np.linalg.solve(H, g[..., None])[..., 0], rtol=1e-12)


def test_bad_arguments(setup):
    problem, w, inner = setup
    with pytest.raises(ValueError, match="jacobian"):
        separable.reduced_jacobian(problem, w, inner.f, "exact")
    with pytest.raises(ValueError, match="w must have shape"):
        separable.solve_linear(problem, w[1:, :])
    with pytest.raises(ValueError, match="rtol"):
        separable.solve_linear(problem, w, rtol=-1.0)
    with pytest.raises(ValueError, match="fixed"):
        separable.SeparableProblem(
            problem.bk, problem.residual, problem.regularizer, 3, 3, 256, fixed=(0, 1, 2)
        )


def test_torch_and_jax_agree(all_ad):
    results = []
    for bk in all_ad:
        problem = superres.build(
            PROBLEM.frames, PROBLEM.omega, PROBLEM.m_fine, alpha=1e-2, backend=bk
        )
        w = bk.asarray(PROBLEM.w_true)
        inner = separable.solve_linear(problem, w, rtol=1e-12)
        J, _ = separable.reduced_jacobian(problem, w, inner.f, "implicit", rtol=1e-12)
        U, _ = separable.reduced_jacobian(problem, w, inner.f, "unrolled", unrolled_iterations=3)
        results.append((bk.to_numpy(inner.f), bk.to_numpy(J), bk.to_numpy(U)))
    (f0, J0, U0), (f1, J1, U1) = results
    np.testing.assert_allclose(f1, f0, rtol=0, atol=1e-10 * np.abs(f0).max())
    np.testing.assert_allclose(J1, J0, rtol=0, atol=1e-8 * np.abs(J0).max())
    np.testing.assert_allclose(U1, U0, rtol=0, atol=1e-10 * np.abs(U0).max())
