"""Figures: each writes a readable image of the documented size; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib.image as mpimg
from matplotlib.figure import Figure

from multireg import gridops
from multireg.data import blobs
from multireg.grid import Domain
from multireg.optimize import Record, Result, Status
from multireg.problems.homotopy import HomotopyResult, PathPoint
from multireg.problems.registration import LevelResult, RegistrationResult
from multireg.workflow import figures

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
    read(figures.superres_figure(f, frame, f * 0.9, f, tmp_path / "s.png"), (14, 3.8))
    read(figures.superres_figure(None, frame, f * 0.9, f, tmp_path / "s2.png"), (14, 3.8))


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


# ------------------------------------------------------------------ what a figure shows


@pytest.fixture
def panels(monkeypatch):
    """Render each figure before it is written; collect, per axes that shows an image, its
    rendered pixels (the axes' area of the canvas buffer) and what a reader needs around it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    shots: list[dict] = []
    real = figures._save

    def spy(fig, path, dpi):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgb = np.asarray(canvas.buffer_rgba())[..., :3] / 255.0
        height = rgb.shape[0]
        colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        shots.clear()
        for ax in fig.axes:
            if ax in colorbars:
                continue
            box = ax.get_window_extent()
            rows = slice(int(np.ceil(height - box.y1)) + 2, int(height - box.y0) - 2)
            cols = slice(int(np.ceil(box.x0)) + 2, int(box.x1) - 2)
            shots.append(
                {
                    "pixels": rgb[rows, cols],
                    "image": bool(ax.images),
                    "title": ax.get_title(),
                    "colorbar": bool(ax.images) and ax.images[0].colorbar is not None,
                    "xticks": [t.get_text() for t in ax.get_xticklabels() if t.get_text()],
                    "yticks": [t.get_text() for t in ax.get_yticklabels() if t.get_text()],
                    "labels": (ax.get_xlabel(), ax.get_ylabel()),
                    "lines": [(line.get_xdata(), line.get_ydata()) for line in ax.lines],
                    "y_inverted": ax.yaxis_inverted(),
                }
            )
        return real(fig, path, dpi)

    monkeypatch.setattr(figures, "_save", spy)
    return shots


def picture(rows=30, cols=45):
    """A picture as a file holds it: rows top to bottom, a bright block in the top-left corner
    (rows 2–8, columns 2–8) and a dimmer bar along the top row, so that every flip or transpose
    shows."""
    img = np.zeros((rows, cols))
    img[2:9, 2:9] = 1.0
    img[0, 10:] = 0.5
    return img


def where_is_the_block(pixels):
    """The bright block's centre as fractions of the panel's (height, width), from the top left."""
    r, c = np.nonzero(pixels.mean(axis=-1) > 0.9)
    assert r.size, "the block is not drawn"
    return r.mean() / pixels.shape[0], c.mean() / pixels.shape[1]


def test_image_orientation_shows_the_array_as_the_file_looks(tmp_path, panels):
    img = picture()  # what Pillow (and multireg.io.read_image) gives for a PNG: row = x1
    figures.overlay(img, img, tmp_path / "o.png")
    for shot in panels:
        h, w = shot["pixels"].shape[:2]
        assert w / h == pytest.approx(45 / 30, rel=0.05)  # wide, as the file
        assert where_is_the_block(shot["pixels"]) == pytest.approx((5.5 / 30, 5.5 / 45), abs=0.03)
        assert shot["labels"] == ("x₂", "x₁")
    # a file read from disk looks the same
    pil = pytest.importorskip("PIL.Image")
    from multireg import io

    pil.fromarray((255 * img).astype(np.uint8)).save(tmp_path / "pic.png")
    read = io.read_image(tmp_path / "pic.png")
    figures.overlay(read.data, read.data, tmp_path / "o2.png", omega=read.omega)
    assert where_is_the_block(panels[0]["pixels"]) == pytest.approx((5.5 / 30, 5.5 / 45), abs=0.03)


def test_xy_orientation_shows_fair_arrays_as_the_file_looks(tmp_path, panels):
    fair = picture()[::-1].T  # FAIR's flipud(img)': x1 to the right, x2 up
    figures.overlay(fair, fair, tmp_path / "o.png", orientation="xy")
    h, w = panels[0]["pixels"].shape[:2]
    assert w / h == pytest.approx(45 / 30, rel=0.05)
    assert where_is_the_block(panels[0]["pixels"]) == pytest.approx((5.5 / 30, 5.5 / 45), abs=0.03)
    assert panels[0]["labels"] == ("x₁", "x₂")
    # the same FAIR array in the image orientation is the file turned by 90°
    figures.overlay(fair, fair, tmp_path / "o2.png")
    h, w = panels[0]["pixels"].shape[:2]
    assert w / h == pytest.approx(30 / 45, rel=0.05)


def test_registration_figure_and_grid_follow_the_orientation(tmp_path, panels):
    T, R, res = parametric_result()
    figures.registration_figure(T, R, res, tmp_path / "r.png")
    images = [p for p in panels if p["image"]]
    assert all(p["labels"] == ("x₂", "x₁") and p["y_inverted"] for p in images)
    # the grid panel: a line of constant i1 (a row) runs across, as the rows of the picture do
    grid = next(p for p in panels if p["lines"] and p["image"])
    x, y = grid["lines"][0]
    assert np.ptp(x) > 0.5 and np.ptp(y) < 0.1  # y(x) is close to the identity here
    figures.deformed_grid(res.y, res.levels[-1].domain, tmp_path / "g.png", orientation="xy")
    x, y = panels[0]["lines"][0]
    assert np.ptp(y) > 0.5 and np.ptp(x) < 0.1 and not panels[0]["y_inverted"]


def test_superres_panels_have_titles_ticks_and_colour_bars(tmp_path, panels):
    f, _ = blobs((32, 32), seed=2)
    figures.superres_figure(f, f[::2, ::2], f * 0.9, f, tmp_path / "s.png")
    images = [p for p in panels if p["image"]]
    assert len(images) == 4
    for p in images:
        assert p["title"] and p["colorbar"] and p["xticks"] and p["yticks"], p["title"]
    figures.superres_figure(None, f[::2, ::2], f * 0.9, f, tmp_path / "s2.png")
    assert sum(p["image"] for p in panels) == 3


def test_dynamics_figure_has_a_title_and_image_panels_with_colour_bars(tmp_path, panels):
    t = np.linspace(0, 30, 13)
    truth = {"cortex": np.sin(t / 10), "medulla": 1 - np.exp(-t / 10)}
    f, _ = blobs((24, 24), seed=3)
    images = {"frame 6, before": f, "frame 6, motion-corrected": f[::-1]}
    path = figures.dynamics_curves(t, truth, truth, tmp_path / "d.png", images=images)
    read(path, (16, 5))
    curves = [p for p in panels if not p["image"]]
    assert len(curves) == 1 and "time curves" in curves[0]["title"] and curves[0]["xticks"]
    shown = [p for p in panels if p["image"]]
    assert [p["title"] for p in shown] == list(images)
    assert all(p["colorbar"] and p["xticks"] and p["yticks"] for p in shown)


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
    with pytest.raises(ValueError, match="orientation must be one of 'image', 'xy'"):
        figures.overlay(T, R, out, orientation="rows")
    with pytest.raises(TypeError, match="images must be None or a mapping"):
        figures.dynamics_curves([0, 1], None, {"cortex": [1, 2]}, out, images=[T])
    with pytest.raises(ValueError, match=r"images\['a'\] must be a 2D or 3D image"):
        figures.dynamics_curves([0, 1], None, {"cortex": [1, 2]}, out, images={"a": T[0]})
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
