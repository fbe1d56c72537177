"""``multireg superres`` (multireg.cli.superres)."""

from __future__ import annotations

import numpy as np
import pytest

from multireg import io
from tests.cli._helpers import (
    FAST,
    _one_line_error,
    _result,
    _run,
)
from tests.conftest import AD_BACKENDS

pytestmark = pytest.mark.skipif(not AD_BACKENDS, reason="the commands need torch or JAX")


def test_superres_synthetic(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "superres", "--synthetic", "--m-coarse", "8,8", "--n-frames", "2",
        "--backend", FAST, "--out", out, "-q",
    )  # fmt: skip
    assert code == 0, err
    result = _result(out)
    assert result["m_fine"] == [16, 16] and result["image_error"] < 0.2
    with np.load(out / "reconstruction.npz") as z:
        assert z["image"].shape == (16, 16) and z["motions"].shape == (2, 3)
    code, _, err = _run(capsys, "superres", "--backend", FAST)
    assert code == 2 and "FRAMES or --synthetic" in _one_line_error(err)
    # NIfTI frames (m1, m2, N): the reconstruction keeps their box on the finer grid
    nib = pytest.importorskip("nibabel")
    frames = np.moveaxis(np.load(out / "reconstruction.npz")["image"][None], 0, -1)
    frames = np.concatenate([frames[::2, ::2], frames[1::2, 1::2]], axis=-1)  # two 8×8 frames
    affine = np.diag([2.0, 2.0, 1.0, 1.0])
    affine[:3, 3] = [-7.0, -7.0, 0.0]  # omega = (-8, 8, -8, 8): centred, 2 mm pixels
    nib.save(nib.Nifti1Image(frames, affine), str(tmp_path / "frames.nii.gz"))
    code, _, err = _run(
        capsys, "superres", tmp_path / "frames.nii.gz", "--max-iter", "2", "--backend", FAST,
        "--out", tmp_path / "o2", "-q",
    )  # fmt: skip
    assert code in (0, 3), err
    fine = io.read_image(tmp_path / "o2" / "reconstruction.nii.gz")
    assert fine.m == (16, 16) and np.allclose(fine.omega, (-8, 8, -8, 8))
    assert _result(tmp_path / "o2")["omega"] == [-8.0, 8.0, -8.0, 8.0]
