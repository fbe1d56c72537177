"""multireg.itk against SimpleITK itself: what multireg writes, ITK applies the same way; what
ITK writes, multireg reads as the same map (RAS world ↔ LPS, fixed → moving, vectors in LPS).

The templates vanish over their outer cells: there ITK's linear interpolator holds the edge
value while FAIR's model falls to zero, a boundary convention, not a geometry difference.
"""

from __future__ import annotations

import numpy as np
import pytest

from multireg import Affine, Domain, io
from multireg.data import blobs
from multireg.workflow.apply import Map, apply

sitk = pytest.importorskip("SimpleITK")
itk = pytest.importorskip("multireg.workflow.itk")

OMEGA2 = (-3.0, 5.0, 1.0, 7.0)  # h = (0.5, 0.5) on 16 x 12
OMEGA3 = (-8.0, 8.0, 2.0, 14.0, -5.0, 5.0)  # h = (1, 1, 1) on 16 x 12 x 10


def _template(m, omega, seed=0):
    T, dom = blobs(m, omega, seed=seed)
    window = np.ones(m)
    for k, n in enumerate(m):
        w = np.ones(n)
        w[:3] = w[-3:] = 0.0
        window = window * w.reshape([-1 if j == k else 1 for j in range(len(m))])
    return T * window, dom


def _affine(d, seed=1):
    rng = np.random.default_rng(seed)
    A = np.eye(d) + rng.uniform(-0.04, 0.04, (d, d))
    b = rng.uniform(-0.5, 0.5, d)
    return Map(None, Affine(d), np.c_[A, b].ravel())


def _field(dom, amplitude):
    x = dom.cell_centers().reshape(*dom.m, dom.dim)
    t = (x - np.asarray(dom.lower)) / np.asarray(dom.extent)
    u = np.stack([np.sin(2 * np.pi * t[..., (k + 1) % dom.dim]) for k in range(dom.dim)], -1)
    return amplitude * u


def _resample(T, dom, tx):
    img = itk.to_sitk(T, dom)
    out = sitk.Resample(img, img, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    data, out_dom = itk.from_sitk(out)
    assert out_dom == dom
    return data


# ------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("m,omega", [((16, 12), OMEGA2), ((16, 12, 10), OMEGA3)])
def test_nifti_written_by_multireg_has_the_same_grid_in_itk(tmp_path, m, omega):
    T, dom = _template(m, omega)
    path = io.write_image(tmp_path / "t.nii.gz", T, omega=omega)
    data, got = itk.from_sitk(sitk.ReadImage(str(path)))
    np.testing.assert_allclose(got.omega, dom.omega, atol=1e-6)
    np.testing.assert_allclose(data, T, atol=1e-6)  # float32 file
    # and a world point in multireg is F·p in ITK: voxel (1, 2[, 3])'s centre
    idx = (1, 2, 3)[: len(m)]
    p = sitk.ReadImage(str(path)).TransformIndexToPhysicalPoint(idx)
    x = np.asarray(dom.lower) + (np.asarray(idx) + 0.5) * np.asarray(dom.h)
    np.testing.assert_allclose(np.diag([-1.0, -1.0, 1.0][: len(m)]) @ p, x, atol=1e-6)


# ---------------------------------------------------------------- linear transforms


@pytest.mark.parametrize("suffix", [".tfm", ".txt", ".h5"])
@pytest.mark.parametrize("m,omega", [((16, 12), OMEGA2), ((16, 12, 10), OMEGA3)])
def test_affine_written_by_multireg_resampled_by_itk(tmp_path, suffix, m, omega):
    T, dom = _template(m, omega)
    mp = _affine(len(m))
    path = itk.write_transform(tmp_path / f"affine{suffix}", mp)
    tx = sitk.ReadTransform(str(path))
    ours = apply(mp, T, order="linear", like=dom, omega=omega)
    np.testing.assert_allclose(_resample(T, dom, tx), ours, atol=1e-10)
    back = itk.read_transform(path)  # and the round trip
    np.testing.assert_allclose(back.w, mp.w, atol=1e-12)


@pytest.mark.parametrize("kind", ["euler", "affine", "translation"])
def test_transform_written_by_itk_read_by_multireg(tmp_path, kind):
    """ITK maps p ↦ T(p) in LPS; multireg's map must be x ↦ F T(F x)."""
    rng = np.random.default_rng(3)
    if kind == "euler":
        tx = sitk.Euler3DTransform((1.0, -2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, -6.0))
    elif kind == "affine":
        tx = sitk.AffineTransform(3)
        tx.SetMatrix(tuple((np.eye(3) + rng.uniform(-0.1, 0.1, (3, 3))).ravel()))
        tx.SetTranslation((1.0, 2.0, 3.0))
        tx.SetCenter((-1.0, 0.5, 2.0))
    else:
        tx = sitk.TranslationTransform(3, (1.0, -2.0, 0.5))
    for suffix in (".tfm", ".h5"):
        path = tmp_path / f"{kind}{suffix}"
        sitk.WriteTransform(tx, str(path))
        mp = itk.read_transform(path)
        x = rng.uniform(-10, 10, (6, 3))
        F = np.diag([-1.0, -1.0, 1.0])
        want = np.array([F @ tx.TransformPoint(tuple(F @ p)) for p in x])
        np.testing.assert_allclose(mp(x), want, atol=1e-10)


# --------------------------------------------------------------- displacement fields


@pytest.mark.parametrize("m,omega", [((16, 12), OMEGA2), ((16, 12, 10), OMEGA3)])
def test_field_written_by_multireg_resampled_by_itk(tmp_path, m, omega):
    T, dom = _template(m, omega)
    mp = Map(dom, _affine(len(m)).transform, _affine(len(m)).w, _field(dom, 0.4))
    path = itk.write_displacement(tmp_path / "warp.nii.gz", mp)
    field = sitk.ReadImage(str(path), sitk.sitkVectorFloat64)
    assert field.GetNumberOfComponentsPerPixel() == len(m)
    tx = sitk.DisplacementFieldTransform(field)
    np.testing.assert_allclose(_resample(T, dom, tx), apply(mp, T, order="linear"), atol=1e-10)
    back = itk.read_displacement(path)  # round trip: the same map at and between the centres
    idx = np.random.default_rng(5).uniform(0, np.asarray(m) - 1, (50, len(m)))  # in the hull
    x = np.asarray(dom.lower) + (idx + 0.5) * np.asarray(dom.h)
    np.testing.assert_allclose(back(x), mp(x), atol=1e-10)


@pytest.mark.parametrize("flip", [False, True])
def test_field_written_by_itk_read_by_multireg(tmp_path, flip):
    """A field SimpleITK writes (its own geometry, LPS vectors) is the same map in multireg."""
    rng = np.random.default_rng(4)
    size = (9, 8, 7)
    field = sitk.GetImageFromArray(rng.uniform(-1, 1, (*size[::-1], 3)), isVector=True)
    field.SetSpacing((1.5, 2.0, 1.0))
    field.SetOrigin((10.0, -4.0, 3.0))
    if flip:  # ITK's identity direction: axes 0 and 1 run against RAS (flipped for multireg)
        field.SetDirection((1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    else:
        field.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    path = tmp_path / "itk_warp.nii.gz"
    sitk.WriteImage(field, str(path))
    mp = itk.read_displacement(path)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    F = np.diag([-1.0, -1.0, 1.0])
    idx = rng.uniform(0.5, 5.5, (10, 3))  # inside the grid, between voxel centres
    p = np.array([field.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in idx])
    want = np.array([F @ tx.TransformPoint(tuple(q)) for q in p])
    np.testing.assert_allclose(mp(p @ F), want, atol=1e-10)


# ------------------------------------------------------------------------ bad input


def test_bad_input(tmp_path):
    dom = Domain(OMEGA2, (16, 12))
    nonlinear = Map(dom, displacement=_field(dom, 0.1))
    with pytest.raises(ValueError, match="write_displacement"):
        itk.write_transform(tmp_path / "a.tfm", nonlinear)
    with pytest.raises(ValueError, match="ends in"):
        itk.write_transform(tmp_path / "a.xfm", _affine(2))
    (tmp_path / "bad.tfm").write_text("hello\n")
    with pytest.raises(ValueError, match="not an ITK transform file"):
        itk.read_transform(tmp_path / "bad.tfm")
    with pytest.raises(ValueError, match="like is needed"):
        itk.write_displacement(tmp_path / "w.nii.gz", _affine(2))


def test_flipped_nifti_end_to_end_against_itk(tmp_path, capsys):
    """An LAS volume (x axis flipped, shifted origin) and a field SimpleITK writes on its grid:
    'multireg apply' (RAS world, flips undone and redone) writes what ITK's Resample writes,
    in the input's geometry."""
    nib = pytest.importorskip("nibabel")
    from tests.cli._helpers import _run

    m = (12, 10, 8)
    T, _ = _template(m, (0.0, 12.0, 0.0, 10.0, 0.0, 8.0))
    affine = np.diag([-1.5, 2.0, 1.0, 1.0])
    affine[:3, 3] = [20.0, -5.0, 3.0]
    nib.save(nib.Nifti1Image(T.astype(np.float32), affine), str(tmp_path / "T.nii.gz"))
    image = sitk.ReadImage(str(tmp_path / "T.nii.gz"), sitk.sitkFloat64)
    k = np.indices(m[::-1], dtype=np.float64)  # ITK's (z, y, x) array order
    u = np.stack([0.8 * np.sin(k[0] / 3), 0.6 * np.cos(k[2] / 4), 0.5 * np.sin(k[1] / 2)], -1)
    field = sitk.GetImageFromArray(u, isVector=True)
    field.CopyInformation(image)
    sitk.WriteImage(field, str(tmp_path / "warp.nii.gz"))
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    want = sitk.GetArrayFromImage(sitk.Resample(image, image, tx, sitk.sitkLinear, 0.0))
    argv = ["apply", tmp_path / "warp.nii.gz", tmp_path / "T.nii.gz", "--out", tmp_path / "o"]
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    written = nib.load(str(tmp_path / "o" / "applied.nii.gz"))
    np.testing.assert_allclose(written.affine, affine)  # the input's geometry
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "applied.nii.gz")))
    np.testing.assert_allclose(got, want, atol=1e-5)  # float32 file
    assert np.abs(want).max() > 0.1 and not np.allclose(want, T.T)  # the field moved T
