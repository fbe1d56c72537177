"""The demo: every capability of multireg on built-in synthetic data, on every installed backend.

``multireg demo`` (or ``python -m multireg demo``) runs, on each installed backend that
differentiates, and compares the backends with :func:`multireg.workflow.validate.validate`:

1. affine registration, multilevel Gauss–Newton, of a smooth synthetic image moved by a known
   affine map (the truth is recovered to rounding error);
2. elastic nonparametric registration of a copy swirled and expanded about one point, a
   clearly non-affine deformation (FAIR's MLIR after an affine pre-registration);
3. homotopy in the image scale θ on a 60° rotation where single-scale Newton from the identity
   stops in a local minimum and the path of minimisers reaches the global one;
4. super-resolution: a fine image and the frame motions from low-resolution frames (VarPro);
5. dynamics: motion correction of a synthetic contrast-enhanced kidney series with the coupled
   intensity model (when :mod:`multireg.dynamics` is installed; otherwise it says so).

It prints, per capability and backend, the error against the truth, the iterations and the time
of the first run (compilation included), then the agreement of the backends (maximum relative
difference of the results); it writes a figure per capability (with matplotlib) and
``summary.json`` (every printed number) to a folder, by default a new
``multireg-demo-YYYYmmdd-HHMMSS`` in the current directory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multireg._backend import available_backends, get_backend
from multireg._version import __version__
from multireg.data import blobs
from multireg.interpolation import spline_coefficients, spline_interpolate
from multireg.problems.homotopy import homotopy
from multireg.problems.registration import register
from multireg.transforms import transform

W_TRUE = np.array([1.04, 0.06, -0.05, -0.04, 0.97, 0.03])
RTOL = 1e-8
"""The demo's agreement tolerance (relative, max norm)."""
ATOL = 1e-12
INT_TOL = 1
"""Absolute floor: the noise-free affine problem ends at a distance of ~1e-26, pure rounding."""
FILES = ("affine.png", "elastic.png", "homotopy.png", "superres.png", "dynamics.png")


def affine_pair(m: tuple[int, int] = (96, 80)):
    """A template, its affine warp as the reference, and the truth: T(y(w_true, x)) == R(x)."""
    T, domain = blobs(m, (0.0, 1.2, 0.0, 1.0), seed=3)
    trafo = transform("affine", dim=2)
    x = domain.cell_centers()
    R = np.asarray(spline_interpolate(spline_coefficients(T), domain, trafo(W_TRUE, x)))
    return T, R.reshape(m), domain


ELASTIC_ALPHA = 1e-3
"""The elastic demo's regularisation weight: its images lie in [0, 1] on a domain of area 1.2, so
the distance is of order 1e-4 and α must be small for the deformation to show."""
SWIRL = np.array([[1.5, -2.5], [2.5, 1.5]])
"""The elastic demo's local deformation: ∇u at its centre is ``0.1 * SWIRL``, a rotation by
about 14° combined with a 15 % stretch, fading out (Gaussian, width 0.18) away from it."""


def deformed_pair(m: tuple[int, int] = (96, 80)):
    """A template and, as the reference, a copy deformed by y(x) = x + u(x), u a local swirl and
    expansion about (0.6, 0.5) (:data:`SWIRL`): R(x) = T(y(x)). Not affine: det ∇y runs from
    about 0.95 to 1.37 across the image, so an elastic registration has something to show.
    Returns ``(T, R, domain, y)`` with the true map's points ``y``, shape ``(n, 2)``."""
    T, domain = blobs(m, (0.0, 1.2, 0.0, 1.0), seed=5)
    x = domain.cell_centers()
    d = x - np.array([0.6, 0.5])
    fade = np.exp(-0.5 * np.sum(d**2, axis=1) / 0.18**2)[:, None]
    y = x + 0.1 * fade * (d @ SWIRL.T)
    R = np.asarray(spline_interpolate(spline_coefficients(T), domain, y))
    return T, R.reshape(m), domain, y


def rotated_pair(m: tuple[int, int] = (32, 32), degrees: float = 60.0):
    """A template and its copy rotated by ``degrees`` about the centre of the unit square, with
    the true affine parameters (FAIR's layout)."""
    T, domain = blobs(m, (0.0, 1.0, 0.0, 1.0), seed=5)
    phi = math.radians(degrees)
    A = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    b = np.array([0.5, 0.5]) - A @ np.array([0.5, 0.5])
    w = np.array([A[0, 0], A[0, 1], b[0], A[1, 0], A[1, 1], b[1]])
    trafo = transform("affine", dim=2)
    x = domain.cell_centers()
    R = np.asarray(spline_interpolate(spline_coefficients(T), domain, trafo(w, x)))
    return T, R.reshape(m), domain, w


def resolution_chart(n: int = 128) -> np.ndarray:
    """An n×n test image with detail finer than a low-resolution frame shows: soft blobs, a
    block of bars (period 0.1 along x2), a disc and a ring on the unit square."""
    base, domain = blobs((n, n), seed=11, n_blobs=6)
    x = domain.cell_centers()
    x1, x2 = x[:, 0].reshape(n, n), x[:, 1].reshape(n, n)
    bars = (x1 > 0.15) & (x1 < 0.45) & (x2 > 0.2) & (x2 < 0.8) & (np.sin(2 * np.pi * x2 / 0.1) > 0)
    disc = (x1 - 0.68) ** 2 + (x2 - 0.62) ** 2 < 0.13**2
    ring = np.abs(np.hypot(x1 - 0.68, x2 - 0.3) - 0.1) < 0.03
    return 0.4 * base + 0.6 * bars + 0.8 * disc + 0.6 * ring


# ------------------------------------------------------------------------------ plumbing


class _Demo:
    """Printing, figures, the summary and the time of one demo run."""

    def __init__(self, names, folder: Path, echo: Callable[[str], Any], small: bool):
        self.names, self.folder, self.echo, self.small = names, folder, echo, small
        self.summary: dict = {"backends": list(names), "rtol": RTOL, "atol": ATOL}
        try:
            import matplotlib  # noqa: F401

            self.plots = True
        except ImportError:
            self.plots = False

    def validate(self, fn, *args, **kwargs):
        from multireg.workflow.validate import validate

        # Iteration counts within one: at the optimum, whether one more step whose promised
        # decrease is far below J's round-off level passes Armijo's test is decided by rounding
        # (affine, 32x28: torch stopped at round-off after 4 iterations, JAX took a fifth step of
        # length 1/128 that moved w by 3e-12; the values agree to 3e-16).
        return validate(fn, *args, backends=self.names, rtol=RTOL, atol=ATOL, int_tol=INT_TOL,
                        **kwargs)  # fmt: skip

    def agreement(self, key: str, report, leaves: Sequence[str]) -> None:
        """Print and record the backends' agreement on the named leaves."""
        present = [n for n in leaves if any(r.name == n for r in report.rows)]
        diffs = {n: report[n].diff for n in present}
        entry = self.summary[key]
        entry["agreement"] = diffs
        entry["ok"] = report.ok
        entry["times"] = {b: t["first"] for b, t in report.times.items()}
        if len(self.names) < 2:
            return
        text = ", ".join(f"{d:.1e} ({n})" for n, d in diffs.items())
        verdict = "PASS" if report.ok else "FAIL"
        self.echo(
            f"   backends agree to {text}: max relative difference; {verdict} at rtol {RTOL:g}, "
            f"iteration counts within {INT_TOL}"
        )
        if not report.ok:
            for row in report.failures:
                self.echo(f"   !! {row.name}: relative difference {row.diff:.2e}")

    def figure(self, key: str, draw: Callable[[Path], Any], name: str) -> None:
        if not self.plots:
            return
        path = draw(self.folder / name)
        self.summary[key]["figure"] = path.name
        self.echo(f"   figure: {path}")


def _folder(out: Any, overwrite: bool) -> Path:
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = Path.cwd() / f"multireg-demo-{stamp}"
        k = 1
        while folder.exists():
            k += 1
            folder = Path.cwd() / f"multireg-demo-{stamp}-{k}"
        folder.mkdir()
        return folder
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a folder path, not {type(out).__name__}")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"out {str(folder)!r} exists and is not a folder")
    clash = [f for f in (*FILES, "summary.json") if (folder / f).exists()]
    if clash and not overwrite:
        raise FileExistsError(
            f"out {str(folder)!r} already holds demo output ({', '.join(clash)}); "
            "choose another folder or pass overwrite=True (--overwrite)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _first_time(report, name: str) -> str:
    return f"{report.times[name]['first']:.2f} s"


# ------------------------------------------------------------------------------ capabilities


def _affine(demo: _Demo) -> None:
    from multireg.workflow import figures

    m = (32, 28) if demo.small else (96, 80)
    levels = 2 if demo.small else 3
    T, R, domain = affine_pair(m)
    demo.echo(f"\n1. Affine registration, multilevel Gauss–Newton, m = {domain.m}")
    demo.echo(f"   truth w = {np.round(W_TRUE, 4).tolist()}")
    report = demo.validate(
        register, T, R, domain.omega, transform="affine", levels=levels,
        tol_j=1e-10, tol_y=1e-8, tol_g=1e-8, max_iter=30, title="affine registration",
    )  # fmt: skip
    entry = demo.summary.setdefault("affine", {"backends": {}})
    for name in demo.names:
        w = report["w"].values[name]
        err = float(np.max(np.abs(w - W_TRUE)))
        its = tuple(int(i) for i in report["levels[:].result.iterations"].values[name])
        entry["backends"][name] = {"w": w.tolist(), "error": err, "iterations": its}
        demo.echo(
            f"   {name:6s} w = {np.round(w, 4).tolist()}  max error {err:.1e}  "
            f"iterations per level {its}  {_first_time(report, name)} (incl. compilation)"
        )
    demo.agreement("affine", report, ("w", "warped"))
    result = report.results[demo.names[0]]
    demo.figure("affine", lambda p: figures.registration_figure(T, R, result, p), "affine.png")


def _det(y: Any, domain) -> np.ndarray:
    """det ∇y per cell from the map's points at the cell centres (central differences)."""
    from multireg import gridops

    a = np.asarray(y, dtype=np.float64)
    vec = np.concatenate([a[:, k] for k in range(a.shape[1])])
    return np.asarray(gridops.jacobian_determinant(vec, domain, "cell-centered"))


def _elastic(demo: _Demo) -> None:
    from multireg.workflow import figures

    m = (32, 28) if demo.small else (96, 80)
    levels = 1 if demo.small else 2  # each level is one more compilation for JAX
    T, R, domain, y_true = deformed_pair(m)
    true_det = _det(y_true, domain)
    demo.echo(
        f"\n2. Elastic registration (alpha = {ELASTIC_ALPHA:g}, affine pre-registration) of a "
        f"local swirl and stretch, m = {domain.m}; the true det ∇y runs from "
        f"{true_det.min():.2f} to {true_det.max():.2f}"
    )
    report = demo.validate(
        register, T, R, domain.omega, transform="nonparametric",
        regularizer="elastic", alpha=ELASTIC_ALPHA, levels=levels, max_iter=30,
        tol_j=1e-7, tol_y=1e-5, tol_g=1e-5, title="elastic registration",
    )  # fmt: skip
    entry = demo.summary.setdefault(
        "elastic", {"backends": {}, "true_det": [float(true_det.min()), float(true_det.max())]}
    )
    for name in demo.names:
        res = report.results[name]
        det = _det(res.y, domain)
        entry["backends"][name] = {
            "reduction": res.reduction,
            "det_min": res.det_min,
            "det_range": [float(det.min()), float(det.max())],
            "det_std": float(det.std()),
            "status": res.status.value,
        }
        demo.echo(
            f"   {name:6s} distance reduced to {100 * res.reduction:.1f} % of the identity's, "
            f"det ∇y from {det.min():.2f} to {det.max():.2f} (min over cells {res.det_min:.3f}), "
            f"status {res.status.value}, {_first_time(report, name)}"
        )
    demo.agreement("elastic", report, ("y", "warped"))
    result = report.results[demo.names[0]]
    demo.figure("elastic", lambda p: figures.registration_figure(T, R, result, p), "elastic.png")


def _homotopy(demo: _Demo) -> None:
    from multireg.workflow import figures

    T, R, domain, w_true = rotated_pair((32, 32), 60.0)
    n_steps = 8 if demo.small else 20
    demo.echo(
        f"\n3. Homotopy in θ (affine, SSD, θ from 1e2 to 1e-3 in {n_steps} steps), "
        f"m = {domain.m}, the template rotated by 60°"
    )
    single = homotopy(T, R, domain.omega, thetas=[1e-3], backend=demo.names[0])
    err_single = float(np.max(np.abs(np.asarray(single.ws[-1]) - w_true)))
    demo.echo(
        f"   single scale (Newton from the identity at θ = 1e-3): max error of w "
        f"{err_single:.2f}, a local minimum (J = {single.distance:.3e})"
    )
    report = demo.validate(
        homotopy, T, R, domain.omega, theta_range=(1e2, 1e-3), n_steps=n_steps,
        title="homotopy",
    )  # fmt: skip
    entry = demo.summary.setdefault("homotopy", {"backends": {}, "single_scale_error": err_single})
    for name in demo.names:
        res = report.results[name]
        err = float(np.max(np.abs(res.ws[-1] - w_true)))
        entry["backends"][name] = {
            "error": err,
            "distance": res.distance,
            "corrector_iterations": res.corrector_iterations,
            "status": res.status.value,
        }
        demo.echo(
            f"   {name:6s} homotopy: max error of w {err:.1e} (J = {res.distance:.3e}), "
            f"{len(res.path)} points, {res.corrector_iterations} corrector iterations, "
            f"{_first_time(report, name)}"
        )
    demo.agreement("homotopy", report, ("w", "path[:].w", "warped"))
    result = report.results[demo.names[0]]
    demo.figure("homotopy", lambda p: figures.homotopy_path(result, p), "homotopy.png")


def _superres(demo: _Demo) -> None:
    from multireg.problems import superres
    from multireg.workflow import figures

    image = resolution_chart(128)
    n_frames, m_fine, m_coarse = (4, (24, 24), (12, 12)) if demo.small else (8, (32, 32), (16, 16))
    problem = superres.make_problem(
        image, m_fine=m_fine, m_coarse=m_coarse, n_frames=n_frames, noise=0.01, seed=1
    )
    demo.echo(
        f"\n4. Super-resolution (VarPro, rigid motions) of a resolution chart: {n_frames} "
        f"frames of {m_coarse[0]}×{m_coarse[1]} → {m_fine[0]}×{m_fine[1]}, 1 % noise"
    )
    report = demo.validate(
        superres.solve, problem.frames, problem.omega, problem.m_fine, alpha=problem.alpha,
        max_iter=8, inner_rtol=1e-6, title="super-resolution",
    )  # fmt: skip
    entry = demo.summary.setdefault("superres", {"backends": {}})

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    for name in demo.names:
        f, f0 = report["f"].values[name], report["f0"].values[name]
        w, w0 = report["w"].values[name], report["w0"].values[name]
        res = report.results[name]
        row = {
            "f_error_initial": rel(f0, problem.f_true),
            "f_error": rel(f, problem.f_true),
            "w_error_initial": float(np.max(np.abs(w0 - problem.w_true))),
            "w_error": float(np.max(np.abs(w - problem.w_true))),
            "iterations": int(res.iterations),
            "status": res.status.value,
        }
        entry["backends"][name] = row
        demo.echo(
            f"   {name:6s} motion error {row['w_error_initial']:.1e} (pre-registration) → "
            f"{row['w_error']:.1e}, image error {row['f_error_initial']:.3f} → "
            f"{row['f_error']:.3f}, {row['iterations']} iterations ({row['status']}), "
            f"{_first_time(report, name)}"
        )
    demo.agreement("superres", report, ("f", "w"))
    ref = demo.names[0]
    f, f0 = report["f"].values[ref], report["f0"].values[ref]
    demo.figure(
        "superres",
        lambda p: figures.superres_figure(
            problem.f_true, problem.frames[0], f0, f, p, omega=problem.omega
        ),
        "superres.png",
    )


def _dynamics(demo: _Demo) -> None:
    demo.echo("\n5. Dynamics: motion correction of a synthetic DCE kidney series")
    entry = demo.summary.setdefault("dynamics", {"backends": {}})
    try:
        from multireg.problems import dynamics
    except ImportError as exc:
        entry["status"] = "skipped"
        demo.echo(f"   skipped: multireg.dynamics is not available ({exc})")
        return
    from multireg.workflow import figures

    m, n_frames = ((48, 48), 8) if demo.small else ((64, 64), 12)
    try:
        phantom = dynamics.kidney_phantom(m=m, n_frames=n_frames, noise=0.0, seed=0)
        report = demo.validate(
            dynamics.solve, phantom.frames, phantom.times, phantom.omega, motion="affine",
            model="regions", masks=phantom.masks, title="dynamics",
        )  # fmt: skip
    except Exception as exc:  # a failure here must not hide the other capabilities' results
        entry["status"] = "failed"
        entry["error"] = f"{type(exc).__name__}: {exc}"
        demo.echo(f"   FAILED: {entry['error']}")
        return
    truth = {k: np.asarray(v) for k, v in phantom.curves.items()}
    w_true = np.asarray(phantom.w)
    recovered: dict = {}
    for name in demo.names:
        res = report.results[name]
        curves = report["curves"].values[name]  # (N, regions), columns named by res.names
        recovered[name] = {r: curves[:, i] for i, r in enumerate(res.names)}
        errors = {
            r: float(np.linalg.norm(c - truth[r]) / max(float(np.linalg.norm(truth[r])), 1e-300))
            for r, c in recovered[name].items()
            if r in truth
        }
        w_error = float(np.max(np.abs(report["w"].values[name] - w_true)))
        entry["backends"][name] = {
            "curve_errors": errors,
            "w_error": w_error,
            "iterations": int(res.iterations),
            "status": res.status.value,
        }
        worst = max(errors, key=errors.get)
        demo.echo(
            f"   {name:6s} time curves: largest relative error {errors[worst]:.1e} ({worst}), "
            f"motion error {w_error:.1e}, {res.iterations} iterations, status "
            f"{res.status.value}, {_first_time(report, name)}"
        )
    entry["status"] = "ok"
    demo.agreement("dynamics", report, ("w", "curves", "registered"))
    times, found = phantom.times, recovered[demo.names[0]]
    # the frame that moved most, as acquired and after motion correction
    k = int(np.argmax(np.abs(w_true - w_true[0]).sum(axis=1)))
    registered = report["registered"].values[demo.names[0]]
    images = {
        f"frame {k} (t = {times[k]:g}) as acquired": phantom.frames[k],
        f"frame {k} motion-corrected": registered[k],
    }
    demo.figure(
        "dynamics",
        lambda p: figures.dynamics_curves(
            times, truth, found, p, images=images, omega=phantom.omega
        ),
        "dynamics.png",
    )


# ------------------------------------------------------------------------------ entry point


def run(
    backends: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    quiet: bool = False,
    *,
    small: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], Any] = print,
) -> Path:
    """Run the demo; returns the folder holding its figures and ``summary.json``.

    ``backends``: names (default: every installed backend that differentiates); ``out``: the
    folder (default: a new ``multireg-demo-YYYYmmdd-HHMMSS`` in the current directory; an
    existing folder may not already hold demo output unless ``overwrite``); ``quiet``: print
    nothing; ``small``: smaller problems (for tests); ``echo``: receives each printed line.
    """
    names = list(available_backends()) if backends is None else list(backends)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"backends must hold backend names, not {type(name).__name__}")
    names = [b for b in names if get_backend(b).differentiable]
    if not names:
        raise RuntimeError('the demo needs torch or JAX: pip install "multireg[torch,jax]"')
    if not callable(echo):
        raise TypeError(f"echo must be callable, not {type(echo).__name__}")
    folder = _folder(out, overwrite)
    demo = _Demo(names, folder, (lambda line: None) if quiet else echo, small)
    started = time.perf_counter()
    demo.echo(f"multireg {__version__} demo: backends {', '.join(names)}")
    if not demo.plots:
        demo.echo('(figures skipped: matplotlib is not installed; pip install "multireg[plot]")')
    for step in (_affine, _elastic, _homotopy, _superres, _dynamics):
        step(demo)
    demo.summary["seconds"] = time.perf_counter() - started
    tmp = folder / ".summary.json.tmp"
    tmp.write_text(json.dumps(demo.summary, indent=2, default=_json_default) + "\n")
    tmp.replace(folder / "summary.json")
    demo.echo(f"\nDone in {demo.summary['seconds']:.0f} s; figures and summary.json in {folder}")
    return folder


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
