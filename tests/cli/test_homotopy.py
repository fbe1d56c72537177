"""``multireg homotopy`` (multireg.cli.homotopy)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cli._helpers import (
    FAST,
    _result,
    _run,
)
from tests.conftest import AD_BACKENDS

pytestmark = pytest.mark.skipif(not AD_BACKENDS, reason="the commands need torch or JAX")


# ---------------------------------------------------------------------------- other commands


def test_homotopy_follows_the_path(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "homotopy", data["T.npy"], data["R.npy"], "--transform", "affine",
        "--thetas", "10,1,0.01,1e-6", "--backend", FAST, "--out", out, "-q",
    )  # fmt: skip
    assert code == 0, err
    result = _result(out)
    assert np.allclose(result["path"]["theta"], [10, 1, 0.01, 1e-6])
    assert np.allclose(result["parameters"], data["w"], atol=1e-3)
    assert np.load(out / "warped.npy").shape == (32, 28)


def test_homotopy_defaults_take_theta_max_from_the_data_and_starts(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "homotopy", data["T.npy"], data["R.npy"], "--transform", "rigid", "--n-steps", "6",
        "--starts", "2", "--backend", FAST, "--out", out, "-q",
    )  # fmt: skip
    assert code in (0, 3), err
    result = _result(out)
    assert result["theta_max"]["how"] == "data"
    assert result["theta_max"]["value"] == result["path"]["theta"][0] != 1e3
    assert result["branches"]["count"] == 2 and len(result["branches"]["J"]) == 2
    assert result["settings"]["starts"] == 2


def test_homotopy_with_a_theta_range_and_one_start(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "homotopy", data["T.npy"], data["R.npy"], "--transform", "affine",
        "--theta-range", "10,0.01", "--n-steps", "4", "--backend", FAST, "--out", out, "-q",
    )  # fmt: skip
    assert code in (0, 3), err
    result = _result(out)
    assert np.allclose(result["path"]["theta"][0], 10) and result["theta_max"]["how"] == "given"
