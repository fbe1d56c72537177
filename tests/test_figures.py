"""Figures: each writes a readable image of the documented size; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib.image as mpimg
from matplotlib.figure import Figure

from multireg import figures, gridops
from multireg.data import blobs
from multireg.grid import Domain
from multireg.homotopy import HomotopyResult, PathPoint
from multireg.optimize import Record, Result, Status
from multireg.registration import LevelResult, RegistrationResult

M = (24, 20)
OMEGA = (0.0, 1.2, 0.0, 1.0)


def read(path, size_in, dpi=100):
    """The PNG read back; its pixel size must be the documented figure size times dpi."""
    img = mpimg.imread(path)
    assert img.shape[:2] == (round(size_in[1] * dpi), round(size_in[0] * dpi))
    assert img.std() > 0  # something was drawn
    return img


def history(n, start=1.0):
    return tuple(
        Record(k, start * 0.1**k, 0.5**k, 0.1, 1.0, 0, 0.01 * k) for k in range(n)
    )  # fmt: skip


def level_result(stage, domain, x, n):
    res = Result(x, 0.1, 0.01, n - 1, n, Status.CONVERGED, "ok", history(n))
    return LevelResult(stage, domain, res, 0.1)


def parametric_result():
    """A registration result made by hand (no solver run): a small affine map."""
    T, domain = blobs(M, OMEGA, seed=1)
    w = np.array([1.02, 0.03, -0.02, -0.01, 0.98, 0.01])
    x = domain.cell_centers()
    y = np.column_stack([x @ w[:2] + w[2], x @ w[3:5] + w[5]])
    coarse = domain.coarsen()
    levels = (level_result("parametric", coarse, w, 4), level_result("parametric", domain, w, 3))
    res = RegistrationResult(w, y, None, T * 0.9, 0.01, 0.05, levels, "affine", "numpy")
    return T, T[::-1].copy(), res


def nonparametric_result():
    T, R, res = parametric_result()
    domain = res.levels[-1].domain
    y_grid = gridops.identity_grid(domain, "staggered")
    y_grid = y_grid + 0.002 * np.sin(np.arange(y_grid.size))
    y = gridops.to_cell_centers(y_grid, domain, "staggered")
    return T, R, RegistrationResult(
        res.w, y.reshape(-1, 2, order="F"), y_grid, res.warped, 0.01, 0.05, res.levels,
        "nonparametric", "numpy", det_min=0.9,
    )  # fmt: skip


def homotopy_result(jump=False):
    thetas = np.geomspace(10, 1e-3, 6)
    path = tuple(
        PathPoint(float(t), np.array([1.0 + 0.01 * k, 0.1 * k]), 1e-3 / (k + 1), 1e-10, 3,
                  np.nan if k == 0 else 0.01, Status.CONVERGED, jump=jump and k == 3)
        for k, t in enumerate(thetas)
    )  # fmt: skip
    return HomotopyResult(
        path[-1].w, np.zeros(M), path[-1].fun, float(thetas[-1]), path, 18, 0,
        Status.CONVERGED, "ok", None, "numpy",
    )  # fmt: skip


# ------------------------------------------------------------------ each figure


def test_overlay_before_and_after(tmp_path):
    T, R, res = parametric_result()
    path = figures.overlay(T, R, tmp_path / "o.png", warped=res.warped, omega=OMEGA)
    assert path == tmp_path / "o.png"
    read(path, (8, 8))
    read(figures.overlay(T, R, tmp_path / "o1.png"), (8, 4))
    read(figures.overlay(T, R, str(tmp_path / "o2.png"), dpi=50), (8, 4), dpi=50)


def test_overlay_of_a_volume_shows_a_slice(tmp_path):
    T = np.random.default_rng(0).random((8, 9, 10))
    read(figures.overlay(T, T + 1, tmp_path / "v.png"), (8, 4))


def test_deformed_grid_and_jacobian_map(tmp_path):
    T, _, res = nonparametric_result()
    domain = res.levels[-1].domain
    read(figures.deformed_grid(res.y, domain, tmp_path / "g.png", every=3, image=T), (6, 6))
    flat = np.concatenate([res.y[:, 0], res.y[:, 1]])  # the stacked cell-centred vector
    read(figures.deformed_grid(flat, domain, tmp_path / "g2.png"), (6, 6))
    read(figures.jacobian_map(res.y_grid, domain, tmp_path / "j.png"), (6.5, 5.5))
    read(figures.jacobian_map(res.y, domain, tmp_path / "j2.png"), (6.5, 5.5))


def test_jacobian_determinant_shown_is_the_maps():
    domain = Domain(OMEGA, M)
    x = domain.cell_centers()
    det = figures._determinant(x, domain, None)
    np.testing.assert_allclose(det, 1.0, atol=1e-12)
    mirrored = np.column_stack([1.2 - x[:, 0], x[:, 1]])  # a reflection folds everything
    np.testing.assert_allclose(figures._determinant(mirrored, domain, None), -1.0, atol=1e-12)
    nodal = gridops.identity_grid(domain, "nodal") * 2.0
    np.testing.assert_allclose(figures._determinant(nodal, domain, None), 4.0, atol=1e-12)


def test_folded_map_draws(tmp_path):
    domain = Domain(OMEGA, M)
    x = domain.cell_centers()
    y = x.copy()
    y[:, 0] = x[:, 0] + 0.3 * np.sin(6 * x[:, 0])  # det < 0 where cos(6 x1) < -1/1.8
    assert np.any(figures._determinant(y, domain, None) <= 0)
    read(figures.jacobian_map(y, domain, tmp_path / "fold.png"), (6.5, 5.5))


def test_convergence_from_results_and_histories(tmp_path):
    _, _, res = parametric_result()
    read(figures.convergence(res, tmp_path / "c.png"), (10, 4))
    read(figures.convergence(res.levels[0].result, tmp_path / "c1.png"), (10, 4))
    read(figures.convergence(history(5), tmp_path / "c2.png"), (10, 4))
    read(figures.convergence([history(3), history(4)], tmp_path / "c3.png"), (10, 4))
    read(figures.convergence(homotopy_result(), tmp_path / "c4.png"), (10, 4))


def test_homotopy_path(tmp_path):
    read(figures.homotopy_path(homotopy_result(jump=True), tmp_path / "h.png"), (12, 4))


def test_superres_figure(tmp_path):
    f, _ = blobs((32, 32), seed=2)
    frame = f[::2, ::2]
    read(figures.superres_figure(f, frame, f * 0.9, f, tmp_path / "s.png"), (12, 3.5))
    read(figures.superres_figure(None, frame, f * 0.9, f, tmp_path / "s2.png"), (12, 3.5))


def test_dynamics_curves(tmp_path):
    t = np.linspace(0, 30, 13)
    truth = {"cortex": np.sin(t / 10), "medulla": 1 - np.exp(-t / 10)}
    found = {k: v + 0.01 for k, v in truth.items()}
    read(figures.dynamics_curves(t, truth, found, tmp_path / "d.png"), (8, 5))
    methods = {"coupled": found, "frame by frame": {k: v - 0.05 for k, v in truth.items()}}
    read(figures.dynamics_curves(t, None, methods, tmp_path / "d2.png"), (8, 5))


def test_registration_figure_parametric_and_nonparametric(tmp_path):
    T, R, res = parametric_result()
    read(figures.registration_figure(T, R, res, tmp_path / "r.png"), (10, 9))
    T, R, res = nonparametric_result()
    read(figures.registration_figure(T, R, res, tmp_path / "r2.png"), (10, 9))
    path = figures.registration_figure(T, R, res, tmp_path / "r2.pdf")
    assert path.read_bytes().startswith(b"%PDF")


# ------------------------------------------------------------------ bad input and writing


def test_bad_input_is_refused(tmp_path):
    T, R, res = parametric_result()
    domain = res.levels[-1].domain
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match="shape"):
        figures.overlay(T, R[:-1], out)
    with pytest.raises(ValueError, match="2D or 3D"):
        figures.overlay(T[0], R[0], out)
    with pytest.raises(TypeError, match="T must be an array"):
        figures.overlay([[1, 2]], R, out)
    with pytest.raises(ValueError, match="y must have shape"):
        figures.deformed_grid(res.y[:-1], domain, out)
    with pytest.raises(TypeError, match="domain"):
        figures.deformed_grid(res.y, OMEGA, out)
    with pytest.raises(ValueError, match="every"):
        figures.deformed_grid(res.y, domain, out, every=0)
    with pytest.raises(ValueError, match="entries"):
        figures.jacobian_map(np.zeros(7), domain, out)
    with pytest.raises(ValueError, match="kind"):
        figures.jacobian_map(res.y, domain, out, kind="diagonal")
    with pytest.raises(ValueError, match="shape"):
        figures.superres_figure(T, T, T, T[:-1], out)
    with pytest.raises(ValueError, match=r"recovered\['cortex'\] has 3 values"):
        figures.dynamics_curves([0, 1], None, {"cortex": [1, 2, 3]}, out)
    with pytest.raises(TypeError, match="history_or_result"):
        figures.convergence(42, out)
    with pytest.raises(TypeError, match="HomotopyResult"):
        figures.homotopy_path(res, out)
    with pytest.raises(TypeError, match="RegistrationResult"):
        figures.registration_figure(T, R, res.levels[0], out)
    with pytest.raises(ValueError, match="but the result is on"):
        figures.registration_figure(T[:-2], R[:-2], res, out)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        figures.overlay(T, R, tmp_path / "missing" / "x.png")
    with pytest.raises(ValueError, match="suffix"):
        figures.overlay(T, R, tmp_path / "x.unknown")
    with pytest.raises(ValueError, match="dpi"):
        figures.overlay(T, R, out, dpi=0)
    assert list(tmp_path.iterdir()) == []  # nothing written by a refused call


def test_interrupted_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    T, R, _ = parametric_result()
    target = tmp_path / "o.png"
    target.write_bytes(b"the previous figure")

    def interrupted(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        figures.overlay(T, R, target)
    assert target.read_bytes() == b"the previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]
