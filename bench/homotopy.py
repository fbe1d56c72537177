"""Homotopy in θ vs multiscale continuation vs single scale: the hands experiment of Watson et al.

    python bench/homotopy.py [--quick] [--suite all|hands|unseen|speed] [--backends jax,torch]
                             [--threads N] [--fair-data DIR]

Reproduces experiment 1 of Watson, Cherry, Lang, Ruthotto, "Applications of Automatic
Differentiation in Image Registration" (arXiv 2411.02806; shared/background/paper-and-code.md
A.2, A.7, A.8, D.1, D.3):

* data: FAIR's hands (128², omega = (0, 20, 0, 25)) resized to m = 32 with Pillow's bicubic
  filter on the 8-bit images, as the study did (``Image.resize((32, 32))``, bicubic for mode L);
  the template is rotated by 180° (the study's ``flipud`` of its raw-oriented array, which is
  ``T[::-1, ::-1]`` in FAIR's orientation), so the solution is a rotation of about 150°. Without
  Pillow the images are block-averaged to level 5 (``multireg.multilevel``) instead. Without
  FAIR's images (``--fair-data`` or ``MULTIREG_FAIR_DATA``) a synthetic pair stands in: blobs on
  the same domain, the template being the reference rotated by 150° and scaled by 0.95 about the
  centre (resampled with multireg's spline model).
* problem: affine, SSD (ψ = ½·hd·‖r‖²; the study's values, without the ½, are 2ψ), both images
  spline-smoothed with the same θ, θ from 1e3 to 1e-3 in 40 geometric values, Newton corrector
  (exact Hessian, Armijo), stopped when ‖∇J‖ ≤ 1e-9·(1 + J(identity, θ)).
* methods: single scale (corrector at θ = 1e-3 only), multiscale continuation (predictor
  "none"), tangent predictor with the exact Hessian (the study's method), tangent with the
  Gauss–Newton Hessian (consistently scaled, hd·JᵀJ), secant, and the adaptive tangent step.

Table 1 (per backend): final SSD, whether the global minimiser was reached, θ points, total
corrector iterations (rejected adaptive trials included), median predictor error and warm time
(median of repeated runs; the first call, which compiles JAX's kernels, is reported separately).
The global minimiser is defined as the lowest final SSD found by any method from any start in
this run; a run reached it if its final SSD is within 1% of that value.

Table 2: success over initial rotations φ = 0°, 10°, ..., 350° (``--quick``: every 30°). The
start is the map w0 = rotation by φ about the domain centre (a rigid w0, not a resampled
template): the problem and its global minimiser stay the same for every φ, so "reached the global
minimiser" means the same thing in every column, and no image content is lost at the corners. One
backend (the first of ``--backends``): torch and JAX follow the same path to 1e-8
(tests/test_homotopy.py), so only time would differ.

Table 3: the same, with the path started at θ = 100 and θ = 10 (40 values down to 1e-3, starts
every 20°; ``--quick``: every 180°) for multiscale, the two tangent predictors and the adaptive
step: the full range makes the first problem so smooth that every continuation method succeeds,
and a shorter range shows where they begin to differ.

Table 4 (``--suite unseen``, issue 14): success over images and rotations that no default was
tuned on. Images: four-blob images (``multireg.data.blobs``, seeds 10, 11, 12), a text-like image
(letters drawn with Pillow's default font) and scikit-image's camera, coins and astronaut (grey),
each resized to m² (Pillow bicubic), scaled to [0, 1] and multiplied by a smooth disc window so
that a rotation about the centre keeps all of its content; domain: the hands' (0, 20, 0, 25). The
template is the reference rotated by φ ∈ {30°, 90°, 150°, 170°} about the centre (resampled with
multireg's spline model), so the solution is the rotation by φ; a run succeeds if the rotation
closest to its final map is within 1° of φ. Rigid (``--quick``) and affine, from the identity:
single scale (θ = 1e-3), multiscale (predictor none) and homotopy (tangent, exact H) with the
study's θ_max = 1e3 and with θ_max from the data (the default), and each of the three with
``starts=5`` (rotations by 0°, 72°, 144°, 216°, 288°: none of them a true φ). "folded": paths
that recorded a fold or bifurcation (for several starts: the returned one).

Table 5 (``--suite speed``, issue 13.5): warm time of each backend, side by side in one run, on
the hands affine MLPIR and elastic MLIR (FAIR's settings) and the table-1 homotopy, with the ratio
to the first backend and the homotopy's time split (corrector, predictor, folds).

Threads: every library gets ``--threads`` threads (default 1). These problems are tiny (1024
points, 6 parameters): BLAS and intra-op threads only add synchronisation, which on a shared
machine costs far more than it saves.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPORT = "homotopy"
THETA_RANGE = (1e3, 1e-3)
N_THETAS = 40
M = 32
GLOBAL_RTOL = 0.01


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="starts every 30°, fewer warm runs")
    p.add_argument(
        "--suite",
        choices=("all", "hands", "unseen", "speed"),
        default="all",
        help="the hands experiment (tables 1-3), the unseen images (table 4), both, or the "
        "torch-vs-JAX speed table alone (table 5)",
    )
    p.add_argument("--backends", default="jax,torch", help="comma-separated (default jax,torch)")
    p.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    p.add_argument("--fair-data", default=None, help="FAIR's image folder (or MULTIREG_FAIR_DATA)")
    return p.parse_args(argv)


def pin_threads(n: int) -> None:
    """Thread counts must be set before NumPy, JAX and torch start their pools."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if n == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    pin_threads(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fmt_time, measure, table, write_report  # noqa: E402

import multireg  # noqa: E402
from multireg.data import blobs, fair_data_dir, load_fair  # noqa: E402
from multireg.problems.homotopy import homotopy  # noqa: E402

METHODS = {
    "single scale": dict(thetas=[THETA_RANGE[1]]),
    "multiscale (predictor none)": dict(predictor="none"),
    "tangent, exact H": dict(predictor="tangent"),
    "tangent, Gauss–Newton H": dict(predictor="tangent", hessian="gauss-newton"),
    "secant": dict(predictor="secant"),
    "adaptive tangent, exact H": dict(predictor="tangent", step="adaptive"),
}

SHORT_STARTS = (1e2, 1e1)
SHORT_METHODS = {
    k: METHODS[k]
    for k in (
        "multiscale (predictor none)",
        "tangent, exact H",
        "tangent, Gauss–Newton H",
        "adaptive tangent, exact H",
    )
}

# The study's numbers (paper-and-code.md D.1, rerun of the authors' script; trust-ncg corrector)
PUBLISHED = [
    "Published (Watson et al., rerun of their script, paper-and-code.md D.1): single scale 54",
    "trust-ncg iterations, local minimum, SSD 9.113e5; multiscale 739 iterations, 211 s;",
    "homotopy 560 iterations, 102 s; both SSD 1.99055e5 (without the ½), w* = [−0.7084, −0.4366,",
    "22.7181, 0.4544, −0.9378, 18.9536] in FAIR's layout. Their CSV (50 timing runs on unnamed",
    "hardware): homotopy 21.9 s, multiscale 25.8 s (means).",
]


# ------------------------------------------------------------------------------------- data


def hands(folder):
    """FAIR's hands at 32², template rotated by 180°: (T, R, omega, description)."""
    T, R, domain = load_fair("hands", folder)
    try:
        from PIL import Image

        def resize(a):
            image = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
            return np.asarray(image.resize((M, M), Image.Resampling.BICUBIC), dtype=np.float64)

        T32, R32 = resize(T), resize(R)
        how = "Pillow bicubic resize of the 8-bit images (the study's choice)"
    except ImportError:
        level = next(lv for lv in multireg.multilevel(domain, T, R) if lv.domain.m == (M, M))
        T32, R32 = level.images
        how = "block averaging to level 5 (Pillow not installed)"
    description = f"FAIR hands 128² → 32² by {how}, template rotated by 180°"
    return T32[::-1, ::-1].copy(), R32, domain.omega, description


def synthetic():
    """Blobs on the hands domain; T = R rotated by 150° and scaled by 0.95 about the centre."""
    R, domain = blobs((M, M), (0.0, 20.0, 0.0, 25.0), seed=4)
    c = np.array([10.0, 12.5])
    a = np.deg2rad(150.0)
    A = 0.95 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    x = domain.cell_centers()
    T = multireg.spline_interpolate(multireg.spline_coefficients(R), domain, (x - c) @ A.T + c)
    description = (
        "synthetic blobs (FAIR's images not found), template = reference rotated by 150° and "
        "scaled by 0.95 about the centre"
    )
    return T.reshape(M, M), R, domain.omega, description


def rotation_start(phi_deg, omega):
    """Affine parameters (FAIR's layout) of the rotation by φ about the domain centre."""
    c = np.array([(omega[0] + omega[1]) / 2, (omega[2] + omega[3]) / 2])
    a = np.deg2rad(phi_deg)
    Q = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    b = c - Q @ c
    return np.array([Q[0, 0], Q[0, 1], b[0], Q[1, 0], Q[1, 1], b[1]])


# ------------------------------------------------------------------------------------ bench


def run(T, R, omega, backend, w0=None, theta_range=THETA_RANGE, **options):
    if "thetas" in options:
        theta_range, n_steps = None, None
    else:
        n_steps = N_THETAS
    return homotopy(
        T, R, omega, transform="affine", theta_range=theta_range, n_steps=n_steps,
        backend=backend, w0=w0, **options,
    )  # fmt: skip


def table1(T, R, omega, backends, quick):
    """One row per (backend, method); returns the rows and every final (SSD, w)."""
    rows, finals = [], []
    for name in backends:
        bk = multireg.get_backend(name)
        if name == "torch":
            import torch

            torch.set_num_threads(ARGS.threads)
        t0 = time.perf_counter()
        run(T, R, omega, bk)  # compiles (JAX) / warms up (torch) the shared kernels
        first = time.perf_counter() - t0
        for method, options in METHODS.items():
            results = []

            def once(options=options, results=results, bk=bk):
                results.append(run(T, R, omega, bk, **options))
                return results[-1].w

            runs = 1 if name == "torch" else (2 if quick else 5)
            _, warm = measure(once, sync=bk.sync, min_time=0.0, max_runs=runs, min_runs=runs)
            res = results[-1]
            errors = res.predictor_errors[1:]
            finals.append((res.distance, res.ws[-1]))
            rows.append(
                dict(
                    backend=name,
                    method=method,
                    SSD=f"{res.distance:.6e}",
                    **{"2·SSD (study)": f"{2 * res.distance:.5e}"},
                    points=len(res.path),
                    iterations=res.corrector_iterations,
                    rejected=res.rejected,
                    **{"median δ (cells)": f"{np.median(errors):.3f}" if errors.size else "—"},
                    status=res.status.value,
                    **{"failed steps": sum(pt.status.value != "converged" for pt in res.path)},
                    warm=fmt_time(warm),
                    _distance=res.distance,
                )
            )
        rows.append(dict(backend=name, method="(first call, compiling)", warm=fmt_time(first)))
    return rows, finals


def table2(T, R, omega, backend, angles, methods=METHODS, theta_range=THETA_RANGE):
    outcomes = {}
    for method, options in methods.items():
        started = time.perf_counter()
        runs = [
            run(
                T,
                R,
                omega,
                backend,
                w0=rotation_start(a, omega),
                theta_range=theta_range,
                **options,
            )
            for a in angles
        ]
        outcomes[method] = (runs, time.perf_counter() - started)
    return outcomes


def summarise(outcomes, reached):
    rows = []
    for method, (runs, seconds) in outcomes.items():
        ok = [reached(r.distance) for r in runs]
        its = [r.corrector_iterations for r in runs]
        rows.append(
            {
                "method": method,
                "reached global": f"{sum(ok)}/{len(ok)}",
                "iterations (sum)": sum(its),
                "iterations (median)": int(statistics.median(its)),
                "points (median)": int(statistics.median(len(r.path) for r in runs)),
                "time": fmt_time(seconds),
                "per start: ✓ reached, · not": "".join("✓" if o else "·" for o in ok),
            }
        )
    return rows


def hands_report(args, backends):
    """Tables 1-3: the hands experiment (Markdown)."""
    folder = args.fair_data or fair_data_dir()
    T, R, omega, data = hands(folder) if folder is not None else synthetic()
    angles = list(range(0, 360, 30 if args.quick else 10))
    started = time.perf_counter()

    rows, finals = table1(T, R, omega, backends, args.quick)
    outcomes = table2(T, R, omega, backends[0], angles)
    short_angles = angles[:: 6 if args.quick else 2]  # quick: 0°, 180°
    shorter = {
        hi: table2(T, R, omega, backends[0], short_angles, SHORT_METHODS, (hi, THETA_RANGE[1]))
        for hi in SHORT_STARTS
    }
    every = [outcomes, *shorter.values()]
    all_finals = finals + [
        (r.distance, r.ws[-1]) for o in every for runs, _ in o.values() for r in runs
    ]
    best, w_best = min(all_finals, key=lambda f: f[0])

    def reached(distance):
        return distance <= (1 + GLOBAL_RTOL) * best

    for row in rows:
        if "_distance" in row:
            row["global"] = "yes" if reached(row.pop("_distance")) else "no"
    columns = ["backend", "method", "SSD", "2·SSD (study)", "global", "points", "iterations",
               "rejected", "median δ (cells)", "status", "failed steps", "warm"]  # fmt: skip
    summary = summarise(outcomes, reached)
    sections = []
    for hi, out in shorter.items():
        sections += [
            f"#### θ from {hi:g} to {THETA_RANGE[1]:g} ({N_THETAS} values), "
            f"{len(short_angles)} starts every {short_angles[1] - short_angles[0]}°",
            "",
            table(summarise(out, reached), list(summary[0])),
            "",
        ]
    total = time.perf_counter() - started
    w_text = ", ".join(f"{v:.4f}" for v in w_best)
    text = "\n".join(
        [
            "## The hands experiment (affine, SSD, m = 32)",
            "",
            f"Data: {data}. θ: {N_THETAS} geometric values "
            f"{THETA_RANGE[0]:g} → {THETA_RANGE[1]:g}; Newton corrector, "
            "‖∇J‖ ≤ 1e-9·(1 + J(id, θ)).",
            f"Global minimiser: lowest final SSD over all runs, {best:.6e} (2·SSD {2 * best:.6e}) "
            f"at w = [{w_text}]; 'global' = final SSD within {GLOBAL_RTOL:.0%} of it. "
            f"Threads per library: {args.threads}.",
            "",
            "### 1. From the identity, per backend",
            "",
            "δ: predictor error, RMS distance between predicted and corrected map in grid cells. "
            "iterations: all corrector iterations (rejected adaptive trials included). status: "
            "the corrector's at the last θ; failed steps: intermediate θ whose corrector did not "
            "converge (the path goes on from its last iterate). warm: median of repeated runs of "
            "the whole path.",
            "",
            table(rows, columns),
            "",
            *PUBLISHED,
            "",
            f"### 2. Success over initial rotations ({backends[0]}, {len(angles)} starts, "
            f"φ = {angles[0]}°..{angles[-1]}° every {angles[1] - angles[0]}°)",
            "",
            "Start: w0 = rotation by φ about the domain centre (same problem, same global "
            "minimiser for every φ).",
            "",
            table(summary, list(summary[0])),
            "",
            "### 3. Sensitivity: the same starts with a shorter θ range",
            "",
            "Starting the path at a smaller θ leaves some local minimisers in the first problem; "
            "this is where the methods begin to differ.",
            "",
            *sections,
            f"Bench time: {total:.0f} s.",
            "",
        ]
    )
    return text


# ----------------------------------------------------------------------- table 4: unseen images

HANDS_OMEGA = (0.0, 20.0, 0.0, 25.0)
UNSEEN_ANGLES = (30.0, 90.0, 150.0, 170.0)
SUCCESS_DEGREES = 1.0
UNSEEN_STARTS = 5


def _disc_window(m):
    """1 inside radius 0.35 (unit square), a cosine taper to 0 at 0.45: content that a rotation
    about the centre keeps inside the image."""
    u = (np.arange(m) + 0.5) / m - 0.5
    r = np.hypot(*np.meshgrid(u, u, indexing="ij"))
    t = np.clip((r - 0.35) / 0.1, 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * t))


def _resize(a, m):
    """Pillow bicubic resize of a 2D array (square centre crop first), scaled to [0, 1]."""
    from PIL import Image

    a = np.asarray(a, dtype=np.float64)
    n = min(a.shape)
    i, j = (a.shape[0] - n) // 2, (a.shape[1] - n) // 2
    a = a[i : i + n, j : j + n]
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
    image = Image.fromarray(a.astype(np.float32), mode="F")
    out = np.asarray(image.resize((m, m), Image.Resampling.BICUBIC), dtype=np.float64)
    return (out - out.min()) / max(out.max() - out.min(), 1e-12)


def _text_image(m):
    """Letters drawn with Pillow's default font, resized to m²."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("L", (64, 64), 0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((14, 14), "Fig", fill=255, font=font)
    draw.text((20, 32), "R7k", fill=255, font=font)
    return _resize(np.asarray(canvas), m)


def unseen_images(m):
    """{name: (family, image)}: images in [0, 1], disc-windowed, shape (m, m)."""
    images = {}
    for seed in (10, 11, 12):
        R, _ = blobs((m, m), HANDS_OMEGA, n_blobs=4, seed=seed)
        images[f"blobs {seed}"] = ("blobs", R)
    try:
        images["text"] = ("text", _text_image(m))
    except ImportError:
        pass
    try:
        from skimage import color, data

        natural = {
            "camera": data.camera(),
            "coins": data.coins(),
            "astronaut": color.rgb2gray(data.astronaut()),
        }
        for name, a in natural.items():
            images[name] = ("natural", _resize(a, m))
    except ImportError:
        pass
    window = _disc_window(m)
    return {k: (family, a * window) for k, (family, a) in images.items()}


def rotated_template(R, degrees):
    """T with T(y(x)) = R(x) for y the rotation by ``degrees`` about the domain's centre."""
    domain = multireg.Domain(HANDS_OMEGA, R.shape)
    c = np.array(domain.lower) + np.array(domain.extent) / 2
    a = np.deg2rad(degrees)
    Q = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    x = domain.cell_centers()
    T = multireg.spline_interpolate(multireg.spline_coefficients(R), domain, (x - c) @ Q + c)
    return np.asarray(T).reshape(R.shape)


def rotation_of(res):
    """The rotation (degrees in [0, 360)) closest to the linear part of the final map."""
    bk = multireg.get_backend(res.backend)
    domain = multireg.Domain(HANDS_OMEGA, res.warped.shape)
    c = np.array(domain.lower) + np.array(domain.extent) / 2
    pts = c + np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = bk.to_numpy(res.transform(bk.asarray(res.ws[-1]), bk.asarray(pts)))
    A = np.stack([y[1] - y[0], y[2] - y[0]], axis=1)
    return float(np.rad2deg(np.arctan2(A[1, 0] - A[0, 1], A[0, 0] + A[1, 1])) % 360)


UNSEEN_METHODS = {
    "single scale": dict(thetas=[THETA_RANGE[1]]),
    "multiscale, θ_max = 1e3": dict(predictor="none", theta_range=THETA_RANGE),
    "multiscale, θ_max from data": dict(predictor="none"),
    "homotopy, θ_max = 1e3": dict(predictor="tangent", theta_range=THETA_RANGE),
    "homotopy, θ_max from data": dict(predictor="tangent"),
    f"single scale, {UNSEEN_STARTS} starts": dict(thetas=[THETA_RANGE[1]], starts=UNSEEN_STARTS),
    f"multiscale, θ_max from data, {UNSEEN_STARTS} starts": dict(
        predictor="none", starts=UNSEEN_STARTS
    ),
    f"homotopy, θ_max from data, {UNSEEN_STARTS} starts": dict(
        predictor="tangent", starts=UNSEEN_STARTS
    ),
}


def unseen_table(backend, transform, m, n_steps, images, angles):
    """Rows (one per method) of success counts per image family."""
    families = sorted({f for f, _ in images.values()}, key=["blobs", "text", "natural"].index)
    rows = []
    for method, options in UNSEEN_METHODS.items():
        options = dict(options)
        if "thetas" not in options:
            options["n_steps"] = n_steps
        hits = {f: [] for f in families}
        marks, folded, theta_max, seconds = [], 0, [], 0.0
        for family, R in images.values():
            for phi in angles:
                T = rotated_template(R, phi)
                started = time.perf_counter()
                res = homotopy(T, R, HANDS_OMEGA, transform=transform, backend=backend, **options)
                seconds += time.perf_counter() - started
                error = abs((rotation_of(res) - phi + 180) % 360 - 180)
                ok = error <= SUCCESS_DEGREES
                hits[family].append(ok)
                marks.append("✓" if ok else "·")
                folded += res.folded
                theta_max.append(res.thetas[0])
            marks.append(" ")
        total = sum(sum(v) for v in hits.values())
        n = sum(len(v) for v in hits.values())
        rows.append(
            {
                "method": method,
                **{f: f"{sum(v)}/{len(v)}" for f, v in hits.items()},
                "all": f"{total}/{n}",
                "folded": folded,
                "θ_max (median)": f"{statistics.median(theta_max):.3g}",
                "time": fmt_time(seconds),
                "per image, per φ": "".join(marks).strip(),
            }
        )
    return rows


def unseen_report(args, backends):
    """Table 4: images and rotations not tuned on (Markdown)."""
    m = M
    transforms = ("rigid",) if args.quick else ("rigid", "affine")
    n_steps = 20 if args.quick else N_THETAS
    images = unseen_images(m)
    angles = UNSEEN_ANGLES
    started = time.perf_counter()
    sections = []
    for name in backends if not args.quick else backends[:1]:
        bk = multireg.get_backend(name)
        for transform in transforms:
            rows = unseen_table(bk, transform, m, n_steps, images, angles)
            sections += [
                f"### {transform}, {name}",
                "",
                table(rows, list(rows[0])),
                "",
            ]
    total = time.perf_counter() - started
    return "\n".join(
        [
            f"## 4. Images and rotations not tuned on (m = {m}, {n_steps} θ values)",
            "",
            f"Images, in the order of the last column: {', '.join(images)}; rotations φ = "
            f"{', '.join(f'{a:g}°' for a in angles)} per image. Success: the rotation closest to "
            f"the final map within {SUCCESS_DEGREES:g}° of φ. Every run starts at the identity "
            f"(several starts: rotations by 360°·k/{UNSEEN_STARTS} about the centre, the lowest "
            "final J returned). folded: runs whose (returned) path recorded a fold or "
            "bifurcation; θ_max: the first θ of the path (single scale: the only one).",
            "",
            *sections,
            f"Table 4 time: {total:.0f} s.",
            "",
        ]
    )


def speed_report(args, backends):
    """Table 5 (issue 13.5): warm time of each backend on the hands, side by side in one run —
    affine MLPIR and elastic MLIR with FAIR's settings (128², levels 3..7, 10 iterations per
    level) and the homotopy of table 1 (tangent, exact H) — with the ratio to the first backend
    and, for the homotopy, where the time goes (the result's timings)."""
    folder = args.fair_data or fair_data_dir()
    if folder is None:
        return "## Table 5: speed\n\nFAIR's hands not found (--fair-data): skipped.\n"
    T128, R128, domain = load_fair("hands", folder)
    T, R, omega, _ = hands(folder)
    fair = dict(theta=0.1, levels=(3, 7), max_iter=10)
    elastic = dict(
        transform="nonparametric", theta=1e-2, levels=(3, 7), pre_registration="affine",
        max_iter=10, regularizer="elastic", alpha=1e3, mu=1.0, lam=0.0,
    )  # fmt: skip
    cases = {
        "hands affine MLPIR": lambda bk: multireg.register(
            T128, R128, domain.omega, transform="affine", backend=bk, **fair
        ),
        "hands elastic MLIR": lambda bk: multireg.register(
            T128, R128, domain.omega, backend=bk, **elastic
        ),
        "homotopy hands 32²": lambda bk: run(T, R, omega, bk),
    }
    runs = 2 if args.quick else 3
    rows = []
    for case, fn in cases.items():
        reference = None
        for name in backends:
            bk = multireg.get_backend(name)
            if name == "torch":
                import torch

                torch.set_num_threads(args.threads)
            out = []
            first, warm = measure(
                lambda fn=fn, bk=bk, out=out: out.append(fn(bk)) or out[-1].w,
                sync=bk.sync, min_time=0.0, max_runs=runs, min_runs=runs,
            )  # fmt: skip
            reference = warm if reference is None else reference
            timings = getattr(out[-1], "timings", {}) if case.startswith("homotopy") else {}
            split = ", ".join(
                f"{k} {fmt_time(v)}" for k, v in timings.items() if k not in ("total", "choose θ")
            )
            rows.append(
                dict(
                    case=case, backend=name, first=fmt_time(first), warm=fmt_time(warm),
                    ratio=f"{warm / reference:.1f}×", **{"where (homotopy)": split},
                )
            )  # fmt: skip
    columns = ["case", "backend", "first", "warm", "ratio", "where (homotopy)"]
    return "\n".join([
        "## Table 5: warm time, torch eager vs JAX (issue 13.5)",
        "",
        f"Median of {runs} warm runs in this process after a first call (JAX compiles in it; "
        f"torch eager has nothing to compile); ratio to the first of --backends. Threads: "
        f"{args.threads}. Load average at the end: "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores.",
        "",
        table(rows, columns),
        "",
    ])  # fmt: skip


def main():
    args = ARGS
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    parts = ["# Homotopy in θ vs multiscale vs single scale", ""]
    if args.suite in ("all", "hands"):
        parts.append(hands_report(args, backends))
    if args.suite in ("all", "unseen"):
        parts.append(unseen_report(args, backends))
    if args.suite in ("all", "speed"):
        parts.append(speed_report(args, backends))
    text = "\n".join(parts)
    print(text)
    path = write_report(REPORT, text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
