"""The command line end to end: every format in and out, recovered transformations, geometry,
bad input with one-line errors and the documented exit codes, safe outputs, interruption."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import multireg
from multireg import cli, io
from multireg.cli import main
from multireg.data import blobs
from multireg.optimize import Status
from tests.conftest import AD_BACKENDS
from tests.io.test_io import _tree
from tests.io.test_io import unwritable_folder as _unwritable_folder

unwritable_folder = _unwritable_folder  # the fixture, shared with the io tests
pytestmark = pytest.mark.skipif(not AD_BACKENDS, reason="the commands need torch or JAX")
# One backend for the tests that check wiring rather than numbers: torch runs small problems
# without compiling (JAX compiles every new configuration, seconds each).
FAST = "torch" if "torch" in AD_BACKENDS else (AD_BACKENDS[0] if AD_BACKENDS else None)
SHIFT = np.array([2.5, -1.5])  # pixels
SHIFT_3D = np.array([1.2, -0.8, 1.5])  # mm


def _warp(T, domain, y):
    c = multireg.spline_coefficients(T)
    return np.asarray(multireg.spline_interpolate(c, domain, y)).reshape(domain.m)


@pytest.fixture(scope="module")
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


def _run(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr); SystemExit (argparse) gives its code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("multireg: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def _result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


# ---------------------------------------------------------------------------- help, parsing


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_help_documents_every_option_and_the_exit_codes(capsys):
    parser = cli.build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {
        "register", "register-many", "homotopy", "superres", "dynamics", "demo", "validate",
        "bench", "apply", "evaluate",
    }  # fmt: skip
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
        assert "exit codes" in sub.epilog and "3 " in sub.epilog
    for flag in ("--backend", "--dtype", "--device", "--quiet", "--overwrite", "--out"):
        assert any(flag in a.option_strings for a in commands["register"]._actions), flag
    with pytest.raises(SystemExit) as exc:
        main(["register", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--transform", "--levels", "--allow-oblique", "130", "not converge"):
        assert word in text


def test_unknown_option_and_bad_values_are_one_line_usage_errors(capsys):
    code, _, err = _run(capsys, "register", "a.png", "b.png", "--frobnicate")
    assert code == 2
    assert "--frobnicate" in _one_line_error(err) and "multireg register --help" in err
    code, _, err = _run(capsys, "register", "a.png", "b.png", "--transform", "warp")
    assert code == 2 and "invalid choice" in _one_line_error(err)
    code, _, err = _run(capsys, "register", "a.png", "b.png", "--alpha", "-1")
    assert code == 2 and "positive" in _one_line_error(err)
    code, _, err = _run(capsys, "register", "a.png")
    assert code == 2 and "REFERENCE" in _one_line_error(err)


class _Captured(Exception):
    """Raised by a stand-in for multireg.register once it has recorded its arguments."""


def _capture_register(monkeypatch) -> list[dict]:
    """multireg.register replaced by a stand-in that records its keyword arguments and stops
    the run (the wiring is under test, not the solver)."""
    calls: list[dict] = []

    def register(T, R, omega, **kwargs):
        calls.append(kwargs)
        raise _Captured("recorded")

    monkeypatch.setattr(multireg, "register", register)
    return calls


FAIR_FLAGS = [
    (["--fair-compat"], {"fair_compat": True}),
    (["--linear-solver", "direct"], {"linear_solver": "direct"}),
    (["--linear-solver", "pcg"], {"linear_solver": "pcg"}),
    (["--transform", "nonparametric", "--alpha", "1", "--prolongation", "constant"],
     {"prolongation": "constant"}),
    (["--transform", "nonparametric", "--alpha", "1", "--det-method", "fair"],
     {"det_method": "fair"}),
]  # fmt: skip


@pytest.mark.parametrize("flags, expected", FAIR_FLAGS)
def test_fair_exact_options_reach_register(data, tmp_path, capsys, monkeypatch, flags, expected):
    calls = _capture_register(monkeypatch)
    code, _, err = _run(capsys, "register", data["T.npy"], data["R.npy"], *flags,
                        "--backend", FAST, "--out", tmp_path / "out")  # fmt: skip
    assert code == cli.EXIT_ERROR and "recorded" in err and len(calls) == 1
    assert {k: calls[0][k] for k in expected} == expected
    for key in {"fair_compat", "linear_solver", "prolongation", "det_method"} - set(expected):
        assert key not in calls[0]  # register()'s own default, not one the CLI chose


def test_fair_exact_options_reach_register_many(tmp_path, capsys, monkeypatch):
    import concurrent.futures as cf

    import multireg.workflow.many
    from multireg.distances import MIGaussNewton

    monkeypatch.setattr(multireg.many, "_default_executor", lambda n: cf.ThreadPoolExecutor(n))
    calls = _capture_register(monkeypatch)
    manifest = _manifest(tmp_path, n=1)
    code, _, err = _run(
        capsys, "register-many", manifest, "--transform", "nonparametric", "--alpha", "1",
        "--distance", "mi-gn", "--fair-compat", "--linear-solver", "direct",
        "--prolongation", "constant", "--det-method", "fair", "--backend", FAST,
        "--workers", "1", "--out", tmp_path / "out", "--quiet",
    )  # fmt: skip
    assert code == cli.EXIT_PAIRS_FAILED, err
    assert "recorded" in (tmp_path / "out" / "summary.csv").read_text()
    (kwargs,) = calls
    assert isinstance(kwargs["distance"], MIGaussNewton)
    assert kwargs["distance"] == MIGaussNewton()  # FAIR's bins and ranges: the class defaults
    assert (kwargs["fair_compat"], kwargs["linear_solver"]) == (True, "direct")
    assert (kwargs["prolongation"], kwargs["det_method"]) == ("constant", "fair")


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


def _has_figures() -> bool:
    try:
        import matplotlib  # noqa: F401

        from multireg.workflow import figures
    except ImportError:
        return False
    return hasattr(figures, "registration_figure")


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


def test_progress_bars_on_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    import io as stdio

    class Terminal(stdio.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    domains = [multireg.Domain((0, 1, 0, 1), m) for m in ((12, 10), (24, 20))]
    progress = cli._Progress(quiet=False, total=10)
    for d in domains:
        for k in range(3):
            progress.registration("parametric", d, _Record(k, 10.0 / (k + 1)))
    progress.close()
    for k in range(2):
        progress.step("superres", _Record(k, 1.5))
    progress.close()
    text = terminal.getvalue()
    assert "parametric 12x10" in text and "parametric 24x20" in text and "2/10" in text
    assert "J=3.333" in text and "superres" in text
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    silent = cli._Progress(quiet=True, total=10)
    silent.registration("parametric", domains[0], _Record(1, 1.0))
    silent.close()
    assert quiet.getvalue() == ""


class _Record:
    def __init__(self, iteration, fun):
        self.iteration, self.fun = iteration, fun


# ---------------------------------------------------------------------------- bad input


def test_bad_inputs_exit_2_with_one_line(data, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        ((tmp_path / "missing.png", data["R.png"]), "missing.png: no such file"),
        ((data["garbage"], data["R.png"]), "garbage.png: cannot read"),
        ((data["T.png"], data["R.nii.gz"]), "shape"),  # 2D against 3D
        ((data["nan"], data["R.npy"]), "nan.npy: contains 1 NaN"),
        ((data["oblique"], data["R.nii.gz"]), "oblique"),
    ]
    for (T, R), message in cases:
        code, _, err = _run(capsys, "register", T, R, "--backend", FAST, "--out", out)
        assert code == 2, (T, R, err)
        assert message in _one_line_error(err)
    assert not out.exists()  # nothing was written
    code, _, err = _run(
        capsys, "register", data["T.npy"], data["R.npy"], "--device", "abacus", "--out", out
    )
    assert code == 2 and "abacus" in _one_line_error(err)
    code, _, err = _run(
        capsys, "register", data["T.npy"], data["R.npy"], "--transform", "nonparametric"
    )
    assert code == 2 and "--alpha" in _one_line_error(err)


def test_outputs_are_never_clobbered_nor_written_over_an_input(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("keep me")
    base = ("register", data["T.npy"], data["R.npy"], "--backend", FAST, "--out", out, "-q")
    code, _, err = _run(capsys, *base)
    assert code == 2 and "--overwrite" in _one_line_error(err)
    assert (out / "result.json").read_text() == "keep me" and not (out / "warped.npy").exists()
    reference = data["R.npy"].read_bytes()
    code, _, err = _run(capsys, *base, "--warped", data["R.npy"], "--overwrite")
    assert code == 2 and "over an input" in _one_line_error(err)
    assert data["R.npy"].read_bytes() == reference


def test_interruption_leaves_the_old_outputs_intact(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    base = ("register", data["T.png"], data["R.png"], "--transform", "translation",
            "--max-iter", "2", "--backend", FAST, "--out", out, "-q")  # fmt: skip
    assert _run(capsys, *base)[0] in (0, 3)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(old) == {"warped.png", "result.json"}

    def interrupted(tmp, *args):
        Path(tmp).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setitem(io._WRITERS, "png", interrupted)
    code, _, err = _run(capsys, *base, "--overwrite")
    assert code == 130 and "interrupted" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # no temp file either


def _digests(*paths) -> dict:
    """sha256 of each file: inputs must be byte-for-byte the same after any run."""
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _inputs(data, tmp_path) -> tuple[Path, Path]:
    """Private copies of the .npy pair (so that a test can look at everything in tmp_path)."""
    folder = tmp_path / "in"
    folder.mkdir()
    T, R = folder / "T.npy", folder / "R.npy"
    shutil.copy(data["T.npy"], T)
    shutil.copy(data["R.npy"], R)
    return T, R


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_run_leaves_nothing_of_itself(data, tmp_path, capsys, monkeypatch, existing):
    """Ctrl-C while the outputs are written: all of the run's outputs or none of them."""
    T, R = _inputs(data, tmp_path)
    out = tmp_path / "runs" / "out"
    base = ("register", T, R, "--transform", "translation", "--levels", "1", "--max-iter", "3",
            "--backend", FAST, "--out", out, "-q")  # fmt: skip
    if existing:  # an earlier run's complete outputs, to be replaced with --overwrite
        assert _run(capsys, *base)[0] in (0, 3)
        assert sorted(os.listdir(out)) == ["result.json", "warped.npy"]
    before, digests = _tree(tmp_path), _digests(T, R)

    def interrupted(*args, **kwargs):  # warped.npy is written, result.json is next
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "write_json", interrupted)
    # fewer iterations than the earlier run: a new warped.npy would differ from the old one
    code, _, err = _run(capsys, *base, "--max-iter", "1", "--overwrite")
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert _tree(tmp_path) == before  # not one file of the run, not one temporary
    assert _digests(T, R) == digests


def test_a_killed_run_s_temporaries_are_removed_by_the_next_run(data, tmp_path, capsys):
    """kill -9 while writing leaves recognisable temporaries; the next run removes them, and
    nothing else."""
    T, R = _inputs(data, tmp_path)
    out = tmp_path / "out"
    argv = ["register", str(T), str(R), "--transform", "translation", "--levels", "1",
            "--max-iter", "2", "--backend", FAST, "--out", str(out), "-q"]  # fmt: skip
    code = f"""
        import os, signal
        from multireg import cli, io
        def killed(*args, **kwargs):
            print(os.getpid(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        io.write_json = killed  # after warped.npy, before result.json
        cli.main({argv!r})
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env
    )
    assert done.returncode == -9, done.stderr
    pid = int(done.stdout)
    left = sorted(set(os.listdir(tmp_path)) - {"in"})
    assert not out.exists() and left, left
    assert all(re.match(rf"\.multireg-tmp-{pid}-[0-9a-f]{{8}}-", name) for name in left), left
    decoys = [".multireg-tmp-notapid-out", ".out.tmp", "multireg-tmp-1-out"]
    for name in decoys:
        (tmp_path / name).write_text("not multireg's to remove")
    code, _, err = _run(capsys, *argv)
    assert code in (0, 3), err
    assert sorted(os.listdir(tmp_path)) == sorted(["in", "out", *decoys])
    assert sorted(os.listdir(out)) == ["result.json", "warped.npy"]


def test_an_unwritable_out_is_reported_before_any_work(
    data, tmp_path, capsys, monkeypatch, unwritable_folder
):
    calls = []

    def register(args, backend=None):
        calls.append(args)
        raise AssertionError("computed before checking the outputs")

    monkeypatch.setitem(cli.COMMANDS, "register", register)
    (tmp_path / "file").write_text("a file")
    before, digests = _tree(tmp_path), _digests(data["T.npy"], data["R.npy"])
    base = ("register", data["T.npy"], data["R.npy"], "--backend", FAST, "-q")
    cases = [
        (("--out", tmp_path / "file" / "out"), tmp_path / "file" / "out"),  # under a file
        (("--out", tmp_path / "file"), tmp_path / "file"),  # a file
        (("--out", unwritable_folder), unwritable_folder),  # read-only
        (("--out", unwritable_folder / "new" / "out"), unwritable_folder / "new" / "out"),
        (("--out", tmp_path / "ok", "--warped", tmp_path / "file" / "w.npy"), tmp_path / "file"),
    ]
    for options, named in cases:
        code, _, err = _run(capsys, *base, *options)
        assert code == 2, (options, err)
        assert str(named) in _one_line_error(err), (options, err)
    assert calls == []
    assert _tree(tmp_path) == before and _digests(data["T.npy"], data["R.npy"]) == digests


def test_validate_report_obeys_the_output_rules(data, tmp_path, capsys, monkeypatch):
    """--report FILE: never over an input (even a read-only one), never over an existing file
    without --overwrite, never through a symbolic link, checked before any work."""
    pytest.importorskip("multireg.workflow.validate")
    calls = []

    def register(args, backend=None):  # the command, cheaply: validate's wiring is tested
        calls.append(backend)
        return cli.CommandResult({"objective": 1.0, "iterations": 1}, info={}), Status.CONVERGED

    monkeypatch.setitem(cli.COMMANDS, "register", register)
    T, R = _inputs(data, tmp_path)
    R.chmod(0o444)
    existing = tmp_path / "existing.md"
    existing.write_text("keep me")
    target = tmp_path / "target.md"
    target.write_text("precious")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    (tmp_path / "file").write_text("a file")
    digests = _digests(T, R)
    base = ("validate", "register", T, R, "--levels", "1", "-q")
    for report, message in (
        (R, "over an input"),
        (existing, "--overwrite"),
        (link, "--overwrite"),
        (tmp_path / "file" / "report.md", "file"),
    ):
        code, _, err = _run(capsys, *base, "--report", report)
        assert code == 2, (report, err)
        assert message in _one_line_error(err) and str(report.parent) in err
    assert calls == []  # refused before any work
    code, _, err = _run(capsys, *base, "--report", R, "--overwrite")  # an input, even so
    assert code == 2 and "over an input" in _one_line_error(err)
    assert _digests(T, R) == digests and existing.read_text() == "keep me"
    code, _, err = _run(capsys, *base, "--report", link, "--overwrite")
    assert code == 0, err
    assert target.read_text() == "precious" and not link.is_symlink()
    assert "| " in link.read_text()
    code, _, err = _run(capsys, "validate", "--overwrite", "--report", existing, *base[1:])
    assert code == 0, err
    assert existing.read_text().startswith(link.read_text()[:20]) and "| " in existing.read_text()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporaries left
    assert _digests(T, R) == digests


def test_backend_choices_offer_only_what_works(data, capsys):
    """Every command computes with derivatives: a backend without them is not offered."""
    commands = _subparsers(cli.build_parser())
    for name in ("register", "homotopy", "superres", "dynamics", "demo"):
        (action,) = [a for a in commands[name]._actions if "--backend" in a.option_strings]
        assert set(action.choices) >= set(AD_BACKENDS) and "numpy" not in action.choices, name
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    assert "numpy" not in capsys.readouterr().out
    code, _, err = _run(capsys, "register", data["T.npy"], data["R.npy"], "--backend", "numpy")
    assert code == 2 and "invalid choice: 'numpy'" in _one_line_error(err)
    argv = ("validate", "--backends", "torch,numpy", "register", data["T.npy"], data["R.npy"])
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "--backends: cannot validate on 'numpy'" in _one_line_error(err)


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


def test_unexpected_error_exits_1_and_debug_shows_the_traceback(data, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(multireg, "register", broken)
    argv = ("register", data["T.npy"], data["R.npy"], "--backend", FAST, "--out", "unused")
    code, _, err = _run(capsys, *argv)
    assert code == 1 and "boom" in _one_line_error(err) and "--debug" in err
    code, _, err = _run(capsys, *argv, "--debug")
    assert code == 1 and "Traceback" in err and "RuntimeError: boom" in err


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


def test_dynamics_phantom_and_frames_from_a_file(tmp_path, capsys):
    dynamics = pytest.importorskip("multireg.dynamics")
    if not hasattr(dynamics, "solve"):
        pytest.skip("multireg.dynamics.solve is not there yet")
    out = tmp_path / "out"
    small = ("--max-iter", "2", "--init", "identity", "--backend", FAST, "-q")
    code, _, err = _run(
        capsys, "dynamics", "--phantom", "--phantom-m", "32,32", "--n-frames", "3",
        "--out", out, *small[:-1],  # not quiet: the progress bar's code runs (off: no TTY)
    )  # fmt: skip
    assert code in (0, 3), err
    result = _result(out)
    assert result["command"] == "dynamics" and result["settings"]["model_used"] == "regions"
    assert result["motion_error"] is not None
    with np.load(out / "dynamics.npz") as z:
        assert z["motions"].shape == (3, 6) and z["registered"].shape == (3, 32, 32)
        assert z["curves"].shape == (3, len(result["region_names"]))
    # the same frames from files: .npz frames with times, .npz masks
    ph = dynamics.kidney_phantom((32, 32), 3, seed=0)
    np.savez(tmp_path / "seq.npz", frames=ph.frames, times=ph.times, omega=np.array(ph.omega))
    np.savez(tmp_path / "masks.npz", **ph.masks)
    code, _, err = _run(
        capsys, "dynamics", tmp_path / "seq.npz", "--masks", tmp_path / "masks.npz",
        "--out", tmp_path / "out2", *small,
    )  # fmt: skip
    assert code in (0, 3), err
    with np.load(tmp_path / "out2" / "dynamics.npz") as z:
        assert z["motions"].shape == (3, 6)
    np.save(tmp_path / "seq.npy", ph.frames)
    code, _, err = _run(capsys, "dynamics", tmp_path / "seq.npy", "--out", tmp_path / "o3", *small)
    assert code == 2 and "--times" in _one_line_error(err)


def test_validate_compares_the_backends(data, tmp_path, capsys):
    pytest.importorskip("multireg.workflow.validate")
    if len(AD_BACKENDS) < 2:
        pytest.skip("needs two differentiating backends")
    argv = ("validate", "register", data["T.npy"], data["R.npy"], "--transform",
            "translation", "--levels", "1", "-q")  # fmt: skip
    code, stdout, err = _run(capsys, *argv, "--rtol", "1e-6")
    assert code == 0, err
    assert all(name in stdout for name in AD_BACKENDS) and "parameters" in stdout
    code, _, err = _run(capsys, *argv, "--rtol", "1e-300")
    assert code == 4 and "disagree" in err


def test_bench_and_demo_are_wired(tmp_path, capsys, monkeypatch):
    report = pytest.importorskip("multireg.workflow.report")
    demo = pytest.importorskip("multireg.workflow.demo")
    calls = {}

    def fake_report(path=None, *, quick=False, scripts=None, **kw):
        calls["bench"] = (path, quick, scripts)
        Path(path).write_text("# report")
        return Path(path)

    def fake_demo(backends=None, out=None, quiet=False):
        calls["demo"] = (backends, out, quiet)
        return Path(out)

    monkeypatch.setattr(report, "write_bench_report", fake_report)
    monkeypatch.setattr(demo, "run", fake_demo)
    target = tmp_path / "REPORT.md"
    code, stdout, _ = _run(capsys, "bench", "--quick", "--scripts", "kernels", "--out", target)
    assert code == 0 and calls["bench"] == (target, True, ["kernels"]) and str(target) in stdout
    code, _, err = _run(capsys, "bench", "--out", target)
    assert code == 2 and "--overwrite" in _one_line_error(err)
    calls.clear()
    code, _, err = _run(capsys, "bench", "--out", target / "REPORT.md")  # under a file
    assert code == 2 and str(target) in _one_line_error(err) and "bench" not in calls
    code, _, _ = _run(capsys, "demo", "--backend", FAST, "--out", tmp_path / "d", "-q")
    assert code == 0 and calls["demo"] == ([FAST], tmp_path / "d", True)


# ---------------------------------------------------------------------------- console script


def test_console_script_end_to_end(data, tmp_path):
    script = shutil.which("multireg", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the multireg console script is not installed")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run(
        [script, "register", data["T.npy"], data["R.npy"], "--backend", FAST, "--out", out],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "status converged" in ok.stdout and (out / "warped.npy").exists()
    bad = subprocess.run(
        [script, "register", tmp_path / "nope.npy", data["R.npy"], "--out", out],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("multireg: error: ") and "nope.npy" in bad.stderr


def _into_a_closed_pipe(*argv, tmp_path) -> subprocess.CompletedProcess:
    """``python -m multireg ARGV | head -0``: stdout a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "multireg", *map(str, argv)], stdout=write,
            stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    finally:
        os.close(write)


def test_a_closed_stdout_stops_quietly(data, tmp_path):
    out = tmp_path / "out"
    run = _into_a_closed_pipe("register", data["T.npy"], data["R.npy"], "--transform",
                              "translation", "--levels", "1", "--backend", FAST, "--out", out,
                              tmp_path=tmp_path)  # fmt: skip
    assert (run.returncode, run.stderr) == (cli.EXIT_STDOUT_CLOSED, "")
    assert sorted(os.listdir(out)) == ["result.json", "warped.npy"]  # written before the summary
    run = _into_a_closed_pipe("register", "--help", tmp_path=tmp_path)
    assert (run.returncode, run.stderr) == (0, "")  # argparse ignores a failed write of its help


@pytest.mark.slow
def test_register_many_into_a_closed_stdout_finishes_every_pair(tmp_path):
    """A batch is not cancelled because the reader of its progress lines left."""
    manifest = _manifest(tmp_path, n=2)
    run = _into_a_closed_pipe("register-many", manifest, "--transform", "translation",
                              "--levels", "1", "--backend", FAST, "--workers", "1",
                              "--out", tmp_path / "out", tmp_path=tmp_path)  # fmt: skip
    assert (run.returncode, run.stderr) == (cli.EXIT_OK, "")
    rows = _summary_csv(tmp_path / "out" / "summary.csv")
    assert [r["status"] for r in rows] == ["converged", "converged"]
    assert all((tmp_path / "out" / r["id"] / "result.json").exists() for r in rows)


def test_a_broken_pipe_elsewhere_is_still_an_error(data, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):  # a worker's or a socket's pipe, not stdout's
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "stdout_closed", lambda: False)
    monkeypatch.setattr(multireg, "register", broken)
    code, _, err = _run(capsys, "register", data["T.npy"], data["R.npy"], "--out", tmp_path)
    assert code == cli.EXIT_ERROR and "BrokenPipeError" in _one_line_error(err)


def test_an_interrupt_before_the_command_line_handler_exits_130(monkeypatch, capsys):
    import multireg.__main__ as entry

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    assert entry.main(["register", "a.npy", "b.npy"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_homotopy_with_a_theta_range_and_one_start(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "homotopy", data["T.npy"], data["R.npy"], "--transform", "affine",
        "--theta-range", "10,0.01", "--n-steps", "4", "--backend", FAST, "--out", out, "-q",
    )  # fmt: skip
    assert code in (0, 3), err
    result = _result(out)
    assert np.allclose(result["path"]["theta"][0], 10) and result["theta_max"]["how"] == "given"


# ---------------------------------------------------------------------------- register-many


def _manifest(folder: Path, n: int = 3, *, bad: bool = False, labels: bool = False) -> Path:
    """n pairs of 24² .npy images (R = T shifted), paths relative to the manifest; with
    ``bad`` the second reference has a NaN (that pair fails), with ``labels`` label maps
    (the blobs thresholded) for every pair."""
    rows = ["template,reference,id" + (",template_labels,reference_labels" if labels else "")]
    T, dom = blobs((24, 24), (0, 24, 0, 24), seed=5)
    for i in range(n):
        R = _warp(T, dom, dom.cell_centers() + np.array([1.0 + 0.3 * i, -0.5]))
        if bad and i == 1:
            R[2, 3] = np.nan
        np.save(folder / f"T{i}.npy", T)
        np.save(folder / f"R{i}.npy", R)
        row = f"T{i}.npy,R{i}.npy,s{i}"
        if labels:
            np.save(folder / f"LT{i}.npy", (T > 0.4 * T.max()).astype(np.int16))
            np.save(folder / f"LR{i}.npy", (R > 0.4 * np.nanmax(R)).astype(np.int16))
            row += f",LT{i}.npy,LR{i}.npy"
        rows.append(row)
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def _summary_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_register_many_shares_register_s_options_and_documents_exit_5(capsys):
    commands = _subparsers(cli.build_parser())
    dests = {
        name: {a.dest for g in sub._action_groups if g.title in ("model", "solver")
               for a in g._group_actions}
        for name, sub in commands.items() if name in ("register", "register-many")
    }  # fmt: skip
    assert dests["register"] and dests["register"] == dests["register-many"]
    with pytest.raises(SystemExit):
        main(["register-many", "--help"])
    text = capsys.readouterr().out
    for word in ("summary.csv", "--scheduler", "--workers", "template_labels", "5 ", "Ctrl-C"):
        assert word in text, word
    flat = " ".join(text.split())
    for words in (
        "result.json",
        "displacement.npz",
        "a pair already running on a Dask worker "
        "cannot be stopped from here: it may still complete and write its folder",
    ):
        assert words in flat, words  # fmt: skip


def test_register_many_writes_each_pair_and_a_summary(tmp_path, capsys, monkeypatch):
    import concurrent.futures as cf

    import multireg.workflow.many

    # threads instead of spawned processes: this test is about the command, not the pool (the
    # process pool is exercised by the Ctrl-C test below and in test_many.py)
    monkeypatch.setattr(multireg.many, "_default_executor", lambda n: cf.ThreadPoolExecutor(n))
    manifest = _manifest(tmp_path, bad=True, labels=True)
    out = tmp_path / "out"
    argv = ["register-many", manifest, "--transform", "translation", "--levels", "1",
            "--backend", FAST, "--workers", "1", "--out", out]  # fmt: skip
    code, stdout, err = _run(capsys, *argv)
    assert code == cli.EXIT_PAIRS_FAILED, err  # one pair failed: the others are written
    rows = {r["id"]: r for r in _summary_csv(out / "summary.csv")}
    assert sorted(rows) == ["s0", "s1", "s2"]
    assert rows["s1"]["status"] == "failed" and "NaN" in rows["s1"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["s0", "s2", "summary.csv"]
    assert len([line for line in stdout.splitlines() if line.startswith("[")]) == 3
    assert "1 of 3 pairs failed" in err
    for i in (0, 2):  # the same numbers as one `register` call per pair
        T, R = (np.load(tmp_path / f"{k}{i}.npy") for k in "TR")
        ref = multireg.register(T, R, (0, 24, 0, 24), transform="translation", levels=None,
                                backend=FAST)  # fmt: skip
        row = rows[f"s{i}"]
        assert row["status"] == ref.status.value and row["backend"] == FAST
        assert float(row["distance"]) == pytest.approx(ref.distance, rel=1e-8)
        warped = np.load(out / f"s{i}" / "warped.npy")
        np.testing.assert_allclose(warped, multireg.get_backend(FAST).to_numpy(ref.warped),
                                   rtol=0, atol=1e-12)  # fmt: skip
        assert float(row["dice"]) > float(row["dice_before"])  # the labels moved into place
    # an existing summary is not replaced without --overwrite, before any work
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "--overwrite" in _one_line_error(err)


def test_register_many_bad_manifest_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import multireg.workflow.many

    def no_work(*args, **kwargs):
        raise AssertionError("register_many was called")

    monkeypatch.setattr(multireg.many, "register_many", no_work)
    manifest = _manifest(tmp_path, n=2)
    out = tmp_path / "out"

    def error_of(text: str, *extra) -> str:
        path = tmp_path / "m.csv"
        path.write_text(text)
        code, _, err = _run(capsys, "register-many", path, "--out", out, *extra)
        assert code == 2 and not out.exists()
        return _one_line_error(err)

    error = error_of("")
    assert "m.csv" in error and "empty" in error
    assert "empty" in error_of("template,reference\n")
    assert "'reference'" in error_of("template,refrence\nT0.npy,R0.npy\n")
    assert "'extra'" in error_of("template,reference,extra\nT0.npy,R0.npy,1\n")
    error = error_of("template,reference\nT0.npy,R0.npy\nT1.npy,nope.npy\n")
    assert "line 3" in error and "nope.npy" in error
    assert "repeat" in error_of("template,reference,id\nT0.npy,R0.npy,a\nT1.npy,R1.npy,a\n")
    assert "folder" in error_of("template,reference,id\nT0.npy,R0.npy,../a\n")
    assert "together" in error_of("template,reference,template_labels\nT0.npy,R0.npy,T1.npy\n")
    code, _, err = _run(capsys, "register-many", tmp_path / "missing.csv", "--out", out)
    assert code == 2 and "missing.csv" in _one_line_error(err)
    code, _, err = _run(capsys, "register-many", manifest, "--workers", "1", "--scheduler", "x")
    assert code == 2 and "not allowed with" in _one_line_error(err)
    code, _, err = _run(capsys, "register-many", manifest, "--transform", "bspline", "--out", out)
    assert code == 2 and "--p" in _one_line_error(err) and not out.exists()  # not N failed rows
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "summary.csv").write_text("old")
    code, _, err = _run(capsys, "register-many", manifest, "--out", tmp_path / "o2")
    assert code == 2 and "--overwrite" in _one_line_error(err)
    assert (tmp_path / "o2" / "summary.csv").read_text() == "old"
    (tmp_path / "o2" / "s0").mkdir()  # an earlier nonparametric run's pair folder
    np.savez(tmp_path / "o2" / "s0" / "displacement.npz", displacement=np.zeros(3))
    code, _, err = _run(capsys, "register-many", manifest, "--out", tmp_path / "o2", "--overwrite")
    assert code == 2 and "displacement.npz" in _one_line_error(err)  # not a folder of two runs
    (tmp_path / "o2" / "s0" / "displacement.npz").unlink()
    np.save(tmp_path / "o2" / "s0" / "y_grid.npy", np.zeros(3))  # an older multireg's
    code, _, err = _run(capsys, "register-many", manifest, "--out", tmp_path / "o2", "--overwrite")
    assert code == 2 and "y_grid.npy" in _one_line_error(err)


def test_register_many_ctrl_c_cancels_and_leaves_no_partial_folder(tmp_path, capsys, monkeypatch):
    import multireg.workflow.many

    real = multireg.register_many

    def interrupted_after_the_first_pair(jobs, *, progress, **kwargs):
        def then_interrupt(done, total, result):
            progress(done, total, result)
            raise KeyboardInterrupt

        return real(jobs, progress=then_interrupt, **kwargs)

    monkeypatch.setattr(multireg.many, "register_many", interrupted_after_the_first_pair)
    manifest = _manifest(tmp_path, n=4)
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys, "register-many", manifest, "--transform", "affine", "--backend", FAST,
        "--workers", "1", "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 130 and "interrupted" in err and stdout == ""
    rows = _summary_csv(out / "summary.csv")
    done = [r["id"] for r in rows if r["status"] != "cancelled"]
    assert len(done) == 1 and [r["status"] for r in rows].count("cancelled") == 3
    assert sorted(p.name for p in out.iterdir()) == sorted([*done, "summary.csv"])
    assert sorted(p.name for p in (out / done[0]).iterdir()) == ["result.json", "warped.npy"]


@pytest.mark.parametrize(
    "model", [["--transform", "translation"], ["--transform", "nonparametric", "--alpha", "10"]]
)
def test_register_many_pair_folders_hold_what_register_writes(tmp_path, capsys, monkeypatch, model):
    import concurrent.futures as cf

    import multireg.workflow.many
    from multireg.workflow.apply import Map

    monkeypatch.setattr(multireg.many, "_default_executor", lambda n: cf.ThreadPoolExecutor(n))
    manifest = _manifest(tmp_path, n=1, labels=True)
    options = [*model, "--levels", "1", "--max-iter", "5", "--backend", FAST, "--quiet"]
    many, one = tmp_path / "many", tmp_path / "one"
    code, _, err = _run(capsys, "register-many", manifest, *options, "--workers", "1",
                        "--out", many)  # fmt: skip
    assert code in (cli.EXIT_OK, cli.EXIT_NOT_CONVERGED), err
    code, _, err = _run(capsys, "register", tmp_path / "T0.npy", tmp_path / "R0.npy", *options,
                        "--out", one)  # fmt: skip
    assert code in (cli.EXIT_OK, cli.EXIT_NOT_CONVERGED), err
    pair = many / "s0"
    assert sorted(p.name for p in pair.iterdir()) == sorted(p.name for p in one.iterdir())
    a, b = _result(pair), _result(one)
    assert a.keys() == b.keys()
    assert set(a["settings"]) == set(b["settings"]) - {"allow_oblique"}  # register's own option
    assert a["command"] == "register" and a["status"] == b["status"]
    assert a["distance"] == pytest.approx(b["distance"], rel=1e-10)
    assert a["outputs"] == {k: str(pair / Path(v).name) for k, v in b["outputs"].items()}
    np.testing.assert_allclose(np.load(pair / "warped.npy"), np.load(one / "warped.npy"),
                               rtol=0, atol=1e-12)  # fmt: skip
    Map.load(pair)  # 'multireg apply' reads a pair's folder as it reads register's
    (row,) = _summary_csv(many / "summary.csv")
    assert row["dice"] and not row["error"]  # the labels were warped with the written map


@pytest.mark.slow
def test_register_many_on_a_dask_scheduler(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    manifest = _manifest(tmp_path, n=2)
    out = tmp_path / "out"
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        code, _, err = _run(
            capsys, "register-many", manifest, "--transform", "translation", "--levels", "1",
            "--backend", FAST, "--scheduler", cluster.scheduler_address, "--out", out,
        )  # fmt: skip
    assert code == 0, err
    rows = _summary_csv(out / "summary.csv")
    assert [r["status"] for r in rows] == ["converged", "converged"]
    assert {r["backend"] for r in rows} == {FAST} and (out / "s1" / "warped.npy").exists()


# ---------------------------------------------------------------------------- default backend


def test_the_cli_default_backend_is_the_documented_one(data, tmp_path, capsys, monkeypatch):
    """Without --backend and MULTIREG_BACKEND a command runs on the first installed of
    CLI_BACKEND_PREFERENCE (torch: faster for a one-off process, issue 13), as --help says;
    MULTIREG_BACKEND and --backend override it."""
    monkeypatch.delenv("MULTIREG_BACKEND", raising=False)
    installed = [n for n in cli.CLI_BACKEND_PREFERENCE if n in AD_BACKENDS]
    expected = installed[0]
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"else the first installed of {', '.join(cli.CLI_BACKEND_PREFERENCE)}" in text
    assert cli.CLI_BACKEND_PREFERENCE[0] == "torch" and "API's default stays JAX" in text
    out = tmp_path / "default"
    code, _, err = _run(capsys, "register", data["T.npy"], data["R.npy"], "--transform",
                        "translation", "--out", out, "-q")  # fmt: skip
    assert code in (0, 3), err
    assert _result(out)["backend"] == expected
    if len(installed) < 2:
        return
    other = installed[1]
    _, args = cli.parse_command(["register", "a.npy", "b.npy"])
    monkeypatch.setenv("MULTIREG_BACKEND", other)
    assert cli._backend(None, args).name == other
    monkeypatch.setenv("MULTIREG_BACKEND", expected)
    _, args = cli.parse_command(["register", "a.npy", "b.npy", "--backend", other])
    assert cli._backend(None, args).name == other


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), {}),  # the library's default: identity, then coarse-to-fine
        (("--levels", "2"), {"levels": 2}),
        (("--init", "preregister"), {"w0": "ssd"}),
        (("--init", "identity"), {"w0": "identity"}),
        (("--no-fov",), {"fov": False}),
    ],
)
def test_dynamics_init_says_what_the_solver_gets(tmp_path, capsys, monkeypatch, argv, expected):
    """--init preregister once passed no w0 while the solver's default became the identity with
    coarse-to-fine levels: the flag's name no longer said what ran."""
    from multireg.problems import dynamics

    seen = {}

    def fake_solve(frames, times, omega, **options):
        seen.update(options)
        raise KeyboardInterrupt  # stop before any work; the CLI exits 130

    monkeypatch.setattr(dynamics, "solve", fake_solve)
    code, _, _ = _run(capsys, "dynamics", "--phantom", "--phantom-m", "16,16", "--n-frames", "3",
                      "--out", tmp_path / "o", "--backend", FAST, "-q", *argv)  # fmt: skip
    assert code == 130
    for key in ("w0", "levels", "fov"):
        assert seen.get(key, "absent") == expected.get(key, "absent"), key


@pytest.mark.parametrize(
    "argv",
    [
        ("--init", "identity", "--levels", "2"),
        ("--init", "preregister", "--motion", "nonparametric"),
    ],
)
def test_dynamics_init_conflicts_are_usage_errors(tmp_path, capsys, argv):
    code, _, err = _run(capsys, "dynamics", "--phantom", "--phantom-m", "16,16", "--n-frames", "3",
                        "--out", tmp_path / "o", "--backend", FAST, *argv)  # fmt: skip
    assert code == 2 and not (tmp_path / "o").exists(), err
