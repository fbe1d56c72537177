"""Dynamics benchmark: registration of a contrast-enhanced sequence, coupled vs baselines.

Part 1, the kidney phantom (:func:`multireg.dynamics.kidney_phantom`, default 128², 25 frames
2.4 s apart, the study's two-compartment curves, random affine motions): for each case
(noise 0 %, 1 %, 3 % of the maximum; and contrast ×3 at 0 % and 1 %) and backend it reports the
relative error ‖α̂_r − α_r‖/‖α_r‖ of each region's time curve and the motion error (RMS
displacement error over the grid relative to the RMS true displacement, and in mm) for

* ``none``: the regions model fitted to the unregistered frames;
* ``SSD frame-by-frame``: every frame registered to frame 0 by SSD (affine, multilevel), then
  the mean enhancement over each (boolean) region mask of the registered frames;
* ``SSD + fit``: the same motions, then the regions model (partial-volume weights) fitted;
* ``coupled <method>``: :func:`multireg.dynamics.solve` (regions model) started from those
  motions, for VarPro (projected Jacobian), LAP and BCD; and the basis model (PCA modes, no
  masks; its curves are its enhancement projected on the masks);
* ``oracle``: the regions model at the true motions (the floor the noise and the spline
  interpolation set).

Part 1b (``--large-motion-only`` runs just this), issue 14's regime
(:func:`multireg.dynamics.large_motion_phantom`: large affine motion, frames cropped after they
moved; several patterns, seeds and motion sizes): the oracle with and without the
field-of-view objective, the coupled VarPro solve with it from the identity, coarse to fine,
and the old objective from the truth, with J(true)/J and the targets of issue 14.

Times are warm (each solve is run twice; the second is reported) and exclude the
pre-registration (its time is its own row). The figure bench/out/dynamics_curves.png shows
true vs recovered curves (1 % noise, first backend).

Part 2, real data without ground truth: mdreg's VFA liver series (5 flip angles 2–25°, a
78×96 slice at 4.69 mm; the flip angle takes the place of time), read from an installed
``mdreg`` or from its wheel (``pip download mdreg==0.5.4 --no-deps -d ~/.cache/multireg``;
``$MULTIREG_MDREG`` may name another folder) without importing mdreg; nothing is copied into the
repository. For a few slices it reports the basis model's (2 PCA modes) fit residual
‖d(y) − I‖/‖d(y)‖ before correction, after frame-by-frame SSD, and after the coupled solve
(affine and nonparametric motion), with the figure bench/out/dynamics_vfa.png.

    python bench/dynamics.py [--quick] [--backend jax,torch] [--no-vfa]
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import pickle
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import OUT, fmt_time, table, write_report

import multireg
from multireg.problems import dynamics

CASES = [(0.0, 1.0), (0.01, 1.0), (0.03, 1.0), (0.0, 3.0), (0.01, 3.0)]
QUICK_CASES = [(0.0, 1.0), (0.01, 1.0), (0.0, 3.0)]
COLUMNS = ["noise", "contrast", "backend", "method", "motion", "mm", "iters", "status", "time"]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def timed(fn, sync):
    """(result, seconds) of the second of two runs (warm: compiled, caches filled)."""
    fn()
    t = time.perf_counter()
    out = fn()
    sync(out)
    return out, time.perf_counter() - t


def curve_errors(curves, ph, names):
    return {n: rel(np.asarray(curves)[:, i], ph.curves[n]) for i, n in enumerate(names)}


def frame_curves(registered, ph, names):
    """Frame-by-frame curves: each registered frame's enhancement over registered frame 0,
    projected on the partial-volume weights by least squares, frame by frame (no temporal
    model; for disjoint binary masks this is the ROI mean)."""
    reg = np.asarray(registered)
    W = np.stack([ph.weights[n].ravel() for n in names], axis=1)
    E = np.reshape(reg - reg[:1], (reg.shape[0], -1)).T
    return np.linalg.lstsq(W, E, rcond=None)[0].T


def phantom_rows(args, bk, noise, contrast, figure_data):
    m = (args.size, args.size)
    ph = dynamics.kidney_phantom(m=m, n_frames=args.frames, noise=noise, contrast=contrast)
    names = tuple(ph.weights)
    sync = bk.sync
    common = dict(masks=ph.weights, backend=bk)
    rows = []

    def row(label, curves, w, seconds, res=None):
        errs = curve_errors(curves, ph, names)
        e_rel, e_mm = dynamics.motion_error(np.asarray(w), ph.w, ph.omega, m)
        r = dict(
            noise=f"{100 * noise:.0f} %",
            contrast=f"×{contrast:g}",
            backend=bk.name,
            method=label,
            **{n: f"{100 * errs[n]:.2f} %" for n in names},
            motion=f"{100 * e_rel:.2f} %",
            mm=f"{e_mm:.3f}",
            iters="" if res is None else str(res.iterations),
            status="" if res is None else res.status.name.lower(),
            time=fmt_time(seconds),
        )
        rows.append(r)
        print(table([r], list(r)).splitlines()[-1], flush=True)
        return errs

    ident = np.tile([1.0, 0, 0, 0, 1, 0], (args.frames, 1))
    res, t = timed(lambda: dynamics.fit(ph.frames, ph.times, ph.omega, **common), sync)
    row("none", bk.to_numpy(res.curves), ident, t)
    none_curves = bk.to_numpy(res.curves)
    pre, t_pre = timed(lambda: dynamics.frame_by_frame(ph.frames, ph.omega, backend=bk), sync)
    w_pre = bk.to_numpy(pre.w)
    row("SSD frame-by-frame", frame_curves(bk.to_numpy(pre.registered), ph, names), w_pre, t_pre)
    res, t = timed(lambda: dynamics.fit(ph.frames, ph.times, ph.omega, w=pre.w, **common), sync)
    row("SSD + fit", bk.to_numpy(res.curves), w_pre, t)
    ssd_curves = bk.to_numpy(res.curves)
    coupled = {}
    for method in args.methods:
        if method == "lap" and not hasattr(multireg.separable, "lap"):
            continue
        res, t = timed(
            lambda method=method: dynamics.solve(
                ph.frames, ph.times, ph.omega, w0=pre.w, method=method, **common
            ),
            sync,
        )
        coupled[method] = bk.to_numpy(res.curves)
        row(f"coupled {method}", coupled[method], bk.to_numpy(res.w), t, res)
    basis = dict(model="basis", basis="pca", n_basis=3)
    res, t = timed(
        lambda: dynamics.solve(ph.frames, ph.times, ph.omega, w0=pre.w, **basis, **common),
        sync,
    )
    row("coupled varpro, basis (PCA 3)", bk.to_numpy(res.curves), bk.to_numpy(res.w), t, res)
    res = dynamics.fit(ph.frames, ph.times, ph.omega, w=ph.w, **common)
    row("oracle (true motions)", bk.to_numpy(res.curves), ph.w, float("nan"))
    if noise == 0.01 and contrast == 1.0 and not figure_data:
        figure_data.update(
            ph=ph, names=names, none=none_curves, ssd=ssd_curves, coupled=coupled, bk=bk.name
        )
    return rows


def curves_figure(data):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ph, names = data["ph"], data["names"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), sharex=True)
    for i, (ax, n) in enumerate(zip(np.atleast_1d(axes), names, strict=True)):
        ax.plot(ph.times, ph.curves[n], "k-", lw=2, label="truth")
        ax.plot(ph.times, data["none"][:, i], "x", color="0.6", label="no registration")
        ax.plot(ph.times, data["ssd"][:, i], "s", mfc="none", color="tab:orange", label="SSD + fit")
        for method, c in data["coupled"].items():
            ax.plot(ph.times, c[:, i], ".", ms=5, label=f"coupled {method}")
        ax.set_title(n)
        ax.set_xlabel("t (s)")
    np.atleast_1d(axes)[0].set_ylabel("enhancement")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(f"kidney phantom, 1 % noise ({data['bk']})", fontsize=9)
    OUT.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(OUT / "dynamics_curves.png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------- VFA


def load_vfa():
    """mdreg's VFA.pkl as a dict, or None: from an installed mdreg (found, not imported) or
    an mdreg wheel in $MULTIREG_MDREG or ~/.cache/multireg."""
    raw = None
    spec = importlib.util.find_spec("mdreg")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "datafiles" / "VFA.pkl"
        if path.exists():
            raw = path.read_bytes()
    if raw is None:
        for place in (os.environ.get("MULTIREG_MDREG", ""), str(Path.home() / ".cache/multireg")):
            wheels = sorted(glob.glob(os.path.join(place, "mdreg-*.whl")))
            if wheels:
                with zipfile.ZipFile(wheels[-1]) as z:
                    raw = z.read("mdreg/datafiles/VFA.pkl")
                break
    if raw is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickled with an older NumPy
        return pickle.loads(raw)  # mdreg's own data file


def vfa_rows(bk, slices):
    data = load_vfa()
    if data is None:
        print(
            "VFA: mdreg's VFA.pkl not found "
            "(pip download mdreg==0.5.4 --no-deps -d ~/.cache/multireg); skipped"
        )
        return [], None
    h = data["spacing"]
    times = np.asarray(data["FA"], dtype=np.float64)
    rows, shown = [], None
    model = dict(model="basis", basis="pca", n_basis=2, backend=bk)
    for z in slices:
        frames = np.moveaxis(np.asarray(data["array"][:, :, z, :], dtype=np.float64), -1, 0)
        omega = (0.0, frames.shape[1] * h[0], 0.0, frames.shape[2] * h[1])
        before = dynamics.fit(frames, times, omega, **model)
        pre = dynamics.frame_by_frame(frames, omega, backend=bk)
        ssd = dynamics.fit(frames, times, omega, w=pre.w, **model)
        results = {}
        for motion, extra in (("affine", {}), ("nonparametric", dict(p=(6, 6), beta=1.0))):

            def run(frames=frames, omega=omega, motion=motion, extra=extra):
                return dynamics.solve(
                    frames, times, omega, motion=motion, w0="identity", **model, **extra
                )

            results[motion] = timed(run, bk.sync)
        r = dict(
            slice=z,
            backend=bk.name,
            before=f"{before.fit_residual:.4f}",
            ssd=f"{ssd.fit_residual:.4f}",
            **{
                f"coupled {k}": f"{v[0].fit_residual:.4f} ({fmt_time(v[1])}, {v[0].iterations} it)"
                for k, v in results.items()
            },
        )
        rows.append(r)
        print(table([r], list(r)).splitlines()[-1], flush=True)
        if shown is None:
            shown = (z, frames, before, results["nonparametric"][0], bk)
    return rows, shown


def vfa_figure(shown, fa):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z, frames, before, after, bk = shown
    reg_b, mod_b = bk.to_numpy(before.registered), bk.to_numpy(before.model_images)
    reg_a, mod_a = bk.to_numpy(after.registered), bk.to_numpy(after.model_images)
    n = frames.shape[0]
    fig, axes = plt.subplots(4, n, figsize=(1.9 * n, 7.2))
    vmax = np.percentile(frames, 99.5)
    rmax = np.percentile(np.abs(reg_b - mod_b), 99.5)
    for k in range(n):
        panels = [
            (frames[k], "gray", 0, vmax, f"FA {fa[k]}°"),
            (reg_a[k], "gray", 0, vmax, "corrected"),
            (reg_b[k] - mod_b[k], "RdBu_r", -rmax, rmax, "residual before"),
            (reg_a[k] - mod_a[k], "RdBu_r", -rmax, rmax, "residual after"),
        ]
        for row, (img, cmap, lo, hi, title) in enumerate(panels):
            ax = axes[row, k]
            ax.imshow(img.T, cmap=cmap, vmin=lo, vmax=hi, origin="lower")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(
        f"mdreg VFA, slice {z}: basis model (2 PCA modes), nonparametric motion; fit residual "
        f"{before.fit_residual:.3f} → {after.fit_residual:.3f}",
        fontsize=8,
    )
    OUT.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(OUT / "dynamics_vfa.png", dpi=120)
    plt.close(fig)


# (pattern, seed, translation mm): several enhancement patterns, seeds and motion sizes
LARGE_MOTION = [
    ("study", 0, 12.0), ("study", 1, 12.0), ("kidneys", 2, 12.0), ("kidneys", 3, 20.0),
    ("late", 4, 12.0), ("weak", 5, 12.0), ("study", 6, 20.0),
]  # fmt: skip
QUICK_LARGE_MOTION = [("study", 0, 12.0), ("kidneys", 1, 12.0), ("late", 2, 20.0)]
# the study's regime (issue 14: rms displacement ≈ 13 cells, 6–22 per frame) on a 192×80 grid
# (1 mm cells): ±15 mm translation gives rms 12.5–14.6 cells, 5–22 per frame. Evaluation seeds
# 10–15; the solver's settings (the translation search: radius, 3 refined starts 2 cells apart)
# were chosen on development phantoms no table reports: large_motion_phantom ±20 mm, 96×40 × 25
# frames, seeds 100–104, and 48×20 × 6 frames, pattern kidneys, seeds 0–5.
STUDY_REGIME = [
    ("study", 10, 15.0), ("kidneys", 11, 15.0), ("late", 12, 15.0), ("weak", 13, 15.0),
    ("study", 14, 15.0), ("kidneys", 15, 15.0),
]  # fmt: skip


def _rms_cells(ph, m):
    """RMS true displacement over the frames k ≥ 1 and the cells, in cells."""
    from multireg.grid import Domain

    d = Domain(ph.omega, m)
    h = d.h[0]
    _, rms = dynamics.motion_error(np.tile([1.0, 0, 0, 0, 1, 0], (len(ph.w), 1)), ph.w,
                                     ph.omega, m)  # fmt: skip
    return rms * np.sqrt(len(ph.w) / (len(ph.w) - 1)) / h


def large_motion_rows(args, bk, pattern, seed, translation):
    """Issue 14's regime (:func:`multireg.dynamics.large_motion_phantom`). Rows: the oracle
    (the regions fit at the true motions) with and without the field-of-view objective; the
    coupled VarPro solve with ``fov`` from the identity, coarse to fine (the default: no
    pre-registration, nothing relies on contrast-free early frames); and the old objective
    (``fov=False``) from the truth. J(true)/J: the objective (the row's own) at the true motions
    over the objective at the returned ones; J(true)/J(old): the fov objective at the truth over
    the fov objective at the old objective's returned motions."""
    m = (args.lm_size[0], args.lm_size[1])
    ph = dynamics.large_motion_phantom(m=m, n_frames=args.lm_frames, noise=0.01, seed=seed,
                                       pattern=pattern, translation=translation)  # fmt: skip
    names = tuple(ph.weights)
    common = dict(masks=ph.weights, backend=bk)
    oracles = {fov: dynamics.fit(ph.frames, ph.times, ph.omega, w=ph.w, fov=fov, **common)
               for fov in (True, False)}  # fmt: skip
    oracle_err = curve_errors(bk.to_numpy(oracles[True].curves), ph, names)
    rows = []
    cells = _rms_cells(ph, m)

    def row(label, res, fov, seconds=None, old=None):
        errs = curve_errors(bk.to_numpy(res.curves), ph, names)
        e_rel, _ = dynamics.motion_error(bk.to_numpy(res.w), ph.w, ph.omega, m)
        j_true = float(oracles[fov].objective)
        worst = max(errs[n] / max(oracle_err[n], 1e-12) for n in names)
        ok = all(errs[n] <= 0.05 for n in names) and worst <= 2.0
        r = dict(
            pattern=pattern,
            seed=str(seed),
            rms=f"{cells:.1f}",
            backend=bk.name,
            method=label,
            **{n: f"{100 * errs[n]:.1f} %" for n in names},
            **{"max/oracle": f"{worst:.2f}"},
            motion=f"{100 * e_rel:.1f} %",
            **{"J(true)/J": f"{j_true / float(res.objective):.4f}"},
            **{"J(true)/J(old)": "" if old is None else f"{j_true / old:.3f}"},
            target="" if label.startswith("oracle") else ("met" if ok else "MISSED"),
            status="" if label.startswith("oracle") else res.status.name.lower(),
            time="" if seconds is None else f"{seconds:.0f} s",
        )
        rows.append(r)
        print(table([r], list(r)).splitlines()[-1], flush=True)

    row("oracle, fov", oracles[True], True)
    row("oracle, no fov", oracles[False], False)
    if args.lm_no_old:
        t = time.perf_counter()
        res = dynamics.solve(ph.frames, ph.times, ph.omega, **common)
        row("coupled, fov, identity c2f", res, True, time.perf_counter() - t)
        return rows
    t = time.perf_counter()
    old = dynamics.solve(ph.frames, ph.times, ph.omega, w0=ph.w, fov=False, **common)
    t_old = time.perf_counter() - t
    # the fov objective at the old objective's answer
    j_old = float(dynamics.fit(ph.frames, ph.times, ph.omega, w=bk.to_numpy(old.w), fov=True,
                               **common).objective)  # fmt: skip
    t = time.perf_counter()
    res = dynamics.solve(ph.frames, ph.times, ph.omega, **common)
    row("coupled, fov, identity c2f", res, True, time.perf_counter() - t, old=j_old)
    row("no fov, from truth", old, False, t_old)
    return rows


def large_motion_text(args, backends):
    cases = QUICK_LARGE_MOTION if args.quick else LARGE_MOTION
    if args.study_regime:
        cases = STUDY_REGIME
    if args.lm_cases:
        cases = [cases[int(i)] for i in args.lm_cases.split(",")]
    rows = []
    for i, name in enumerate(backends):
        bk = multireg.get_backend(name)
        # the later backends on a subset (runtime): the first three cases
        for pattern, seed, translation in cases if i == 0 else cases[:3]:
            rows += large_motion_rows(args, bk, pattern, seed, translation)
    columns = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    return (
        "\n## Large motion, frames cropped after motion (issue 14)\n\n"
        f"large_motion_phantom {args.lm_size[0]}×{args.lm_size[1]} × {args.lm_frames} frames, "
        "1 % noise: rotation ±6°, scale 0.9–1.1, translation ±12, ±15 or ±20 mm, field of view "
        "[−96, 96]×[−20, 60] mm cutting the body, kidneys near its edge; rms: the true "
        "displacement's RMS in cells. Regions model (α = 0.01 s), affine. Curve errors "
        "‖α̂ − α‖/‖α‖ (blank where the pattern has no such region); max/oracle: the worst "
        "region's error over the fov oracle's; target: every region within 5 % and within 2× "
        "the oracle. J(true)/J: the row's objective at the true motions over its value at the "
        "returned ones (> 1: the objective prefers the returned motion; with noise the "
        "minimiser is not the truth, so a value just above 1 is expected: the noise and the "
        "interpolation error it fits); J(true)/J(old): the fov objective at the truth over the "
        "fov objective at the old objective's answer (< 1: the new objective prefers the "
        "truth to it). Times: one cold run each (JAX's include its compilation; a 2-core "
        "machine shared with other jobs).\n\n"
        + table(rows, columns) + "\n"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64², 12 frames, 3 cases")
    parser.add_argument("--backend", default="jax,torch", help="comma-separated backends")
    parser.add_argument("--methods", default="varpro,lap,bcd")
    parser.add_argument("--no-vfa", action="store_true", help="skip the real-data part")
    parser.add_argument("--slices", default="12,16,20", help="VFA slices")
    parser.add_argument(
        "--large-motion-only", action="store_true", help="only the issue-14 large-motion table"
    )
    parser.add_argument("--lm-m", default="", help="large-motion grid, e.g. 192x80")
    parser.add_argument("--lm-cases", default="", help="only these large-motion case indices")
    parser.add_argument(
        "--study-regime", action="store_true",
        help="the large-motion table on the study's regime (192×80, ±15 mm, seeds 10-15)",
    )  # fmt: skip
    parser.add_argument(
        "--lm-no-old", action="store_true", help="skip the old objective's row (runtime)"
    )
    args = parser.parse_args(argv)
    args.size, args.frames = (64, 12) if args.quick else (128, 25)
    args.lm_size, args.lm_frames = ((48, 40), 10) if args.quick else ((96, 40), 25)
    if args.study_regime and not args.lm_m:
        args.lm_m = "192x80"
    if args.lm_m:
        args.lm_size = tuple(int(v) for v in args.lm_m.split("x"))
    if args.large_motion_only:
        text = "# Dynamics benchmark\n" + large_motion_text(args, args.backend.split(","))
        print(text)
        name = "dynamics_large_motion" + (f"_{args.lm_m}" if args.lm_m else "")
        name += "_study_regime" if args.study_regime else ""
        print(f"written to {write_report(name, text)}")
        return
    args.methods = args.methods.split(",")
    cases = QUICK_CASES if args.quick else CASES
    t0 = time.perf_counter()
    rows, figure_data = [], {}
    for name in args.backend.split(","):
        bk = multireg.get_backend(name)
        for noise, contrast in cases:
            rows += phantom_rows(args, bk, noise, contrast, figure_data)
    if figure_data:
        curves_figure(figure_data)
    names = [k for k in rows[0] if k not in ("noise", "contrast", "backend", "method")]
    names = names[: names.index("motion")]
    text = (
        "# Dynamics benchmark\n\n"
        f"Kidney phantom {args.size}² × {args.frames} frames (2.4 s apart), random affine "
        "motions (±6°, scale 0.9–1.1, ±5 mm). Columns per region: ‖α̂ − α‖/‖α‖; motion: RMS "
        "displacement error / RMS true displacement, and in mm (pixel 2.5 mm at 128²). Warm "
        "times; coupled solves start from the SSD motions (their time is the SSD row's). "
        "Defaults: regions α = 0.01 s, FAIR stopping rules tol_j 1e-4, tol_y 1e-3, tol_g 1e-2, "
        "max_iter 20.\n\n" + table(rows, [*COLUMNS[:4], *names, *COLUMNS[4:]]) + "\n"
    )
    text += large_motion_text(args, args.backend.split(","))
    if not args.no_vfa:
        vrows = []
        for name in args.backend.split(",")[:1]:
            vr, shown = vfa_rows(
                multireg.get_backend(name), [int(s) for s in args.slices.split(",")]
            )
            vrows += vr
            if shown is not None:
                vfa_figure(shown, load_vfa()["FA"])
        if vrows:
            text += (
                "\n## mdreg VFA (real data, no ground truth)\n\n"
                "Basis model (2 PCA modes of the uncorrected frames, α = 0.1 mm²), the flip "
                "angle as the 'time' axis; fit residual ‖d(y) − I‖/‖d(y)‖ over the slice: "
                "before correction, after frame-by-frame SSD (affine, to FA 2°) with the model "
                "refitted, and after the coupled solve (VarPro; affine, and a 6×6-control-point "
                "B-spline with β = 1). Warm times.\n\n" + table(vrows, list(vrows[0])) + "\n"
            )
    print(text)
    path = write_report("dynamics", text)
    print(f"written to {path} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
