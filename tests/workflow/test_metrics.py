"""multireg.metrics against values computed by hand on tiny cases, and each convention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from multireg import Affine, Domain, Translation
from multireg.workflow.apply import Map
from multireg.workflow.metrics import dice, evaluate, hd95, jacobian_stats, tre
from tests.cli._helpers import _run as _cli  # main(argv) -> (code, stdout, stderr)

A = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
B = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 2, 2], [0, 0, 0, 3]])
DOMAIN = Domain((0.0, 4.0, 0.0, 16.0), (8, 8))  # h = (0.5, 2): anisotropic


# ------------------------------------------------------------------------------- Dice


def test_dice_by_hand():
    """label 1: |A| = |B| = 4, |A∩B| = 3 → 6/8; label 2: 4, 2, 2 → 4/6; label 3: only in B."""
    s = dice(A, B)
    assert s.per_label[1] == pytest.approx(0.75)
    assert s.per_label[2] == pytest.approx(2 / 3)
    assert math.isnan(s.per_label[3])
    assert s.mean == pytest.approx((0.75 + 2 / 3) / 2)  # over labels present in both
    assert dice(B, A).per_label == pytest.approx(s.per_label, nan_ok=True)  # symmetric
    assert dice(A, A).mean == 1.0
    assert dice(A, B, labels=[2]).per_label == {2: pytest.approx(2 / 3)}


def test_dice_background_is_optional():
    s = dice(A, B, background=None)
    # label 0: |A| = 8, |B| = 9, overlap 7 → 14/17
    assert s.per_label[0] == pytest.approx(14 / 17)


# ------------------------------------------------------------------------------- HD95


def test_hd95_two_single_voxels_world_vs_index():
    a = np.zeros((8, 8), int)
    b = np.zeros((8, 8), int)
    a[2, 2] = 1
    b[2, 5] = 1  # three voxels along axis 1
    assert hd95(a, b).per_label[1] == pytest.approx(3.0)  # index units
    assert hd95(a, b, spacing=DOMAIN).per_label[1] == pytest.approx(6.0)  # h2 = 2
    assert hd95(a, b, spacing=(0.5, 2.0)).mean == pytest.approx(6.0)


def test_hd95_percentile_convention():
    """A: a 3×3 block (surface: its 8 ring voxels). B: the block and one voxel D = 5 cells away.
    d(A→B) = 0 ×8; d(B→A) = 0 ×8 and D: the linear 95th percentile of 9 values is 0.6 D."""
    a = np.zeros((12, 12), int)
    a[1:4, 1:4] = 1
    b = a.copy()
    b[2, 8] = 1  # nearest A-surface voxel (2, 3): 5 cells
    assert hd95(a, b).per_label[1] == pytest.approx(0.6 * 5)
    assert hd95(a, b, percentile=100).per_label[1] == pytest.approx(5.0)  # Hausdorff
    assert hd95(b, a).per_label[1] == pytest.approx(3.0)  # symmetric


def test_hd95_missing_label_is_nan():
    s = hd95(A, B)
    assert math.isnan(s.per_label[3])
    assert not math.isnan(s.mean)


# -------------------------------------------------------------------------------- TRE


def test_tre_by_hand_world_and_index():
    x = np.array([[0.0, 0.0], [3.0, 4.0]])
    z = np.array([[0.0, 1.0], [0.0, 0.0]])
    e = tre(x, z)
    np.testing.assert_allclose(e.distances, [1.0, 5.0])
    assert (e.mean, e.max, e.median) == (3.0, 5.0, 3.0)
    # index units on h = (0.5, 2): (0, 1) → 2 and (3, 4) → |(1.5, 8)|
    e = tre(x, z, units="index", domain=DOMAIN)
    np.testing.assert_allclose(e.distances, [2.0, math.hypot(1.5, 8.0)])


def test_tre_through_a_map():
    """y(x) = x + t sends the fixed landmarks onto the moving ones: TRE 0 (and not without y)."""
    x = np.array([[1.0, 2.0], [0.5, 7.0], [3.0, 3.0]])
    t = np.array([0.25, -1.0])
    z = x + t
    assert tre(x, z, transform=(Translation(2), t)).max == pytest.approx(0.0, abs=1e-15)
    assert tre(x, z).mean == pytest.approx(math.hypot(*t))


# ---------------------------------------------------------------------------- Jacobian


def _affine_w(M, b):
    return np.c_[M, b].ravel()


def test_jacobian_of_affine_is_its_determinant():
    M = np.array([[1.2, 0.3], [-0.1, 0.8]])  # det 0.99
    st = jacobian_stats((Affine(2), _affine_w(M, [1.0, -2.0])), domain=DOMAIN)
    np.testing.assert_allclose(st.det, np.linalg.det(M), rtol=1e-13)
    assert st.sdlogj == pytest.approx(0.0, abs=1e-12)
    assert st.folded_percent == 0.0
    assert st.det.shape == (4, 4)  # cropped by 2 per side


def test_jacobian_conventions_map_displacement_world_index():
    """One affine map given four ways: y, u = y − x, u in voxels, y in indices: one det."""
    M = np.array([[0.9, 0.2], [0.1, 1.1]])
    b = np.array([0.3, -0.4])
    x = DOMAIN.cell_centers().reshape(8, 8, 2)
    y = x @ M.T + b
    h, a = np.asarray(DOMAIN.h), np.asarray(DOMAIN.lower)
    want = np.linalg.det(M)
    for field, kind, units in [
        (y, "map", "world"),
        (y - x, "displacement", "world"),
        ((y - x) / h, "displacement", "index"),
        ((y - a) / h - 0.5, "map", "index"),
    ]:
        st = jacobian_stats(field, domain=DOMAIN, kind=kind, units=units)
        np.testing.assert_allclose(st.det, want, rtol=1e-12, err_msg=f"{kind}, {units}")
    # and the conventions are not interchangeable: a map read as a displacement is another map
    wrong = jacobian_stats(y, domain=DOMAIN, kind="displacement")
    assert not np.allclose(wrong.det, want)


def test_jacobian_folding_and_sdlogj():
    """A reflection folds every cell; a stretch by 2 along a half of the grid gives
    log det ∈ {0, log 2} in equal shares: SDlogJ = log(2)/2."""
    refl = jacobian_stats((Affine(2), _affine_w(np.diag([-1.0, 1.0]), [0, 0])), domain=DOMAIN)
    assert refl.folded_percent == 100.0 and refl.det_min == pytest.approx(-1.0)
    # piecewise map along axis 1 with a kink: central differences see it in one column only, so
    # build it on a coarse grid and crop nothing; columns 0-3 scale 1, columns 4-7 scale 2
    dom = Domain((0.0, 8.0, 0.0, 8.0), (8, 8))
    x = dom.cell_centers().reshape(8, 8, 2)
    det_col = np.array([1, 1, 1, 1, 2, 2, 2, 2], float)
    # y1 = x1 · s(x2), y2 = x2: det = s(x2) exactly (∂y1/∂x2 does not enter the determinant)
    y = np.stack([x[..., 0] * det_col[None, :], x[..., 1]], -1)
    st = jacobian_stats(y, domain=dom, kind="map", crop=0)
    np.testing.assert_allclose(st.det, np.broadcast_to(det_col, (8, 8)))
    assert st.sdlogj == pytest.approx(math.log(2) / 2)


def test_jacobian_fair_det_method_by_hand():
    """One cell of a 3×3 cell-centred map moved by 1.5 cells along x1: central differences
    fold the cell after it (det 1 - 1.5); FAIR's nodal extension spreads the move over the
    cell's corners, ±0.75 each, and the cell after it keeps det 1 - 0.75 (no fold)."""
    dom = Domain((0.0, 3.0, 0.0, 3.0), (3, 3))
    u = np.zeros((3, 3, 2))
    u[1, 1, 0] = 1.5
    own = jacobian_stats(u, domain=dom, crop=0)
    fair = jacobian_stats(u, domain=dom, crop=0, det_method="fair")
    expect_own, expect_fair = np.ones((3, 3)), np.ones((3, 3))
    expect_own[0, 1], expect_own[2, 1] = 2.5, -0.5
    expect_fair[0, 1], expect_fair[2, 1] = 1.75, 0.25
    np.testing.assert_allclose(own.det, expect_own, atol=1e-15)
    np.testing.assert_allclose(fair.det, expect_fair, atol=1e-15)
    assert own.folded_percent == pytest.approx(100 / 9) and fair.folded_percent == 0.0
    with pytest.raises(ValueError, match="det_method"):
        jacobian_stats(u, domain=dom, det_method="nodal")


def test_jacobian_of_a_displacement_map_object():
    u = np.zeros((8, 8, 2))
    u[..., 0] = 0.1 * DOMAIN.cell_centers().reshape(8, 8, 2)[..., 0]  # y1 = 1.1 x1
    st = jacobian_stats(Map(DOMAIN, displacement=u), crop=0)
    np.testing.assert_allclose(st.det, 1.1, rtol=1e-13)


# ---------------------------------------------------------------------------- evaluate


def test_evaluate_collects_everything():
    x = np.array([[1.0, 2.0], [2.0, 5.0]])
    t = np.array([0.5, 1.0])
    mp = Map(DOMAIN, Translation(2), t)
    out = evaluate(mp, fixed_labels=A, warped_labels=B, fixed_points=x, moving_points=x + t)
    assert out["dice"]["mean"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert out["hd95"]["units"] == "index"
    assert out["tre"]["max"] == pytest.approx(0.0, abs=1e-15)
    assert out["tre_initial"]["mean"] == pytest.approx(math.hypot(*t))
    assert out["jacobian"]["det_min"] == pytest.approx(1.0)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="b has shape"):
        dice(A, B[:3])
    with pytest.raises(ValueError, match="integer labels"):
        dice(A + 0.5, B)
    with pytest.raises(ValueError, match="units"):
        tre(A[:2], A[:2], units="pixels")
    with pytest.raises(ValueError, match="domain"):
        tre(A[:2].astype(float), A[:2].astype(float), units="index")
    with pytest.raises(ValueError, match="kind"):
        jacobian_stats(np.zeros((8, 8, 2)), domain=DOMAIN, kind="warp")
    with pytest.raises(ValueError, match="spacing"):
        hd95(A, B, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="fixed_points"):
        evaluate(fixed_points=A[:2])


# ------------------------------------------------------------------------ command line


def test_cli_evaluate_prints_and_writes_the_hand_values(tmp_path, capsys):
    import json

    from multireg.workflow.itk import write_transform

    np.save(tmp_path / "fixed.npy", A.astype(float))
    np.save(tmp_path / "warped.npy", B.astype(float))
    x = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.savetxt(tmp_path / "fixed.csv", x, delimiter=",")
    np.savetxt(tmp_path / "moving.csv", x + np.array([0.0, 1.0]), delimiter=",")
    M = np.array([[1.0, 0.0], [0.0, 2.0]])  # det 2; moves (0, 0) by (0, 1) exactly
    write_transform(tmp_path / "map.tfm", (Affine(2), _affine_w(M, [0.0, 1.0])))
    argv = ["evaluate", tmp_path / "map.tfm", "--labels", tmp_path / "fixed.npy"]
    argv += [tmp_path / "warped.npy", "--landmarks", tmp_path / "fixed.csv"]
    argv += [tmp_path / "moving.csv", "--out", tmp_path / "m.json"]
    code, out, err = _cli(capsys, *argv)
    assert code == 0, err
    assert "Dice mean 0.7083" in out
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["dice"]["per_label"]["1"] == pytest.approx(0.75)
    assert report["dice"]["per_label"]["3"] is None  # NaN: missing from one map
    assert report["tre_initial"]["per_point"] == pytest.approx([1.0, 1.0])
    # y(3, 4) = (3, 9), moving (3, 5): 4; y(0, 0) = (0, 1): 0
    assert report["tre"]["per_point"] == pytest.approx([0.0, 4.0])
    assert report["jacobian"]["det_min"] == pytest.approx(2.0)  # on the labels' grid
    code, out, err = _cli(capsys, "evaluate", tmp_path / "map.tfm")
    assert code == 0 and out.strip() == "evaluate:"  # an ITK linear map has no grid of its own


def test_cli_evaluate_bad_input(tmp_path, capsys):
    code, _, err = _cli(capsys, "evaluate")
    assert code == 2 and "nothing to evaluate" in err
    code, _, err = _cli(capsys, "evaluate", "--landmarks", tmp_path / "a.csv", tmp_path / "b.csv")
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
