"""Optimisers: known minimisers, status reporting, torch == JAX iterates, option checks.

Forward-only parts (CG, Steihaug, Armijo, and the solvers driven by a hand-written objective) run
on every backend and on array_api_strict; everything that takes derivatives from the backend runs
on the differentiating ones.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import scipy.linalg

from multireg.optimize import (
    LinearOperator,
    Objective,
    Record,
    Status,
    armijo,
    cg,
    gauss_newton,
    general,
    lbfgs,
    least_squares,
    newton,
    steihaug_cg,
    trust_region,
)
from tests.conftest import assert_close

TIGHT = {"tol_j": 1e-14, "tol_y": 1e-10, "tol_g": 1e-10, "max_iter": 200}
ROSEN_X0 = [-1.2, 1.0]
SOLVERS = {
    "gauss_newton": gauss_newton,
    "newton": newton,
    "trust_region": trust_region,
    "lbfgs": lbfgs,
}


def rosenbrock(x):
    return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2


@functools.cache
def rosenbrock_objective(bk, kind):
    """Built once per backend, so that JAX compiles its kernels once for the whole module.

    kind: "dense" / "matrix_free" (exact Hessian as matrix / by hvp), or "gauss_newton"
    (J = ½‖r‖² = ½ rosenbrock with r = [10(x₂ − x₁²), 1 − x₁]).
    """
    if kind == "gauss_newton":
        return least_squares(bk, lambda x: bk.xp.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]]))
    return general(bk, rosenbrock, dense=kind == "dense")


def half_squared_norm(x):
    return 0.5 * (x @ x)


@functools.cache
def model_objective(bk, scale):
    """J = ½‖x‖² with the (wrong unless scale = 1) curvature model H = scale · I."""
    return general(
        bk, half_squared_norm, gauss_newton=lambda x: scale * bk.xp.eye(2, dtype=x.dtype)
    )


@functools.cache
def log_objective(bk):
    """J = ‖x‖² + log x₁: NaN for x₁ < 0."""
    return general(bk, lambda x: x @ x + bk.xp.log(x[0]))


def spd_matrix(p, *, seed=0, condition=10.0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    return (Q * np.linspace(1.0, condition, p)) @ Q.T


@functools.cache
def exp_fit_objective(bk, dense):
    """½‖r‖² for fitting a e^{−k t} + c to exact data from (a, k, c) = (2, 1.3, 0.5)."""
    xp = bk.xp
    t_np = np.linspace(0.0, 4.0, 30)
    t = bk.asarray(t_np)
    data = bk.asarray(2.0 * np.exp(-1.3 * t_np) + 0.5)
    return least_squares(bk, lambda x: x[0] * xp.exp(-x[1] * t) + x[2] - data, dense=dense)


def history_table(result):
    return np.array([[r.fun, r.grad_norm, r.step_norm, r.step_length] for r in result.history])


def hand_written_rosenbrock(bk, *, dense):
    """Rosenbrock with its gradient and Hessian written out: needs no automatic differentiation."""
    xp = bk.xp

    def value_and_grad(x):
        a, b = x[1] - x[0] ** 2, 1 - x[0]
        grad = xp.stack([-400 * a * x[0] - 2 * b, 200 * a])
        return 100 * a**2 + b**2, grad

    def hessian(x):
        H = xp.stack(
            [
                xp.stack([1200 * x[0] ** 2 - 400 * x[1] + 2, -400 * x[0]]),
                xp.stack([-400 * x[0], 200 + 0 * x[0]]),
            ]
        )
        op = LinearOperator.from_matrix(H)
        return op if dense else LinearOperator(matvec=op.matvec, diagonal=op.diagonal)

    return Objective(
        bk=bk,
        value=lambda x: value_and_grad(x)[0],
        value_and_grad=value_and_grad,
        hessian=hessian,
        exact_hessian=hessian,
        curvature="exact",
    )


# --------------------------------------------------------------------------------- CG, Armijo


def test_cg_solves_an_spd_system_in_at_most_p_iterations(bk):
    A, b = spd_matrix(5), np.arange(1.0, 6.0)
    result = cg(bk, bk.asarray(A), bk.asarray(b), rtol=1e-12, preconditioner=None)
    assert result.converged and not result.negative_curvature
    assert result.iterations <= 5
    assert_close(bk, result.x, np.linalg.solve(A, b), rtol=1e-10)


def test_jacobi_preconditioning_solves_a_diagonal_system_in_one_iteration(bk):
    diagonal, b = np.logspace(0, 4, 5), np.ones(5)
    op = LinearOperator(matvec=lambda v: bk.asarray(diagonal) * v, diagonal=bk.asarray(diagonal))
    plain = cg(bk, op, bk.asarray(b), rtol=1e-10, preconditioner=None)
    jacobi = cg(bk, op, bk.asarray(b), rtol=1e-10)
    assert plain.iterations >= 5 and jacobi.iterations == 1 and jacobi.converged
    assert_close(bk, jacobi.x, b / diagonal, rtol=1e-12)
    custom = cg(bk, op, bk.asarray(b), rtol=1e-10, preconditioner=lambda v: v / op.diagonal)
    assert custom.iterations == 1


def test_cg_stops_at_negative_curvature_and_on_a_zero_right_hand_side(bk):
    A = bk.asarray(np.diag([1.0, -1.0, 2.0, 3.0, 4.0]))
    result = cg(bk, A, bk.asarray([0.0, 1.0, 0.0, 0.0, 0.0]))
    assert result.negative_curvature and not result.converged and result.iterations == 0
    assert_close(bk, result.x, np.zeros(5), atol=0.0)
    zero = cg(bk, A, bk.asarray(np.zeros(5)))
    assert zero.converged and zero.iterations == 0


def test_steihaug_is_cg_inside_the_region_and_stops_on_its_boundary(bk):
    A, g = spd_matrix(5, seed=2), np.linspace(-1.0, 1.0, 5) + 0.1
    newton_step = -np.linalg.solve(A, g)
    inside = steihaug_cg(bk, bk.asarray(A), bk.asarray(g), 1e3, rtol=1e-12, max_iter=50)
    assert not inside.hit_boundary and inside.converged
    assert_close(bk, inside.p, newton_step, rtol=1e-10)
    radius = 0.25 * np.linalg.norm(newton_step)
    cut = steihaug_cg(bk, bk.asarray(A), bk.asarray(g), radius, rtol=1e-12, max_iter=50)
    assert cut.hit_boundary and not cut.negative_curvature
    assert np.linalg.norm(bk.to_numpy(cut.p)) == pytest.approx(radius, rel=1e-12)
    # Negative curvature in the first direction −g: follow it to the boundary.
    indefinite = steihaug_cg(bk, bk.asarray(-np.eye(5)), bk.asarray(g), 2.0)
    assert indefinite.negative_curvature and indefinite.hit_boundary
    assert_close(bk, indefinite.p, -2.0 * g / np.linalg.norm(g), rtol=1e-12)


def test_armijo_halves_until_sufficient_decrease_and_reports_failure(bk):
    xp = bk.xp

    def value(x):
        return xp.sum(x**2)

    x = bk.asarray([1.0, -2.0])
    # d = −2x: t = 1 lands on −x (no decrease), t = ½ on the minimiser.
    ok = armijo(bk, value, x, -2 * x, 5.0, -20.0)
    assert ok.success and ok.t == 0.5 and ok.trials == 2 and ok.fun == 0.0
    uphill = armijo(bk, value, x, x, 5.0, -1.0)
    assert not uphill.success and uphill.t == 0.0 and uphill.trials == 10 and uphill.x is x


# --------------------------------------------------------------------------------- objectives


def test_least_squares_curvature_is_j_t_w_j_without_a_factor_two(ad_bk):
    rng = np.random.default_rng(3)
    L, y, W = rng.standard_normal((9, 5)), rng.standard_normal(9), rng.uniform(0.5, 2.0, 9)
    bk = ad_bk
    Lb, yb = bk.asarray(L), bk.asarray(y)
    x_np = rng.standard_normal(5)
    x = bk.asarray(x_np)
    r = L @ x_np - y
    for dense in (True, False):
        objective = least_squares(bk, lambda x: Lb @ x - yb, weight=bk.asarray(W), dense=dense)
        fun, grad = objective.value_and_grad(x)
        assert float(bk.to_numpy(fun)) == pytest.approx(0.5 * np.sum(W * r * r), rel=1e-12)
        assert_close(bk, grad, L.T @ (W * r))
        H, exact = objective.hessian(x), objective.exact_hessian(x)
        assert (H.matrix is not None) is dense
        v = rng.standard_normal(5)
        assert_close(bk, H(bk.asarray(v)), L.T @ (W * (L @ v)))
        assert_close(bk, exact(bk.asarray(v)), L.T @ (W * (L @ v)))


def test_penalty_operator_and_outer_function_enter_the_curvature(ad_bk):
    """J = ψ(r) + ½α‖x‖²: GN curvature J_rᵀ W J_r + αI, from a given P'' or from the hvp."""
    bk, xp = ad_bk, ad_bk.xp
    rng = np.random.default_rng(4)
    L = rng.standard_normal((9, 5))
    Lb, alpha = bk.asarray(L), 0.7
    x_np, v_np = rng.standard_normal(5), rng.standard_normal(5)
    r = L @ x_np
    w = 1 / (1 + r**2)  # a GN weight that depends on r, as a distance's d2ψ does

    def outer(r):
        return 0.5 * xp.sum(xp.log(1 + r**2))

    def penalty(x):
        return 0.5 * alpha * xp.sum(x**2)

    def gn_diagonal(x):
        return xp.sum(Lb**2 / (1 + (Lb @ x) ** 2)[:, None], axis=0)

    given = LinearOperator(matvec=lambda v: alpha * v, diagonal=bk.asarray(np.full(5, alpha)))
    expected = L.T @ (w * (L @ v_np)) + alpha * v_np
    expected_diagonal = np.sum(L**2 * w[:, None], axis=0) + alpha
    for kw in ({"penalty_hessian": given, "gn_diagonal": gn_diagonal}, {}):
        for dense in (True, False):
            objective = least_squares(
                bk,
                lambda x: Lb @ x,
                outer=outer,
                weight=lambda r: 1 / (1 + r**2),
                penalty=penalty,
                dense=dense,
                **kw,
            )
            x = bk.asarray(x_np)
            fun = objective.value(x)
            assert float(bk.to_numpy(fun)) == pytest.approx(
                0.5 * np.sum(np.log(1 + r**2)) + 0.5 * alpha * x_np @ x_np, rel=1e-12
            )
            H = objective.hessian(x)
            assert_close(bk, H(bk.asarray(v_np)), expected)
            exact = objective.exact_hessian(x)  # ψ''(r) = (1 − r²)/(1 + r²)², not the GN weight
            exact_expected = L.T @ ((1 - r**2) / (1 + r**2) ** 2 * (L @ v_np)) + alpha * v_np
            assert_close(bk, exact(bk.asarray(v_np)), exact_expected)
            if dense or "penalty_hessian" in kw:
                assert_close(bk, H.diagonal, expected_diagonal)
            else:
                assert H.diagonal is None  # the hvp of the penalty has no diagonal


# --------------------------------------------------------------------------------- solvers


def test_quadratic_is_solved_in_one_newton_or_gauss_newton_step(ad_bk):
    bk = ad_bk
    rng = np.random.default_rng(5)
    A, b = spd_matrix(5, seed=5), rng.standard_normal(5)
    Ab, bb = bk.asarray(A), bk.asarray(b)

    def quadratic(x):
        return 0.5 * x @ (Ab @ x) - bb @ x

    for dense in (True, False):
        result = newton(general(bk, quadratic, dense=dense), bk.asarray(np.zeros(5)), cg_rtol=1e-13)
        assert result.status is Status.CONVERGED and result.iterations == 1
        assert_close(bk, result.x, np.linalg.solve(A, b), rtol=1e-10)
    L, y = rng.standard_normal((9, 5)), rng.standard_normal(9)
    Lb, yb = bk.asarray(L), bk.asarray(y)
    for dense in (True, False):
        objective = least_squares(bk, lambda x: Lb @ x - yb, dense=dense)
        result = gauss_newton(objective, bk.asarray(np.zeros(5)), cg_rtol=1e-13)
        assert result.status is Status.CONVERGED and result.iterations == 1
        assert result.history[1].cg_iterations == (0 if dense else 5)
        assert_close(bk, result.x, np.linalg.lstsq(L, y, rcond=None)[0], rtol=1e-10)


@pytest.mark.parametrize(
    ("solver", "options"),
    [
        ("newton", {}),
        ("newton_cg", {"cg_rtol": 1e-12}),
        ("trust_region", {"cg_rtol": 1e-12}),
        ("lbfgs", {}),
        ("gauss_newton", {}),
    ],
)
def test_rosenbrock_minimiser_is_found(ad_bk, solver, options):
    kinds = {"gauss_newton": "gauss_newton", "newton_cg": "matrix_free"}
    objective = rosenbrock_objective(ad_bk, kinds.get(solver, "dense"))
    run = SOLVERS.get(solver, newton)
    result = run(objective, ad_bk.asarray(ROSEN_X0), **TIGHT, **options)
    assert result.status is Status.CONVERGED and result.success, result.message
    assert_close(ad_bk, result.x, np.ones(2), atol=1e-6, rtol=0)


def test_exponential_fit_dense_and_matrix_free_gauss_newton_agree(ad_bk):
    runs = [
        gauss_newton(
            exp_fit_objective(ad_bk, dense),
            ad_bk.asarray([1.0, 1.0, 0.0]),
            **TIGHT,
            cg_rtol=1e-13,
            cg_max_iter=50,
        )
        for dense in (True, False)
    ]
    for result in runs:
        assert result.status is Status.CONVERGED, result.message
        assert_close(ad_bk, result.x, np.array([2.0, 1.3, 0.5]), rtol=1e-8)
    dense, free = runs
    assert dense.iterations == free.iterations
    assert_close(ad_bk, history_table(free), history_table(dense), rtol=1e-8)
    assert sum(r.cg_iterations for r in free.history) > 0


def test_large_regularised_least_squares_is_solved_matrix_free(ad_bk):
    """p = 2000, shaped like a registration objective: J = ½‖x − b‖² + ½α‖Dx‖² (D: forward
    differences) with the regulariser's Hessian αDᵀD given as a stencil operator with its
    diagonal, so the GN system is solved by Jacobi-PCG. Solution: (I + αDᵀD)⁻¹ b."""
    bk, xp = ad_bk, ad_bk.xp
    p, alpha = 2000, 4.0
    b_np = np.sin(np.linspace(0.0, 6.0, p)) + np.random.default_rng(6).standard_normal(p)
    dtd_diagonal = np.r_[1.0, np.full(p - 2, 2.0), 1.0]
    bands = np.zeros((3, p))
    bands[0, 1:] = bands[2, :-1] = -alpha
    bands[1] = 1 + alpha * dtd_diagonal
    expected = scipy.linalg.solve_banded((1, 1), bands, b_np)
    b = bk.asarray(b_np)

    def penalty(x):
        return 0.5 * alpha * xp.sum((x[1:] - x[:-1]) ** 2)

    def dtd(v):
        dv = v[1:] - v[:-1]
        return alpha * xp.concat([-dv[:1], dv[:-1] - dv[1:], dv[-1:]])

    objective = least_squares(
        bk,
        lambda x: x - b,
        penalty=penalty,
        penalty_hessian=LinearOperator(
            matvec=bk.jit(dtd), diagonal=bk.asarray(alpha * dtd_diagonal)
        ),
        gn_diagonal=xp.ones_like,
    )
    H = objective.hessian(b)
    assert H.matrix is None
    assert_close(bk, H.diagonal, 1 + alpha * dtd_diagonal)
    result = gauss_newton(objective, bk.asarray(np.zeros(p)), cg_rtol=1e-12)
    assert result.status is Status.CONVERGED and result.iterations == 1, result.message
    assert_close(bk, result.x, expected, rtol=1e-9)


# --------------------------------------------------------------------------------- statuses


@pytest.mark.parametrize("solver", ["newton", "trust_region", "lbfgs"])
def test_max_iter_is_reported_not_raised(ad_bk, solver):
    objective = rosenbrock_objective(ad_bk, "dense")
    result = SOLVERS[solver](objective, ad_bk.asarray(ROSEN_X0), max_iter=2)
    assert result.status is Status.MAX_ITERATIONS and not result.success
    assert result.iterations == 2 and len(result.history) == 3
    assert "max_iter" in result.message


@pytest.mark.parametrize("solver", ["gauss_newton", "lbfgs"])
def test_a_badly_scaled_curvature_makes_the_line_search_fail(ad_bk, solver):
    """The model H = 1e-8 I makes the step 1e8 times too long: 10 halvings cannot repair it."""
    x0 = ad_bk.asarray([1.0, 2.0])
    if solver == "gauss_newton":
        result = gauss_newton(model_objective(ad_bk, 1e-8), x0)
    else:
        result = lbfgs(model_objective(ad_bk, 1e-8), x0, inverse_h0=lambda v: 1e8 * v)
    assert result.status is Status.LINE_SEARCH_FAILED and not result.success
    assert result.iterations == 0 and result.nfev == 11
    assert_close(ad_bk, result.x, np.array([1.0, 2.0]), atol=0.0)


@functools.cache
def offset_objective(bk, offset):
    """J = offset + ½‖x‖²: with a large offset, J cannot resolve steps near its minimum."""
    return general(bk, lambda x: offset + 0.5 * (x @ x))


@pytest.mark.parametrize("solver", ["gauss_newton", "newton", "lbfgs"])
def test_a_minimiser_at_round_off_is_converged_not_a_line_search_failure(ad_bk, solver):
    """At x0 = 1e-6·(1, 2), J = 1e8 + 2.5e-12 rounds to 1e8 whatever the step: the line search
    must fail, but the step promised a decrease (≤ 5e-12 for Newton, 2.2e-6 for L-BFGS's unit
    first step) below J's round-off (1e3·eps·1e8 = 2.2e-5), so x0 is a minimiser to working
    precision. ‖∇J‖ = 2.2e-6 is above FAIR's STOP4, which therefore does not decide it."""
    x0 = ad_bk.asarray([1e-6, 2e-6])
    result = SOLVERS[solver](offset_objective(ad_bk, 1e8), x0)
    assert result.status is Status.CONVERGED, result.message
    assert "round-off" in result.message and result.iterations == 0
    assert_close(ad_bk, result.x, np.array([1e-6, 2e-6]), atol=0.0)


def test_j_scale_makes_stop4_relative_to_the_size_of_j(ad_bk):
    """J = 1e-12·½‖x − 1‖² has ‖∇J(0)‖ = 1.4e-12, below FAIR's absolute STOP4 (2.2e-10): the
    solver would stop at x0 = 0. Given the scale of J, it stops only at the minimiser."""
    c = 1e-12
    objective = general(ad_bk, lambda x: c * 0.5 * ((x - 1.0) @ (x - 1.0)))
    x0 = ad_bk.asarray([0.0, 0.0])
    fair = gauss_newton(objective, x0)
    assert fair.success and fair.iterations == 0  # FAIR's rule, kept without j_scale
    result = gauss_newton(objective, x0, j_scale=c)
    assert result.success and result.iterations >= 1, result.message
    assert_close(ad_bk, result.x, np.array([1.0, 1.0]), rtol=1e-12)


def test_trust_region_reports_rejected_steps(ad_bk):
    """A model promising far more decrease than J gives: every radius is rejected."""
    result = trust_region(model_objective(ad_bk, -1e8), ad_bk.asarray([1.0, 2.0]))
    assert result.status is Status.STEP_TOO_SMALL and not result.success
    assert result.iterations == 0 and result.nfev == 1 + 10


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_non_finite_objective_is_reported(ad_bk, solver):
    result = SOLVERS[solver](log_objective(ad_bk), ad_bk.asarray([-1.0, 1.0]))
    assert result.status is Status.NOT_FINITE and result.iterations == 0
    assert math.isnan(result.fun)


def test_an_ascent_direction_is_flipped_as_fair_does(ad_bk):
    """H = −I gives d = +∇J; FAIR's rule flips it, and the step then lands on the minimiser."""
    result = gauss_newton(model_objective(ad_bk, -1.0), ad_bk.asarray([1.0, 2.0]))
    assert result.status is Status.CONVERGED and result.iterations == 1
    assert_close(ad_bk, result.x, np.zeros(2), atol=1e-15)


# --------------------------------------------------------------------------------- agreement


@pytest.mark.parametrize(
    ("solver", "dense"),
    [
        ("gauss_newton", True),
        ("gauss_newton", False),
        ("newton", True),
        ("newton", False),
        ("trust_region", True),
        ("lbfgs", True),
    ],
)
def test_torch_and_jax_give_the_same_iterates(all_ad, solver, dense):
    """On the exponential fit; on Rosenbrock's curved valley, rounding differences between the
    frameworks (1e-16) grow to 1e-7 over 40 iterations, so it cannot show 1e-10 agreement."""
    results = [
        SOLVERS[solver](exp_fit_objective(bk, dense), bk.asarray([1.0, 1.0, 0.0]), **TIGHT)
        for bk in all_ad
    ]
    torch_result, jax_result = results
    assert torch_result.status is jax_result.status is Status.CONVERGED
    assert torch_result.iterations == jax_result.iterations
    assert [r.cg_iterations for r in torch_result.history] == [
        r.cg_iterations for r in jax_result.history
    ]
    assert_close(all_ad[1], history_table(torch_result), history_table(jax_result), rtol=1e-10)
    assert_close(all_ad[0], torch_result.x, all_ad[1].to_numpy(jax_result.x), rtol=1e-10)


def test_solvers_need_only_the_array_api(strict_bk):
    """A hand-written objective on array_api_strict: solvers use nothing outside the standard."""
    x0 = strict_bk.asarray(ROSEN_X0)
    for dense in (True, False):
        objective = hand_written_rosenbrock(strict_bk, dense=dense)
        for run, options in [
            (newton, {"cg_rtol": 1e-12}),
            (trust_region, {"cg_rtol": 1e-12}),
            (lbfgs, {}),
        ]:
            result = run(objective, x0, **TIGHT, **options)
            assert result.success, result.message
            assert_close(strict_bk, result.x, np.ones(2), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------- history


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_history_has_a_row_per_iteration_with_decreasing_objective(ad_bk, solver):
    objective = rosenbrock_objective(ad_bk, "gauss_newton" if solver == "gauss_newton" else "dense")
    seen: list[Record] = []
    result = SOLVERS[solver](objective, ad_bk.asarray(ROSEN_X0), max_iter=15, callback=seen.append)
    history = result.history
    assert len(history) == result.iterations + 1 and list(history) == seen
    assert [r.iteration for r in history] == list(range(result.iterations + 1))
    funs = [r.fun for r in history]
    assert all(b < a for a, b in itertools.pairwise(funs))
    assert history[-1].fun == result.fun and history[-1].grad_norm == result.grad_norm
    assert all(r.step_norm > 0 and r.step_length > 0 for r in history[1:])
    assert result.nfev > result.iterations and result.timings["total"] > 0


def test_trust_region_doubles_the_radius_only_after_good_boundary_steps(ad_bk):
    """J = ½‖x − c‖² with the model H = 2I, whose step −∇J/2 goes half-way (ρ = 1.5 inside
    the region): the radius doubles while steps reach the boundary, then stays."""
    xp = ad_bk.xp
    c = ad_bk.asarray([3.0, 4.0])
    objective = general(
        ad_bk,
        lambda x: 0.5 * xp.sum((x - c) ** 2),
        gauss_newton=lambda x: 2 * xp.eye(2, dtype=x.dtype),
    )
    result = trust_region(objective, ad_bk.asarray([0.0, 0.0]), radius=0.8, max_iter=5)
    radii = [r.step_length for r in result.history[1:]]
    assert radii == [0.8, 1.6, 3.2, 3.2, 3.2]
    steps = [r.step_norm for r in result.history[1:]]
    assert steps == pytest.approx([0.8, 1.6, 1.3, 0.65, 0.325], rel=1e-12)


def test_reference_values_scale_the_stopping_rules(ad_bk):
    """A larger |Jstop| loosens STOP1 and STOP3, so Gauss–Newton stops earlier; an explicit
    x_stop costs one more evaluation (J(x_stop))."""
    objective = exp_fit_objective(ad_bk, True)
    x0 = ad_bk.asarray([1.0, 1.0, 0.0])
    default = gauss_newton(objective, x0, tol_j=1e-8, tol_g=1e-8, tol_y=1e-1, max_iter=50)
    loose = gauss_newton(objective, x0, tol_j=1e-8, tol_g=1e-8, tol_y=1e-1, max_iter=50, j_stop=1e8)
    assert default.success and loose.success
    assert loose.iterations < default.iterations
    explicit = gauss_newton(
        objective, x0, tol_j=1e-8, tol_g=1e-8, tol_y=1e-1, max_iter=50, x_stop=x0
    )
    assert explicit.iterations == default.iterations and explicit.nfev == default.nfev + 1


def test_verbose_prints_the_table_and_is_silent_by_default(ad_bk, capsys):
    objective = rosenbrock_objective(ad_bk, "dense")
    lbfgs(objective, ad_bk.asarray(ROSEN_X0), max_iter=3)
    assert capsys.readouterr().out == ""
    lbfgs(objective, ad_bk.asarray(ROSEN_X0), max_iter=3, verbose=True)
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["iter", "J"] and len(out) == 2 + 4 + 1
    assert "max_iter = 3" in out[-1]


def test_float32_stays_float32(ad_bk):
    objective = rosenbrock_objective(ad_bk, "dense")
    result = lbfgs(objective, ad_bk.asarray(ROSEN_X0, dtype="float32"), max_iter=100)
    assert result.x.dtype == ad_bk.asarray([0.0], dtype="float32").dtype
    assert result.fun < 1e-4


# --------------------------------------------------------------------------------- arguments


def _untouchable(bk):
    def boom(*args):
        raise AssertionError("the objective was evaluated before the options were checked")

    return Objective(
        bk=bk, value=boom, value_and_grad=boom, hessian=boom, exact_hessian=boom, curvature="user"
    )


@pytest.mark.parametrize(
    ("solver", "options", "error", "match"),
    [
        ("gauss_newton", {"tol_j": -1e-3}, ValueError, "tol_j"),
        ("newton", {"tol_g": math.nan}, ValueError, "tol_g"),
        ("lbfgs", {"max_iter": -1}, ValueError, "max_iter"),
        ("trust_region", {"max_iter": 2.5}, TypeError, "max_iter"),
        ("gauss_newton", {"tolJ": 1e-3}, TypeError, "tolJ"),
        ("gauss_newton", {"cg_rtol": -1.0}, ValueError, "cg_rtol"),
        ("newton", {"ls_reduction": 1.5}, ValueError, "ls_reduction"),
        ("lbfgs", {"memory": 0}, ValueError, "memory"),
        ("lbfgs", {"inverse_h0": 3}, TypeError, "inverse_h0"),
        ("trust_region", {"curvature": "gauss"}, ValueError, "curvature"),
        ("trust_region", {"radius": 0.0}, ValueError, "radius"),
        ("newton", {"callback": "print"}, TypeError, "callback"),
        ("newton", {"verbose": 1}, TypeError, "verbose"),
        ("newton", {"x_stop": [0.0, 0.0, 0.0]}, ValueError, "x_stop"),
        ("gauss_newton", {"j_scale": -1.0}, ValueError, "j_scale"),
        ("lbfgs", {"j_scale": "big"}, TypeError, "j_scale"),
    ],
)
def test_bad_options_raise_before_any_work(bk, solver, options, error, match):
    with pytest.raises(error, match=match):
        SOLVERS[solver](_untouchable(bk), bk.asarray([1.0, 2.0]), **options)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_bad_x0_and_objective_raise(bk, solver):
    with pytest.raises(ValueError, match="x0 must be a non-empty 1-D array"):
        SOLVERS[solver](_untouchable(bk), bk.asarray(np.zeros((2, 2))))
    with pytest.raises(TypeError, match="objective must be an Objective"):
        SOLVERS[solver](rosenbrock, bk.asarray(ROSEN_X0))


def test_bad_objective_arguments_raise(ad_bk, np_bk):
    def residual(x):
        return x - 1

    with pytest.raises(TypeError, match="differentiating backend"):
        least_squares(np_bk, residual)
    with pytest.raises(TypeError, match="dense"):
        least_squares(ad_bk, residual, dense="yes")
    with pytest.raises(ValueError, match="weight is required with outer"):
        least_squares(ad_bk, residual, outer=lambda r: r @ r)
    with pytest.raises(ValueError, match="a callable weight needs outer"):
        least_squares(ad_bk, residual, weight=lambda r: r * r)
    with pytest.raises(TypeError, match="weight must be"):
        least_squares(ad_bk, residual, weight="ones")
    with pytest.raises(TypeError, match="residual must be callable"):
        least_squares(ad_bk, None)
    with pytest.raises(ValueError, match="penalty_hessian is given but penalty is not"):
        least_squares(ad_bk, residual, penalty_hessian=LinearOperator(matvec=lambda v: v))
    with pytest.raises(TypeError, match="gauss_newton must be callable"):
        general(ad_bk, rosenbrock, gauss_newton=np.eye(2))
    with pytest.raises(TypeError, match="preconditioner"):
        cg(ad_bk, ad_bk.asarray(np.eye(2)), ad_bk.asarray([1.0, 1.0]), preconditioner=np.ones(2))
