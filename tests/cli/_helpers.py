"""What the command-line tests share: running main, reading its outputs, small makers of inputs."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import multireg
from multireg.cli import main
from multireg.data import blobs
from tests.conftest import AD_BACKENDS

# One backend for the tests that check wiring rather than numbers: torch runs small problems
# without compiling (JAX compiles every new configuration, seconds each).
FAST = "torch" if "torch" in AD_BACKENDS else (AD_BACKENDS[0] if AD_BACKENDS else None)
SHIFT = np.array([2.5, -1.5])  # pixels
SHIFT_3D = np.array([1.2, -0.8, 1.5])  # mm


def _warp(T, domain, y):
    c = multireg.spline_coefficients(T)
    return np.asarray(multireg.spline_interpolate(c, domain, y)).reshape(domain.m)


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


class _Captured(Exception):
    """Raised by a stand-in for multireg.register once it has recorded its arguments."""


def _capture_register(monkeypatch) -> list[dict]:
    """register replaced by a stand-in that records its keyword arguments and stops the run
    (the wiring is under test, not the solver): the facade's, which ``multireg register``
    calls, and the problem module's, which register-many's workers call."""
    import multireg.problems.registration

    calls: list[dict] = []

    def register(T, R, omega, **kwargs):
        calls.append(kwargs)
        raise _Captured("recorded")

    monkeypatch.setattr(multireg, "register", register)
    monkeypatch.setattr(multireg.problems.registration, "register", register)
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


def _has_figures() -> bool:
    try:
        import matplotlib  # noqa: F401

        from multireg.workflow import figures
    except ImportError:
        return False
    return hasattr(figures, "registration_figure")


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
