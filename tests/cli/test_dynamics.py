"""``multireg dynamics`` (multireg.cli.dynamics)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cli._helpers import (
    FAST,
    _one_line_error,
    _result,
    _run,
)
from tests.conftest import AD_BACKENDS

pytestmark = pytest.mark.skipif(not AD_BACKENDS, reason="the commands need torch or JAX")


def test_dynamics_phantom_and_frames_from_a_file(tmp_path, capsys):
    from multireg.problems import dynamics

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


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), {}),  # the library's default: identity, then coarse-to-fine
        (("--levels", "2"), {"levels": 2}),
        (("--init", "preregister"), {"w0": "ssd"}),
        (("--init", "identity"), {"w0": "identity"}),
        (("--no-fov",), {"fov": False}),
        (("--no-search",), {"search": False}),
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
    for key in ("w0", "levels", "fov", "search"):
        assert seen.get(key, "absent") == expected.get(key, "absent"), key


@pytest.mark.parametrize(
    "argv",
    [
        ("--init", "identity", "--levels", "2"),
        ("--init", "preregister", "--motion", "nonparametric"),
        ("--init", "preregister", "--no-search"),
    ],
)
def test_dynamics_init_conflicts_are_usage_errors(tmp_path, capsys, argv):
    code, _, err = _run(capsys, "dynamics", "--phantom", "--phantom-m", "16,16", "--n-frames", "3",
                        "--out", tmp_path / "o", "--backend", FAST, *argv)  # fmt: skip
    assert code == 2 and not (tmp_path / "o").exists(), err
