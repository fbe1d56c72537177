"""Figures of registration results: overlays, deformed grids, Jacobian maps, convergence, paths.

Every function takes the file ``path`` to write (the format from its suffix: ``.png``, ``.pdf``,
``.svg``, ...), writes it atomically (a temporary file in the same folder, then a rename) and
returns it as a :class:`pathlib.Path`. The figures are matplotlib ``Figure`` objects made without
pyplot, so nothing is left open, no GUI backend is touched and the caller's pyplot state is not
changed. The pixel size of a raster file is the documented figure size (inches) times ``dpi``.

Orientation: an image array is indexed ``[i1, i2]`` along ``(x1, x2)`` (DESIGN.md §4). Every
function that draws an image takes ``orientation``:

``"image"`` (the default)
    x1 down, x2 to the right, the first row at the top: the array looks as NumPy, Pillow and an
    image viewer show it. :func:`multireg.io.read_image` reads a PNG, JPEG or TIFF with the row
    index as x1 and the column index as x2, so its figures look like the file; the same holds for
    ``.npy``/``.npz`` arrays and for everything the demo and the synthetic data make.
``"xy"``
    x1 to the right, x2 upwards, the origin at the bottom left (FAIR's ``viewImage2D``). This is
    for arrays in FAIR's orientation, ``flipud(img).T`` (:func:`multireg.data.load_fair`): they
    look like the file only this way (with ``"image"`` they appear rotated by 90°). It is also how
    a NIfTI viewer shows an axial slice in the neurological convention (x to the right, y up;
    :func:`multireg.io.read_image` orders NIfTI axes so that the index grows with the world
    coordinate).

The array carries no mark of its convention, so the caller chooses; the axes are labelled x₁ and
x₂ so that a wrong choice is visible. The axes span the domain ``omega`` when it is known (else
the cell indices). Of a 3D volume the figures show the middle slice across x3 (x1 and x2 as
above).

Host-side plotting code: arrays of any framework are brought to NumPy first. matplotlib is the
optional extra ``plot`` (``pip install "multireg[plot]"``).

The views are FAIR's (Modersitzki, *FAIR*, SIAM 2009: §2.4 ``viewImage``, §3.4 ``plotGrid``,
§8.3 the Jacobian determinant as a measure of volume change and folding, §6.6 the iteration
history ``his``); the false-colour overlay is the usual magenta/green fusion (template magenta,
reference green, agreement grey), the checkerboard alternates tiles of the two images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multireg import _checks, gridops
from multireg.grid import Domain

__all__ = [
    "convergence",
    "deformed_grid",
    "dynamics_curves",
    "homotopy_path",
    "jacobian_map",
    "overlay",
    "registration_figure",
    "superres_figure",
]

ORIENTATIONS = ("image", "xy")
"""How an ``[i1, i2]`` array is drawn: x1 down and x2 right (``"image"``), or x1 right and x2 up
(``"xy"``, FAIR's); see the module docstring."""

# figure sizes in inches (pixels = inches × dpi)
SIZES = {
    "overlay": (8.0, 8.0),
    "overlay_single": (8.0, 4.0),
    "deformed_grid": (6.0, 6.0),
    "jacobian_map": (6.5, 5.5),
    "convergence": (10.0, 4.0),
    "homotopy_path": (12.0, 4.0),
    "superres_figure": (14.0, 3.8),
    "dynamics_curves": (8.0, 5.0),
    "registration_figure": (10.0, 9.0),
}


# ---------------------------------------------------------------------------------- helpers


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError('figures need matplotlib: pip install "multireg[plot]"') from None
    return matplotlib


def _figure(kind: str) -> Any:
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=SIZES[kind], layout="constrained")


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, not {type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: the folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a folder; give a file name")
    fmt = path.suffix[1:].lower()
    _matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"path {str(path)!r}: the suffix must name an image format ({', '.join(supported)})"
        )
    return path


def _check_dpi(dpi: Any) -> float:
    dpi = _checks.positive("dpi", dpi)
    if dpi > 1200:
        raise ValueError(f"dpi must be at most 1200, got {dpi}")
    return dpi


def _save(fig: Any, path: Path, dpi: float) -> Path:
    """Write atomically: the figure goes to a temporary file next to ``path``, then replaces it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format=path.suffix[1:].lower())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        fig.clear()
    return path


def _image(name: str, x: Any) -> np.ndarray:
    """A 2D or 3D real image as float64 NumPy (3D: the middle slice across x3)."""
    a = _checks.host_image(name, x).astype(np.float64)
    return a[:, :, a.shape[2] // 2] if a.ndim == 3 else a


def _same_shape(names: Sequence[str], *arrays: Any) -> None:
    shapes = [tuple(getattr(a, "shape", ())) for a in arrays]
    for n, s in zip(names[1:], shapes[1:]):
        if s != shapes[0]:
            raise ValueError(f"{names[0]} has shape {shapes[0]} but {n} has shape {s}")


def _normalise(a: np.ndarray) -> np.ndarray:
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros_like(a)
    lo, hi = float(np.min(finite)), float(np.max(finite))
    return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)


def _extent(omega: Any, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    if omega is None:
        return (0.0, float(shape[0]), 0.0, float(shape[1]))
    omega = tuple(float(v) for v in omega)
    if len(omega) not in (4, 6):
        raise ValueError(f"omega must have 4 or 6 entries, got {len(omega)}")
    return omega[:4]


def _orientation(orientation: Any) -> str:
    return _checks.choice("orientation", orientation, ORIENTATIONS)


def _axes(ax: Any, extent: Any, orientation: str) -> None:
    """Limits and labels of a panel over the domain box ``extent = (a1, b1, a2, b2)``."""
    a1, b1, a2, b2 = extent
    if orientation == "image":  # x1 grows downwards, as the row index of a picture
        ax.set_xlim(a2, b2)
        ax.set_ylim(b1, a1)
        ax.set_xlabel("x₂")
        ax.set_ylabel("x₁")
    else:
        ax.set_xlim(a1, b1)
        ax.set_ylim(a2, b2)
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")


def _show(ax: Any, a: np.ndarray, extent: Any, orientation: str, **kw: Any) -> Any:
    """Draw an ``[i1, i2]`` array (or ``[i1, i2, rgb]``) over the domain box ``extent``."""
    a1, b1, a2, b2 = extent
    if orientation == "image":
        # imshow's own layout: the first index down, the second to the right
        im = ax.imshow(a, origin="upper", extent=(a2, b2, b1, a1), interpolation="nearest", **kw)
    else:
        img = np.swapaxes(a, 0, 1)
        im = ax.imshow(img, origin="lower", extent=extent, interpolation="nearest", **kw)
    _axes(ax, extent, orientation)
    return im


def _fusion(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """RGB false colour: A magenta, B green (equal intensities give grey)."""
    a, b = _normalise(A), _normalise(B)
    return np.stack([a, b, a], axis=-1)


def _checkerboard(A: np.ndarray, B: np.ndarray, tiles: int = 8) -> np.ndarray:
    a, b = _normalise(A), _normalise(B)
    i = (np.arange(a.shape[0]) * tiles // a.shape[0])[:, None]
    j = (np.arange(a.shape[1]) * tiles // a.shape[1])[None, :]
    return np.where((i + j) % 2 == 0, a, b)


def _draw_pair(ax_fuse: Any, ax_check: Any, A, B, extent, label: str, orientation: str) -> None:
    if ax_fuse is not None:
        _show(ax_fuse, _fusion(A, B), extent, orientation)
        ax_fuse.set_title(f"{label}: template magenta, reference green", fontsize=9)
    if ax_check is not None:
        _show(ax_check, _checkerboard(A, B), extent, orientation, cmap="gray", vmin=0, vmax=1)
        ax_check.set_title(f"{label}: checkerboard", fontsize=9)


def _domain(domain: Any) -> Domain:
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a multireg Domain, not {type(domain).__name__}")
    if domain.dim not in (2, 3):
        raise ValueError(f"domain must be 2D or 3D, got {domain.dim}D")
    return domain


def _points(y: Any, domain: Domain) -> list[np.ndarray]:
    """The d components of a map given at the cell centres, each shaped ``m``: ``y`` is either
    ``(n, d)`` points (``RegistrationResult.y``) or the stacked cell-centred vector."""
    if getattr(y, "shape", None) is None:
        raise TypeError(f"y must be an array, not {type(y).__name__}")
    a = np.asarray(_checks.to_host(y), dtype=np.float64)
    d, n = domain.dim, domain.n
    if a.shape == (n, d):
        return [a[:, k].reshape(domain.m) for k in range(d)]
    if a.shape == (d * n,):
        return [a[k * n : (k + 1) * n].reshape(domain.m) for k in range(d)]
    raise ValueError(
        f"y must have shape ({n}, {d}) (points at the cell centres of m = {domain.m}) or "
        f"({d * n},) (the stacked cell-centred grid), got {a.shape}"
    )


def _draw_grid(
    ax: Any, Y: list[np.ndarray], domain: Domain, every: int, orientation: str, image=None
) -> None:
    if domain.dim == 3:
        mid = domain.m[2] // 2
        Y = [c[:, :, mid] for c in Y[:2]]
    extent = _extent(domain.omega, domain.m)
    if image is not None:
        _show(ax, image, extent, orientation, cmap="gray")
    y1, y2 = Y
    # the horizontal coordinate first: x2 in the image orientation, x1 in FAIR's
    h, v = (y2, y1) if orientation == "image" else (y1, y2)
    m1, m2 = y1.shape
    for i in sorted({*range(0, m1, every), m1 - 1}):
        ax.plot(h[i, :], v[i, :], color="tab:red", lw=0.7)
    for j in sorted({*range(0, m2, every), m2 - 1}):
        ax.plot(h[:, j], v[:, j], color="tab:red", lw=0.7)
    _axes(ax, extent, orientation)
    ax.set_aspect("equal")


def _check_every(every: Any, domain: Domain) -> int:
    if every is None:
        return max(1, min(domain.m[:2]) // 16)
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    return int(every)


def _determinant(y: Any, domain: Domain, kind: str | None) -> np.ndarray:
    """det ∇y per cell (host), from (n, d) points or a stacked grid vector of any kind."""
    if getattr(y, "shape", None) is None:
        raise TypeError(f"y must be an array, not {type(y).__name__}")
    a = np.asarray(_checks.to_host(y), dtype=np.float64)
    if kind is not None:
        _checks.choice("kind", kind, gridops.KINDS)
    if a.ndim == 2:
        if kind not in (None, "cell-centered"):
            raise ValueError(f"y of shape {a.shape} holds cell-centred points, not {kind!r}")
        vec = np.concatenate([c.reshape(-1) for c in _points(a, domain)])
        kind = "cell-centered"
    elif a.ndim == 1:
        if kind is None:
            fits = [k for k in gridops.KINDS if gridops.grid_size(domain, k) == a.size]
            if len(fits) != 1:
                sizes = {k: gridops.grid_size(domain, k) for k in gridops.KINDS}
                raise ValueError(
                    f"y has {a.size} entries; a stacked grid on m = {domain.m} has {sizes}"
                    + ("" if not fits else "; pass kind= to choose")
                )
            kind = fits[0]
        vec = a
    else:
        raise ValueError(f"y must be (n, d) points or a stacked grid vector, got shape {a.shape}")
    det = np.asarray(gridops.jacobian_determinant(vec, domain, kind))
    return det[:, :, det.shape[2] // 2] if det.ndim == 3 else det


def _draw_jacobian(fig: Any, ax: Any, det: np.ndarray, domain: Domain, orientation: str) -> None:
    from matplotlib.colors import ListedColormap, TwoSlopeNorm

    lo, hi = float(np.min(det)), float(np.max(det))
    extent = _extent(domain.omega, domain.m)
    if lo < 1 < hi:  # both compression and expansion: a diverging map centred at 1
        spread = max(1 - lo, hi - 1)
        norm = TwoSlopeNorm(vcenter=1.0, vmin=1 - spread, vmax=1 + spread)
        im = _show(ax, det, extent, orientation, cmap="RdBu_r", norm=norm)
    else:  # one-sided (e.g. a global scaling): the variation on a sequential map
        pad = 1e-6 * max(abs(lo), 1.0) if hi - lo < 1e-6 * max(abs(lo), 1.0) else 0.0
        cmap = "Blues_r" if hi <= 1 else "Reds"
        im = _show(ax, det, extent, orientation, cmap=cmap, vmin=lo - pad, vmax=hi + pad)
    fig.colorbar(im, ax=ax, label="det ∇y")
    folds = det <= 0
    if np.any(folds):
        mask = np.ma.masked_where(~folds, np.ones_like(det))
        _show(ax, mask, extent, orientation, cmap=ListedColormap(["black"]), vmin=0, vmax=1)
    n_folds = int(np.sum(folds))
    fold_text = f", {n_folds} folded cells (black)" if n_folds else ", no folds"
    ax.set_title(f"det ∇y in [{lo:.4g}, {hi:.4g}]{fold_text}", fontsize=9)


def _histories(obj: Any) -> list[tuple[str, Sequence[Any]]]:
    """(label, records) pairs from a result or history; records have ``fun`` and ``grad_norm``."""

    def is_records(seq: Any) -> bool:
        return isinstance(seq, (tuple, list)) and all(
            hasattr(r, "fun") and hasattr(r, "grad_norm") for r in seq
        )

    if hasattr(obj, "levels"):
        out = []
        for lv in obj.levels:
            m = "×".join(map(str, lv.domain.m))
            out.append((f"{lv.stage} {m}", tuple(lv.result.history)))
        return out
    if hasattr(obj, "separable"):
        return _histories(obj.separable)
    if hasattr(obj, "history") and is_records(obj.history):
        return [("", tuple(obj.history))]
    if hasattr(obj, "result") and hasattr(obj.result, "history"):
        return _histories(obj.result)
    if hasattr(obj, "path") and is_records(obj.path):
        return [("homotopy path (one point per θ)", tuple(obj.path))]
    if is_records(obj) and obj:
        return [("", tuple(obj))]
    if isinstance(obj, (tuple, list)) and obj and all(is_records(s) for s in obj):
        return [(f"level {i + 1}", tuple(s)) for i, s in enumerate(obj)]
    raise TypeError(
        "history_or_result must be a registration, homotopy, super-resolution or optimiser "
        f"result, or a sequence of history records; got {type(obj).__name__}"
    )


def _draw_convergence(ax_j: Any, ax_g: Any, histories) -> None:
    offset, funs, grads = 0, [], []
    for k, (label, records) in enumerate(histories):
        if not records:
            continue
        it = offset + np.arange(len(records))
        fun = np.array([r.fun for r in records], dtype=float)
        grad = np.array([r.grad_norm for r in records], dtype=float)
        colour = f"C{k % 10}"
        ax_j.plot(it, fun, "o-", ms=3, color=colour, label=label or None)
        funs.append(fun)
        if ax_g is not None:
            ax_g.plot(it, grad, "s--", ms=3, color=colour, label=label or None)
            grads.append(grad)
        if offset:
            for ax in (ax_j, ax_g):
                if ax is not None:
                    ax.axvline(offset - 0.5, color="0.8", lw=0.8)
        offset += len(records)
    for ax, what, values in ((ax_j, "J", funs), (ax_g, "‖∇J‖", grads)):
        if ax is None:
            continue
        v = np.concatenate(values) if values else np.array([])
        v = v[np.isfinite(v)]
        if v.size and np.all(v > 0):
            ax.set_yscale("log")
        ax.set_xlabel("iteration (levels one after another)")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    if any(label for label, _ in histories):
        ax_j.legend(fontsize=7)


# ------------------------------------------------------------------------------ public figures


def overlay(
    T: Any,
    R: Any,
    path: Any,
    *,
    warped: Any = None,
    omega: Any = None,
    orientation: str = "image",
    dpi: float = 100,
) -> Path:
    """Template and reference before (and, with ``warped``, after) registration: a false-colour
    fusion (template magenta, reference green, agreement grey) and a checkerboard of each pair.

    ``T``, ``R``, ``warped``: images of one shape (2D; 3D: the middle slice); ``omega``: the
    domain, for the axes (default: cell indices); ``orientation``: ``"image"`` or ``"xy"`` (see
    the module docstring). Size 8×8 in with ``warped`` (two rows: before, after), else 8×4 in.
    """
    path, dpi, orientation = _check_path(path), _check_dpi(dpi), _orientation(orientation)
    names, arrays = ["T", "R"], [T, R]
    if warped is not None:
        names.append("warped")
        arrays.append(warped)
    images = [_image(n, a) for n, a in zip(names, arrays)]
    _same_shape(names, *arrays)
    extent = _extent(omega, images[0].shape)
    fig = _figure("overlay" if warped is not None else "overlay_single")
    rows = 2 if warped is not None else 1
    axes = fig.subplots(rows, 2, squeeze=False)
    _draw_pair(axes[0][0], axes[0][1], images[0], images[1], extent, "before", orientation)
    if warped is not None:
        _draw_pair(axes[1][0], axes[1][1], images[2], images[1], extent, "after", orientation)
    return _save(fig, path, dpi)


def deformed_grid(
    y: Any,
    domain: Domain,
    path: Any,
    *,
    every: int | None = None,
    image: Any = None,
    orientation: str = "image",
    dpi: float = 100,
) -> Path:
    """The transformed grid: y at the cell centres, every ``every``-th grid line in each
    direction (default: about 16 lines), over ``image`` if given (e.g. the template).

    ``y``: ``(n, d)`` points (``RegistrationResult.y``) or the stacked cell-centred vector of
    ``domain``; ``orientation``: ``"image"`` or ``"xy"`` (module docstring). FAIR's ``plotGrid``
    (book §3.4). Size 6×6 in.
    """
    path, dpi, orientation = _check_path(path), _check_dpi(dpi), _orientation(orientation)
    domain = _domain(domain)
    every = _check_every(every, domain)
    Y = _points(y, domain)
    background = None
    if image is not None:
        background = _image("image", image)
        m2 = domain.m[:2]
        if background.shape != m2:
            raise ValueError(f"image must have shape {domain.m}, got {tuple(image.shape)}")
    fig = _figure("deformed_grid")
    ax = fig.subplots()
    _draw_grid(ax, Y, domain, every, orientation, background)
    ax.set_title(f"deformed grid (every {every}. line)", fontsize=9)
    return _save(fig, path, dpi)


def jacobian_map(
    y: Any,
    domain: Domain,
    path: Any,
    *,
    kind: str | None = None,
    orientation: str = "image",
    dpi: float = 100,
) -> Path:
    """det ∇y per cell with a colour bar (blue: compression, red: expansion; a diverging map
    centred at 1 when both occur); folded cells (det ≤ 0) are black and counted in the title.

    ``y``: ``(n, d)`` points at the cell centres, or a stacked grid vector (``kind``
    ``"cell-centered"``, ``"nodal"`` or ``"staggered"``, inferred from its length when
    unambiguous; ``RegistrationResult.y_grid`` is staggered for elastic and diffusive). The
    determinant is :func:`multireg.gridops.jacobian_determinant` (FAIR book §8.3);
    ``orientation``: ``"image"`` or ``"xy"`` (module docstring). Size 6.5×5.5 in.
    """
    path, dpi, orientation = _check_path(path), _check_dpi(dpi), _orientation(orientation)
    domain = _domain(domain)
    det = _determinant(y, domain, kind)
    fig = _figure("jacobian_map")
    ax = fig.subplots()
    _draw_jacobian(fig, ax, det, domain, orientation)
    return _save(fig, path, dpi)


def convergence(history_or_result: Any, path: Any, *, dpi: float = 100) -> Path:
    """J and ‖∇J‖ per iteration, each level after the previous one (FAIR's iteration history).

    Takes a :class:`~multireg.RegistrationResult` (one line per level), an optimiser
    :class:`~multireg.optimize.Result`, a super-resolution or separable result, a homotopy
    result (one point per θ), or a sequence of history records (or of such sequences). Size
    10×4 in.
    """
    path, dpi = _check_path(path), _check_dpi(dpi)
    histories = _histories(history_or_result)
    if not any(records for _, records in histories):
        raise ValueError("history_or_result has no iteration history to plot")
    fig = _figure("convergence")
    ax_j, ax_g = fig.subplots(1, 2)
    _draw_convergence(ax_j, ax_g, histories)
    ax_j.set_title("objective J", fontsize=9)
    ax_g.set_title("gradient norm ‖∇J‖", fontsize=9)
    return _save(fig, path, dpi)


def homotopy_path(result: Any, path: Any, *, dpi: float = 100) -> Path:
    """A homotopy's path in θ (large θ, smooth images, on the left): the parameters w*(θ), the
    objective J(w*(θ), θ) and the corrector's iterations per θ; jumps past folds dashed.

    ``result``: a :class:`~multireg.problems.homotopy.HomotopyResult`. Size 12×4 in.
    """
    path, dpi = _check_path(path), _check_dpi(dpi)
    points = getattr(result, "path", None)
    if not isinstance(points, tuple) or not points or not hasattr(points[0], "theta"):
        raise TypeError(f"result must be a HomotopyResult, not {type(result).__name__}")
    theta = np.array([p.theta for p in points], dtype=float)
    ws = np.stack([np.asarray(p.w, dtype=float) for p in points])
    fun = np.array([p.fun for p in points], dtype=float)
    its = np.array([p.iterations for p in points])
    fig = _figure("homotopy_path")
    ax_w, ax_j, ax_i = fig.subplots(1, 3)
    for j in range(ws.shape[1]):
        ax_w.plot(theta, ws[:, j], ".-", ms=3, label=f"w{j + 1}" if ws.shape[1] <= 12 else None)
    if ws.shape[1] <= 12:
        ax_w.legend(fontsize=6, ncol=2)
    ax_j.plot(theta, fun, ".-", color="k")
    if np.all(fun > 0):
        ax_j.set_yscale("log")
    ax_i.bar(np.arange(len(its)), its, color="tab:blue")
    ax_i.set_xlabel("path point")
    ax_i.set_ylabel("corrector iterations")
    ax_i.set_title(f"{int(its.sum())} iterations on the accepted path", fontsize=9)
    for ax, label in ((ax_w, "parameters w*(θ)"), (ax_j, "J(w*(θ), θ)")):
        if np.all(theta > 0):
            ax.set_xscale("log")
        if theta[0] > theta[-1]:
            ax.invert_xaxis()
        ax.set_xlabel("θ")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
        for p in points:
            if getattr(p, "jump", False):
                ax.axvline(p.theta, color="tab:red", ls="--", lw=0.8)
    return _save(fig, path, dpi)


def superres_figure(
    truth: Any,
    frame: Any,
    initial: Any,
    final: Any,
    path: Any,
    *,
    omega: Any = None,
    orientation: str = "image",
    dpi: float = 100,
) -> Path:
    """Super-resolution: the true fine image (None if unknown), one low-resolution frame, the
    reconstruction at the initial motions and the final one, each with a colour bar; with a truth
    the titles give the relative error ‖f − f_true‖/‖f_true‖. ``initial``, ``final`` (and
    ``truth``) share one 2D shape; the frame covers the same domain ``omega`` (default: the fine
    grid's cell indices) at its own resolution. The fine images share one grey scale (the
    truth's range, else the reconstruction's); the frame has its own. ``orientation``:
    ``"image"`` or ``"xy"`` (module docstring). Size 14×3.8 in.
    """
    path, dpi, orientation = _check_path(path), _check_dpi(dpi), _orientation(orientation)
    f0, f1, d = _image("initial", initial), _image("final", final), _image("frame", frame)
    for name, a in (("initial", initial), ("final", final), ("frame", frame)):
        if np.ndim(_checks.to_host(a)) != 2:
            raise ValueError(f"{name} must be a 2D image, got shape {tuple(a.shape)}")
    _same_shape(["initial", "final"], initial, final)
    f_true = None
    if truth is not None:
        f_true = _image("truth", truth)
        _same_shape(["truth", "initial"], truth, initial)
    extent = _extent(omega, f1.shape)
    fig = _figure("superres_figure")
    axes = fig.subplots(1, 4)
    scale = f1 if f_true is None else f_true
    lo, hi = float(np.min(scale)), float(np.max(scale))

    def error(f):
        if f_true is None:
            return ""
        return f", error {np.linalg.norm(f - f_true) / max(np.linalg.norm(f_true), 1e-300):.3f}"

    m = f"{f1.shape[0]}×{f1.shape[1]}"
    panels = [
        (f_true, f"truth ({m})"),
        (d, f"a frame ({d.shape[0]}×{d.shape[1]})"),
        (f0, "initial motions" + error(f0)),
        (f1, "reconstruction" + error(f1)),
    ]
    for ax, (img, title) in zip(axes, panels):
        if img is None:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "truth unknown", ha="center", va="center", transform=ax.transAxes)
            continue
        vmin, vmax = (None, None) if img is d else (lo, hi)
        im = _show(ax, img, extent, orientation, cmap="gray", vmin=vmin, vmax=vmax)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi)


def dynamics_curves(
    times: Any,
    true_curves: Mapping[str, Any] | None,
    recovered: Mapping[str, Any],
    path: Any,
    *,
    images: Mapping[str, Any] | None = None,
    omega: Any = None,
    orientation: str = "image",
    dpi: float = 100,
) -> Path:
    """Time curves per region: the truth (solid, if given) and the recovered curves (dashed);
    left of them, optionally, ``images``: a mapping title → image (2D; 3D: the middle slice;
    e.g. one frame before and after motion correction), each with a colour bar, over ``omega``
    (default: cell indices) in ``orientation`` (``"image"`` or ``"xy"``, module docstring).

    ``true_curves`` and ``recovered``: mappings region → curve of ``len(times)`` values;
    ``recovered`` may also map a method's name to such a mapping (several methods side by side,
    one line style each). Size 8×5 in, and 4 in wider for each image.
    """
    path, dpi, orientation = _check_path(path), _check_dpi(dpi), _orientation(orientation)
    t = np.asarray(_checks.to_host(times), dtype=float) if times is not None else None
    if t is None or t.ndim != 1 or t.size < 1:
        raise ValueError(f"times must be a 1-D sequence of time points, got {times!r}")
    if not isinstance(recovered, Mapping) or not recovered:
        raise TypeError("recovered must be a non-empty mapping region → curve")
    if true_curves is not None and not isinstance(true_curves, Mapping):
        raise TypeError("true_curves must be None or a mapping region → curve")
    if images is not None and not isinstance(images, Mapping):
        raise TypeError("images must be None or a mapping title → 2D image")
    shown = {str(k): _image(f"images[{k!r}]", v) for k, v in (images or {}).items()}
    methods = (
        dict(recovered)
        if all(isinstance(v, Mapping) for v in recovered.values())
        else {"recovered": recovered}
    )

    def curve(where: str, region: str, c: Any) -> np.ndarray:
        a = np.asarray(_checks.to_host(c), dtype=float).reshape(-1)
        if a.shape != t.shape:
            raise ValueError(f"{where}[{region!r}] has {a.size} values but times has {t.size}")
        return a

    truth = {r: curve("true_curves", r, c) for r, c in (true_curves or {}).items()}
    found = {}
    for m, rc in methods.items():
        where = f"recovered[{m!r}]" if len(methods) > 1 else "recovered"
        found[m] = {r: curve(where, r, c) for r, c in rc.items()}
    regions = list(dict.fromkeys([*truth, *(r for rc in found.values() for r in rc)]))
    colour = {r: f"C{i % 10}" for i, r in enumerate(regions)}
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
    fig = _figure("dynamics_curves")
    width, height = SIZES["dynamics_curves"]
    fig.set_size_inches(width + 4.0 * len(shown), height)
    axes = fig.subplots(1, len(shown) + 1, width_ratios=[4.0] * len(shown) + [width], squeeze=False)
    for ax, (title, img) in zip(axes[0], shown.items()):
        im = _show(ax, img, _extent(omega, img.shape), orientation, cmap="gray")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=9)
    ax = axes[0][-1]
    for r, c in truth.items():
        ax.plot(t, c, "-", color=colour[r], lw=2, alpha=0.6, label=f"{r} (truth)")
    for k, (m, rc) in enumerate(found.items()):
        for r, c in rc.items():
            suffix = f" ({m})" if len(found) > 1 or truth else ""
            ax.plot(t, c, ls=styles[k % 4], marker=".", color=colour[r], label=f"{r}{suffix}")
    ax.set_xlabel("time")
    ax.set_ylabel("intensity change")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(regions) > 4 else 1)
    what = "true (solid) and recovered (dashed)" if truth else "recovered"
    ax.set_title(f"intensity change per region: {what} time curves", fontsize=9)
    return _save(fig, path, dpi)


def registration_figure(
    T: Any, R: Any, result: Any, path: Any, *, orientation: str = "image", dpi: float = 100
) -> Path:
    """A 2×2 summary of a registration: the overlay before (T and R), after (T(y) and R), the
    Jacobian map (nonparametric) or the deformed grid over R (parametric), and the convergence
    history of every level. ``result``: a :class:`~multireg.RegistrationResult` of
    ``T`` and ``R``; ``orientation``: ``"image"`` or ``"xy"`` (module docstring). Size 10×9 in.
    """
    path, dpi, orientation = _check_path(path), _check_dpi(dpi), _orientation(orientation)
    levels = getattr(result, "levels", None)
    if not levels or not hasattr(result, "warped"):
        raise TypeError(f"result must be a RegistrationResult, not {type(result).__name__}")
    domain = levels[-1].domain
    Ti, Ri = _image("T", T), _image("R", R)
    _same_shape(["T", "R"], T, R)
    if tuple(T.shape) != domain.m:
        raise ValueError(f"T has shape {tuple(T.shape)} but the result is on m = {domain.m}")
    warped = _image("result.warped", result.warped)
    extent = _extent(domain.omega, domain.m)
    fig = _figure("registration_figure")
    (a, b), (c, d) = fig.subplots(2, 2)
    _draw_pair(a, None, Ti, Ri, extent, "before", orientation)
    _draw_pair(b, None, warped, Ri, extent, "after", orientation)
    if getattr(result, "y_grid", None) is not None:
        _draw_jacobian(fig, c, _determinant(result.y_grid, domain, None), domain, orientation)
    else:
        every = _check_every(None, domain)
        _draw_grid(c, _points(result.y, domain), domain, every, orientation, Ri)
        c.set_title("deformed grid over R", fontsize=9)
    _draw_convergence(d, None, _histories(result))
    reduction = getattr(result, "reduction", math.nan)
    d.set_title(f"objective per iteration; distance reduced to {100 * reduction:.2g} %", fontsize=9)
    return _save(fig, path, dpi)
