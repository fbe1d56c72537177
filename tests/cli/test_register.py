"""``multireg register`` (multireg.cli.register, and the registration options it shares with
register-many, multireg.cli._options)."""

from __future__ import annotations

import numpy as np
import pytest

import multireg
from multireg import cli, io
from multireg.optimize import Status
from tests.cli._helpers import (
    FAIR_FLAGS,
    FAST,
    SHIFT,
    SHIFT_3D,
    _capture_register,
    _has_figures,
    _manifest,
    _one_line_error,
    _result,
    _run,
)
from tests.conftest import AD_BACKENDS

pytestmark = pytest.mark.skipif(not AD_BACKENDS, reason="the commands need torch or JAX")


@pytest.mark.parametrize("flags, expected", FAIR_FLAGS)
def test_fair_exact_options_reach_register(data, tmp_path, capsys, monkeypatch, flags, expected):
    calls = _capture_register(monkeypatch)
    code, _, err = _run(capsys, "register", data["T.npy"], data["R.npy"], *flags,
                        "--backend", FAST, "--out", tmp_path / "out")  # fmt: skip
    assert code == cli.EXIT_ERROR and "recorded" in err and len(calls) == 1
    assert {k: calls[0][k] for k in expected} == expected
    for key in {"fair_compat", "linear_solver", "prolongation", "det_method"} - set(expected):
        assert key not in calls[0]  # register()'s own default, not one the CLI chose


def test_mi_gn_distance_registers_and_is_recorded(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "register", data["T.npy"], data["R.npy"], "--distance", "mi-gn",
                        "--transform", "translation", "--levels", "1", "--max-iter", "3",
                        "--backend", FAST, "--out", out, "--quiet")  # fmt: skip
    assert code in (cli.EXIT_OK, cli.EXIT_NOT_CONVERGED), err
    settings = _result(out)["settings"]
    assert settings["distance"] == "mi-gn" and settings["fair_compat"] is False


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--linear-solver", "lu"], ["--linear-solver", "invalid choice"]),
        (["--prolongation", "cubic"], ["--prolongation", "invalid choice"]),
        (["--det-method", "jac"], ["--det-method", "invalid choice"]),
        (["--distance", "mi-g"], ["--distance", "invalid choice"]),
        (["--fair-compat=yes"], ["--fair-compat"]),
        (["--method", "lbfgs", "--linear-solver", "direct"], ["--linear-solver", "gauss-newton"]),
        (["--prolongation", "constant"], ["--prolongation", "nonparametric"]),
        (["--det-method", "fair"], ["--det-method", "nonparametric"]),
    ],
)
@pytest.mark.parametrize("command", ["register", "register-many"])
def test_bad_fair_exact_options_exit_2_before_any_work(
    data, tmp_path, capsys, monkeypatch, command, flags, words
):
    calls = _capture_register(monkeypatch)
    inputs = [data["T.npy"], data["R.npy"]] if command == "register" else [_manifest(tmp_path, 1)]
    code, _, err = _run(capsys, command, *inputs, *flags, "--out", tmp_path / "out")
    assert code == 2
    line = _one_line_error(err)
    assert all(w in line for w in words), line
    assert not calls and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- register


@pytest.mark.parametrize("backend", AD_BACKENDS)
def test_register_two_pngs_recovers_the_shift(data, tmp_path, capsys, backend):
    out = tmp_path / "out"
    code, stdout, _ = _run(
        capsys, "register", data["T.png"], data["R.png"], "--transform", "translation",
        "--backend", backend, "--out", out,
    )  # fmt: skip
    assert code == 0, stdout
    result = _result(out)
    assert result["status"] == "converged" and result["backend"] == backend
    # 8-bit quantisation of T and R limits the accuracy to a few hundredths of a pixel
    assert np.allclose(result["parameters"], SHIFT, atol=0.03)
    assert result["omega"] == [0.0, 48.0, 0.0, 40.0] and result["parameters_units"] == "pixels"
    warped = io.read_image(out / "warped.png")
    assert warped.m == (48, 40) and warped.mode == "L"
    R = io.read_image(data["R.png"]).data
    T = io.read_image(data["T.png"]).data
    assert np.mean(np.abs(warped.data - R)) < 0.1 * np.mean(np.abs(T - R))
    assert "converged" in stdout and "warped.png" in stdout


def test_register_nifti_volumes_in_world_units_keeps_the_geometry(data, tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    out = tmp_path / "out"
    code, stdout, _ = _run(
        capsys, "register", data["T.nii.gz"], data["R.nii.gz"], "--transform", "translation",
        "--backend", FAST, "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 0 and stdout == ""
    result = _result(out)
    assert np.allclose(result["parameters"], SHIFT_3D, atol=1e-3)  # in mm, not voxels
    assert result["parameters_units"] == "world (mm)"
    assert np.allclose(result["omega"], (-11, 21, 4.25, 28.25, 18.5, 66.5))
    warped = nib.load(str(out / "warped.nii.gz"))
    assert np.array_equal(warped.affine, nib.load(str(data["R.nii.gz"])).affine)
    assert warped.shape == (16, 16, 16)
    R = io.read_image(data["R.nii.gz"]).data
    assert np.max(np.abs(warped.get_fdata() - R)) < 1e-2 * np.ptp(R)


def test_register_npy_affine_and_the_command_contract(data, tmp_path):
    out = tmp_path / "never-written"
    name, ns = cli.parse_command(
        ["register", str(data["T.npy"]), str(data["R.npy"]), "--out", str(out),
         "--tol-j", "1e-9", "--tol-y", "1e-7", "--tol-g", "1e-7", "--max-iter", "30", "-q"]
    )  # fmt: skip
    result, status = cli.COMMANDS[name](ns, FAST)
    assert status is Status.CONVERGED and not out.exists()
    assert np.allclose(result["parameters"], data["w"], atol=1e-5)
    for key, value in result.items():  # numbers only: what validation compares
        assert isinstance(value, (np.ndarray, float, int)), key
    assert result["warped"].shape == (32, 28) and isinstance(result["iterations"], int)
    assert result.info["backend"] == FAST and result.raw.success
    assert [im.path for im in result.inputs] == [data["T.npy"], data["R.npy"]]


def test_register_nonparametric_writes_the_displacement(data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["register", data["T.npy"], data["R.npy"], "--transform", "nonparametric",
            "--alpha", "100", "--levels", "2", "--backend", FAST, "--out", out, "-q"]  # fmt: skip
    figures = _has_figures()
    if figures:
        argv.append("--figures")
    code, _, err = _run(capsys, *argv)
    assert code in (0, 3), err
    result = _result(out)
    assert result["det_min"] > 0 and result["reduction"] < 0.2
    with np.load(out / "displacement.npz") as z:
        u, y = z["displacement"], z["y"]
        assert u.shape == (32, 28, 2)
        x = multireg.Domain(tuple(z["omega"]), tuple(z["m"])).cell_centers().reshape(32, 28, 2)
    assert np.allclose(y - x, u) and np.max(np.abs(u)) > 0.3  # it moved
    assert np.load(out / "warped.npy").shape == (32, 28)
    assert (out / "registration.png").exists() == figures


def test_not_converged_exits_3_and_still_writes(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "register", data["T.npy"], data["R.npy"], "--max-iter", "1", "--levels", "1",
        "--backend", FAST, "--out", out, "-q",
    )  # fmt: skip
    assert code == 3
    assert "did not converge" in err and "Traceback" not in err
    result = _result(out)
    assert result["status"] == "max_iterations" and result["converged"] is False
    assert (out / "warped.npy").exists()


def test_levels_record_what_ran_and_refuse_what_the_image_lacks(data, tmp_path, capsys):
    """32×28 has FAIR levels 0..5 (ceil(log2 28) = 5): --levels 3,20 asked for levels that do not
    exist; refused before any work rather than run as 3..5 and recorded as 3..20."""
    out = tmp_path / "out"
    base = ("register", data["T.npy"], data["R.npy"], "--transform", "translation",
            "--max-iter", "3", "--backend", FAST, "-q")  # fmt: skip
    for levels, message in (("3,20", "finest is level 5"), ("7", "has 6 levels")):
        code, _, err = _run(capsys, *base, "--levels", levels, "--out", out)
        assert code == 2, err
        line = _one_line_error(err)
        assert f"--levels {levels}" in line and message in line
        assert not out.exists()
    code, _, err = _run(capsys, *base, "--levels", "3,5", "--out", out)
    assert code in (0, 3), err
    result = _result(out)
    assert result["settings"]["levels_used"] == [3, 4, 5]
    assert [lv["level"] for lv in result["levels"]] == [3, 4, 5]
    assert [lv["m"] for lv in result["levels"]] == [[8, 7], [16, 14], [32, 28]]
