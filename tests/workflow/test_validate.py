"""Cross-framework validation: the same problem on every backend, compared leaf by leaf."""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

import numpy as np
import pytest

import multireg
from multireg.workflow.demo import affine_pair
from multireg.workflow.validate import ValidationReport, flatten, validate
from tests.conftest import BACKENDS

TWO = BACKENDS[:2]


def needs_two():
    if len(TWO) < 2:
        pytest.skip("needs two installed backends")


@pytest.fixture(scope="module")
def affine_problem():
    """A small affine problem with 1% noise (so that the final distance is not rounding)."""
    T, R, domain = affine_pair((32, 28))
    R = R + 0.01 * np.random.default_rng(0).normal(size=R.shape)
    options = dict(transform="affine", levels=2, max_iter=20, tol_j=1e-9, tol_y=1e-7, tol_g=1e-7)
    return T, R, domain.omega, options


# ------------------------------------------------------------------ real registrations


def test_two_backends_agree_on_an_affine_registration(all_ad, affine_problem):
    T, R, omega, options = affine_problem
    names = [bk.name for bk in all_ad]
    T_before = T.copy()
    report = validate(multireg.register, T, R, omega, backends=names, **options)
    assert isinstance(report, ValidationReport)
    assert report.ok, report.table()
    assert report.backends == tuple(names) and report.compared
    assert report["w"].kind == "float" and report["w"].shapes[names[0]] == (6,)
    assert report["w"].diff < 1e-10
    iterations = report["levels[:].result.iterations"]
    assert iterations.kind == "int" and iterations.abs_diff == 0
    assert iterations.values[names[0]].shape == (2,)
    assert report["levels[:].result.status"].kind == "enum"
    # leaves that are not results are not compared
    leaves = {r.name for r in report.rows}
    assert not any("timings" in n or "message" in n or "history" in n for n in leaves)
    assert report["levels[:].result.grad_norm"].judged is False
    table = report.table()
    for text in ("| w ", "levels[:].result.iterations", "warped", "PASS", *names, "warm"):
        assert text in table
    assert set(report.times) == set(names) and all(t["first"] > 0 for t in report.times.values())
    np.testing.assert_array_equal(T, T_before)  # the input is untouched
    # the raw results are kept, on their own backends
    assert report.results[names[1]].backend == names[1]


def test_a_perturbed_backend_fails_and_names_the_leaf(all_ad, affine_problem):
    T, R, omega, options = affine_problem
    names = [bk.name for bk in all_ad]

    def perturbed(*args, backend, **kwargs):
        res = multireg.register(*args, backend=backend, **kwargs)
        if backend == names[1]:
            res = dataclasses.replace(res, w=res.w * (1 + 1e-4))
        return res

    report = validate(perturbed, T, R, omega, backends=names, **options)
    assert not report.ok
    assert report.worst.name == "w"
    assert [r.name for r in report.failures] == ["w"]
    assert 0.9e-4 < report["w"].diff < 1.1e-4
    assert "FAIL" in report.table()
    # the same disagreement passes a tolerance that allows it
    assert validate(perturbed, T, R, omega, backends=names, rtol=1e-3, **options).ok


# ------------------------------------------------------------------ the comparison rules


class Flag(enum.Enum):
    GOOD = "good"
    BAD = "bad"


@dataclass(frozen=True)
class Point:
    w: np.ndarray
    fun: float
    iterations: int
    status: Flag
    tangent: np.ndarray | None = None


@dataclass(frozen=True)
class Outcome:
    x: np.ndarray
    path: tuple
    label: str
    timings: dict
    solver: object


def _outcome(shift=0.0, its=3, status=Flag.GOOD, n_points=3):
    tangents = [np.ones(2) if k < 2 else None for k in range(n_points)]
    path = tuple(
        Point(np.arange(2.0) + k + shift, 1.0 / (k + 1), its + k, status, tangents[k])
        for k in range(n_points)
    )
    return Outcome(np.linspace(0, 1, 5) + shift, path, "settings", {"total": 1.0}, print)


def test_flatten_stacks_records_and_skips_non_results():
    leaves = flatten(_outcome())
    assert set(leaves) == {"x", "path[:].w", "path[:].fun", "path[:].iterations",
                           "path[:].status", "path[:].tangent"}  # fmt: skip
    assert leaves["path[:].w"].shape == (3, 2)
    assert leaves["path[:].iterations"].dtype.kind == "i"
    assert np.isnan(leaves["path[:].tangent"][2]).all()  # None among arrays becomes NaN
    assert leaves["path[:].status"] == (Flag.GOOD,) * 3
    assert flatten({"a": (1.0, 2.0), "b": [np.ones(2), np.ones(3)]}).keys() == {"a", "b[0]", "b[1]"}
    assert flatten(2.5) == {"result": 2.5}


def _fake(fn_by_backend):
    def fn(*, backend):
        return fn_by_backend(backend)

    return fn


def test_integer_float_enum_and_shape_rules():
    needs_two()
    ref = TWO[0]
    same = validate(_fake(lambda b: _outcome()), backends=TWO)
    assert same.ok and same.max_diff() == 0.0
    its = validate(_fake(lambda b: _outcome(its=3 if b == ref else 4)), backends=TWO)
    assert not its.ok and {r.name for r in its.failures} == {"path[:].iterations"}
    assert its["path[:].iterations"].abs_diff == 1
    assert validate(_fake(lambda b: _outcome(its=3 if b == ref else 4)), backends=TWO, int_tol=1).ok
    assert validate(
        _fake(lambda b: _outcome(its=3 if b == ref else 9)), backends=TWO, int_tol=None
    ).ok
    status = validate(_fake(lambda b: _outcome(status=Flag.GOOD if b == ref else Flag.BAD)),
                      backends=TWO)  # fmt: skip
    assert [r.name for r in status.failures] == ["path[:].status"]
    shapes = validate(_fake(lambda b: _outcome(n_points=3 if b == ref else 4)), backends=TWO)
    assert not shapes.ok and shapes["path[:].w"].note == "shapes differ"
    small = validate(_fake(lambda b: _outcome(shift=1e-5 if b != ref else 0.0)), backends=TWO)
    assert not small.ok and math.isclose(small["x"].diff, 1e-5, rel_tol=1e-6)  # max |x| = 1
    assert math.isclose(small["path[:].w"].diff, 1e-5 / 3, rel_tol=1e-6)  # max |w| = 3
    assert validate(_fake(lambda b: _outcome(shift=1e-5 if b != ref else 0.0)),
                    backends=TWO, atol=2e-5).ok  # fmt: skip


def test_nan_in_the_same_place_agrees_and_a_missing_leaf_fails():
    needs_two()
    ref = TWO[0]
    nan = validate(_fake(lambda b: {"a": np.array([1.0, np.nan])}), backends=TWO)
    assert nan.ok
    one_nan = validate(
        _fake(lambda b: {"a": np.array([1.0, np.nan if b == ref else 2.0])}), backends=TWO
    )
    assert not one_nan.ok and one_nan["a"].diff == math.inf
    missing = validate(_fake(lambda b: {"a": 1.0, **({"b": 2.0} if b == ref else {})}),
                       backends=TWO)  # fmt: skip
    assert not missing.ok and "missing" in missing["b"].note


def test_a_backend_that_raises_is_reported_and_all_raising_reraises():
    needs_two()
    ref = TWO[0]

    def half(*, backend):
        if backend != ref:
            raise RuntimeError("boom on this backend")
        return {"a": 1.0}

    report = validate(half, backends=TWO)
    assert not report.ok and "boom" in report.errors[TWO[1]]
    assert "raised" in report.table()

    def never(*, backend):
        raise ValueError("T must be an array")

    with pytest.raises(ValueError, match="T must be an array"):
        validate(never, backends=TWO)


def test_repeat_gives_warm_times():
    needs_two()
    calls = []
    report = validate(_fake(lambda b: calls.append(b) or {"a": 1.0}), backends=TWO, repeat=3)
    assert len(calls) == 6
    for t in report.times.values():
        assert t["runs"] == 3 and t["warm"] >= 0 and not math.isnan(t["warm"])


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="fn must be callable"):
        validate(42)
    with pytest.raises(ValueError, match="backends: unknown or not installed backend 'frob'"):
        validate(_fake(lambda b: 1.0), backends=["frob"])
    with pytest.raises(ValueError, match="rtol"):
        validate(_fake(lambda b: 1.0), backends=BACKENDS[:1], rtol=0)
    with pytest.raises(ValueError, match="rtol"):
        validate(_fake(lambda b: 1.0), backends=BACKENDS[:1], rtol=-1e-3)
    with pytest.raises(ValueError, match="rtol"):
        validate(_fake(lambda b: 1.0), backends=BACKENDS[:1], rtol=float("nan"))
    with pytest.raises(ValueError, match="repeat"):
        validate(_fake(lambda b: 1.0), backends=BACKENDS[:1], repeat=0)
    with pytest.raises(ValueError, match="int_tol"):
        validate(_fake(lambda b: 1.0), backends=BACKENDS[:1], int_tol=-1)
    with pytest.raises(ValueError, match="each backend once"):
        validate(_fake(lambda b: 1.0), backends=[BACKENDS[0], BACKENDS[0]])
    with pytest.raises(TypeError, match="backends"):
        validate(_fake(lambda b: 1.0), backends=[3])


def test_one_backend_runs_but_compares_nothing():
    report = validate(_fake(lambda b: {"a": 1.0}), backends=BACKENDS[:1])
    assert report.ok and not report.compared
    assert "nothing was compared" in report.table()


def test_evaluation_counts_are_shown_not_judged():
    """Line-search trials near the optimum are decided by rounding noise: nfev is information;
    iteration counts stay judged."""
    from multireg.workflow.validate import INFORMATIONAL

    assert "nfev" in INFORMATIONAL and "iterations" not in INFORMATIONAL
