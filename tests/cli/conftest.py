"""The command-line tests' fixtures: image pairs in every format, an unwritable folder."""

from __future__ import annotations

import numpy as np
import pytest

import multireg
from multireg.data import blobs
from tests.cli._helpers import SHIFT, SHIFT_3D, _warp
from tests.io.test_io import unwritable_folder as _unwritable_folder

unwritable_folder = _unwritable_folder  # the fixture, shared with the io tests


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """Small image pairs in every format with a known transformation T(y(x)) = R(x)."""
    folder = tmp_path_factory.mktemp("inputs")
    files = {}
    # PNG 48×40, 8-bit, pixel units: R(x) = T(x + SHIFT)
    T, dom = blobs((48, 40), (0, 48, 0, 40), seed=2)
    R = _warp(T, dom, dom.cell_centers() + SHIFT)
    pil = pytest.importorskip("PIL.Image")
    for name, a in (("T.png", T), ("R.png", R)):
        pil.fromarray(np.rint(255 * a).astype(np.uint8)).save(folder / name)
        files[name] = folder / name
    # NPY 32×28, float64: an affine map
    T, dom = blobs((32, 28), (0, 32, 0, 28), seed=3)
    w = np.array([1.03, 0.04, -0.6, -0.03, 0.98, 0.9])
    R = _warp(T, dom, multireg.transform("affine", dim=2)(w, dom.cell_centers()))
    np.save(folder / "T.npy", T)
    np.save(folder / "R.npy", R)
    files.update({"T.npy": folder / "T.npy", "R.npy": folder / "R.npy", "w": w})
    bad = T.copy()
    bad[3, 4] = np.nan
    np.save(folder / "nan.npy", bad)
    (folder / "garbage.png").write_bytes(b"definitely not a PNG" * 10)
    files.update(nan=folder / "nan.npy", garbage=folder / "garbage.png")
    # NIfTI 16³ with non-unit spacing and a non-zero origin (world units, mm)
    nib = pytest.importorskip("nibabel")
    h, origin = np.array([2.0, 1.5, 3.0]), np.array([-10.0, 5.0, 20.0])
    omega = tuple(v for a, hk in zip(origin - h / 2, h) for v in (a, a + 16 * hk))
    T, dom = blobs((16, 16, 16), omega, seed=4)
    R = _warp(T, dom, dom.cell_centers() + SHIFT_3D)
    affine = np.diag([*h, 1.0])
    affine[:3, 3] = origin
    for name, a in (("T.nii.gz", T), ("R.nii.gz", R)):
        nib.save(nib.Nifti1Image(a.astype(np.float32), affine), str(folder / name))
        files[name] = folder / name
    oblique = affine.copy()
    oblique[0, 1] = 0.4
    nib.save(nib.Nifti1Image(T.astype(np.float32), oblique), str(folder / "oblique.nii.gz"))
    files.update(oblique=folder / "oblique.nii.gz", affine=affine)
    return files
