"""Domain geometry, grids and the multilevel pyramid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from multireg import Domain, multilevel, restrict
from multireg.grid import restriction_matrix
from tests.conftest import assert_close


def test_geometry_of_the_hands_domain():
    d = Domain((0, 20, 0, 25), (128, 128))
    assert d.dim == 2
    assert d.h == (20 / 128, 25 / 128)
    assert d.cell_volume == pytest.approx(20 * 25 / 128**2)
    assert d.volume == 500.0
    assert d.level == 7
    assert d.coarsen().m == (64, 64)


@pytest.mark.parametrize(
    ("omega", "m"), [((0, 1), (4,)), ((0, 20, 0, 25), (5, 3)), ((-1, 1, 0, 2, 1, 4), (3, 4, 2))]
)
def test_grids_follow_fair_conventions(bk, omega, m):
    d = Domain(omega, m)
    xp = bk.xp
    a, h = np.array(d.lower), np.array(d.h)
    idx = np.stack(np.meshgrid(*[np.arange(k) for k in m], indexing="ij"), -1).reshape(-1, len(m))
    assert_close(bk, d.cell_centers(xp), a + (idx + 0.5) * h, rtol=1e-15)
    nidx = np.stack(np.meshgrid(*[np.arange(k + 1) for k in m], indexing="ij"), -1)
    assert_close(bk, d.nodes(xp), a + nidx.reshape(-1, len(m)) * h, rtol=1e-15)
    for k, g in enumerate(d.staggered(xp)):
        counts = [v + (j == k) for j, v in enumerate(m)]
        sidx = np.stack(np.meshgrid(*[np.arange(c) for c in counts], indexing="ij"), -1)
        sidx = sidx.reshape(-1, len(m)).astype(float)
        sidx += np.array([0.0 if j == k else 0.5 for j in range(len(m))])
        assert_close(bk, g, a + sidx * h, rtol=1e-15)


def test_grids_respect_dtype(bk):
    d = Domain((0, 1, 0, 1), (3, 2))
    x = d.cell_centers(bk.xp, dtype=bk.xp.float32)
    assert x.dtype == bk.xp.float32


def test_grids_run_on_array_api_strict(strict_bk):
    d = Domain((0, 2, 0, 1), (4, 2))
    assert_close(strict_bk, d.cell_centers(strict_bk.xp), d.cell_centers(), rtol=0)


@pytest.mark.parametrize(
    ("omega", "m", "message"),
    [
        ((0, 1, 0), (2, 2), "omega must have 2\\*len\\(m\\) = 4"),
        ((0, 1, 1, 1), (2, 2), "a_k < b_k"),
        ((0, 1, 0, np.nan), (2, 2), "omega must be finite"),
        ((0, 1, 0, 1), (2, 0), "m must be positive"),
        ((0, 1, 0, 1), (2.5, 2), "m must hold integers"),
        ((0, 1) * 4, (2, 2, 2, 2), "m must have 1, 2 or 3 entries"),
        ("abcd", (2, 2), "omega must be a sequence of numbers"),
    ],
)
def test_bad_domains_are_refused(omega, m, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Domain(omega, m)


def test_block_averaging_for_even_sizes(bk):
    d = Domain((0, 4, 0, 2), (4, 2))
    data = np.arange(8.0).reshape(4, 2)
    coarse = restrict(bk.asarray(data), d)
    assert_close(bk, coarse, data.reshape(2, 2, 1, 2).mean(axis=(1, 3)), rtol=1e-15)


@given(st.integers(1, 17), st.integers(1, 9))
def test_restriction_preserves_integrals(m_fine, m_coarse):
    r = restriction_matrix(m_fine, m_coarse)
    np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-14)  # averages
    np.testing.assert_allclose(r.sum(axis=0) / m_coarse, 1.0 / m_fine, rtol=1e-14)  # mass


def test_pyramid_of_non_square_non_power_of_two_images(bk):
    d = Domain((0, 20, 0, 25), (37, 20))
    rng = np.random.default_rng(0)
    T, R = rng.random((37, 20)), rng.random((37, 20))
    levels = multilevel(d, bk.asarray(T), bk.asarray(R), min_size=4)
    assert [lv.domain.m for lv in levels] == [(10, 5), (19, 10), (37, 20)]
    assert all(lv.domain.omega == d.omega for lv in levels)
    assert levels[-1].images[0] is not None
    assert_close(bk, levels[-1].images[1], R, rtol=0)
    for lv in levels:  # the integral (mean x volume) is the same on every level
        for img, ref in zip(lv.images, (T, R)):
            mean = float(bk.to_numpy(bk.xp.mean(img)))
            assert mean == pytest.approx(ref.mean(), rel=1e-12)


def test_pyramid_3d_down_to_min_size(bk):
    d = Domain((0, 1, 0, 1, 0, 2), (16, 8, 12))
    levels = multilevel(d, bk.asarray(np.ones((16, 8, 12))), min_size=2)
    assert [lv.domain.m for lv in levels] == [(4, 2, 3), (8, 4, 6), (16, 8, 12)]
    assert [lv.level for lv in levels] == [1, 2, 3]
    assert_close(bk, levels[0].images[0], np.ones((4, 2, 3)), rtol=1e-15)


def test_pyramid_refuses_mismatched_images():
    d = Domain((0, 1, 0, 1), (8, 8))
    with pytest.raises(ValueError, match=r"images\[1\] has shape \(8, 7\)"):
        multilevel(d, np.ones((8, 8)), np.ones((8, 7)))
    with pytest.raises(ValueError, match="min_size must be a positive integer"):
        multilevel(d, np.ones((8, 8)), min_size=0)
    with pytest.raises(TypeError, match="domain must be a Domain"):
        multilevel((0, 1, 0, 1), np.ones((8, 8)))
    with pytest.raises(ValueError, match="data has shape"):
        restrict(np.ones((3, 3)), d)
