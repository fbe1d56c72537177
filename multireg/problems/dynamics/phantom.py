"""Synthetic dynamic series with their truth: :func:`kidney_phantom` (a procedural kidney DCE
series, two-compartment kinetics driven by the study's AIF) and :func:`large_motion_phantom`
(issue 14's regime: large affine motion, organs near the edge, frames cropped after they moved).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from multireg import _checks
from multireg.grid import Domain
from multireg.problems.dynamics.problem import _pair

# ------------------------------------------------------------------------------- phantom


def study_aif(t: Any) -> np.ndarray:
    """The arterial input function of the dynamics study (paper-and-code.md §C.1):
    AIF(t) = 4 t^0.1 (e^{−(t−50)/50})² + 20 t/(t+1) e^{1/(t+1)} + sin(t/10) for t > 0, else 0
    (t in seconds; this reading reproduces the study's curve peaks 31.64 and 46.24)."""
    t = np.asarray(t, dtype=np.float64)
    tp = np.maximum(t, 1e-300)
    value = (
        4 * tp**0.1 * np.exp(-(tp - 50) / 50) ** 2
        + 20 * tp / (tp + 1) * np.exp(1 / (tp + 1))
        + np.sin(tp / 10)
    )
    return np.where(t > 0, value, 0.0)


def two_compartment(
    times: Any,
    *,
    flow: float,
    blood_volume: float,
    ps: float,
    ve: float,
    delay: float = 4.5,
    hematocrit: float = 0.4,
    aif: Callable[[np.ndarray], np.ndarray] = study_aif,
    dt: float = 0.005,
) -> np.ndarray:
    """Tissue concentration Q_P + Q_I of the study's two-compartment model at ``times``
    (paper-and-code.md §C.1; Sourbron & Buckley 2013):

        dQ_P/dt = F/(1−h) c_a(t−δ) − (PS + F)/(V_b(1−h)) Q_P + PS/V_e Q_I
        dQ_I/dt = PS/(V_b(1−h)) Q_P − PS/V_e Q_I,           Q(0) = 0,

    integrated by classical Runge–Kutta with step ``dt`` (s)."""
    t_out = np.asarray(times, dtype=np.float64)
    n = math.ceil(t_out.max() / dt) + 1
    grid = np.arange(n + 1) * dt
    h = hematocrit
    a11, a12 = -(ps + flow) / (blood_volume * (1 - h)), ps / ve
    a21, a22 = ps / (blood_volume * (1 - h)), -ps / ve
    A = np.array([[a11, a12], [a21, a22]])

    def source(t):
        return flow / (1 - h) * aif(np.asarray(t) - delay) * (np.asarray(t) > delay)

    Q = np.zeros(2)
    total = np.zeros(len(grid))
    for i in range(n):
        t = grid[i]
        s0, s1, s2 = source(t), source(t + dt / 2), source(t + dt)
        k1 = A @ Q + np.array([s0, 0.0])
        k2 = A @ (Q + dt / 2 * k1) + np.array([s1, 0.0])
        k3 = A @ (Q + dt / 2 * k2) + np.array([s1, 0.0])
        k4 = A @ (Q + dt * k3) + np.array([s2, 0.0])
        Q = Q + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        total[i + 1] = Q.sum()
    return np.interp(t_out, grid, total)


# (flow F_T, blood volume V_b, PS, V_e): the study's medulla and cortex (§C.1); the liver's are
# this project's choice (slow uptake)
KINETICS = {
    "medulla": (20.0, 0.40, 7.0, 0.15),
    "cortex": (30.0, 0.45, 12.0, 0.30),
    "liver": (2.0, 0.20, 0.08, 0.30),
}


@dataclass(frozen=True)
class Phantom:
    """A synthetic DCE series with its truth (NumPy arrays; see :func:`kidney_phantom`)."""

    frames: np.ndarray
    """(N, m1, m2) the data: moved, with noise."""
    times: np.ndarray
    omega: tuple[float, ...]
    masks: dict
    """name → (m1, m2) bool: the regions (partial-volume weight > ½) in the reference frame."""
    weights: dict
    """name → (m1, m2) partial-volume weights in [0, 1] (the exact model masks)."""
    curves: dict
    """name → (N,) the true enhancement α_r(t_k) added to the region."""
    w: np.ndarray
    """(N, 6) the true affine motions (FAIR layout, reference → frame); row 0 the identity."""
    clean: np.ndarray
    """(N, m1, m2) the noise-free frames in the reference frame: f_k = reference + Σ α W."""
    moved: np.ndarray
    """(N, m1, m2) the noise-free data: d_k(y(w_k, x)) = f_k(x)."""
    reference: np.ndarray
    """(m1, m2) the pre-contrast image."""
    aif_times: np.ndarray
    aif: np.ndarray
    """The tissue's arterial input c_a(t − δ) on a fine time grid (for :func:`kinetic_basis`)."""
    sigma: float
    """The noise's standard deviation (noise × the clean data's maximum)."""
    in_view: np.ndarray | None = None
    """(N, m1, m2) bool: whether y(w_k, x) lies inside the frames' field of view ω, i.e. whether
    frame k observes reference cell x at all (outside it the frame is unknown, not tissue)."""


def _ellipse_weight(points, centre, axes, angle, eps):
    """Smooth indicator of an ellipse: ½(1 + tanh(s/ε)), s ≈ the signed distance to the
    boundary (first order: −(ρ² − 1)/|∇ρ²|)."""
    c, s = math.cos(angle), math.sin(angle)
    d = points - np.asarray(centre)
    u1 = c * d[:, 0] + s * d[:, 1]
    u2 = -s * d[:, 0] + c * d[:, 1]
    f = (u1 / axes[0]) ** 2 + (u2 / axes[1]) ** 2 - 1
    grad = 2 * np.sqrt((u1 / axes[0] ** 2) ** 2 + (u2 / axes[1] ** 2) ** 2)
    dist = -f / np.maximum(grad, 1e-12)
    return 0.5 * (1 + np.tanh(np.clip(dist / eps, -50, 50)))


def _anatomy(points, L, eps, texture, organs):
    """(base, region weights) at physical points (n, 2): painter's layers of smooth ellipses."""
    tex = 1 + texture(points)
    layers = [("body", 70.0, _ellipse_weight(points, (0, 0), (0.42 * L, 0.31 * L), 0, eps))]
    if organs:
        layers += [
            ("liver", 60.0, _ellipse_weight(points, (-0.17 * L, -0.08 * L),
                                            (0.16 * L, 0.12 * L), 0.35, eps)),
            ("spine", 30.0, _ellipse_weight(points, (0, 0.19 * L), (0.05 * L, 0.05 * L), 0, eps)),
            ("aorta", 50.0, _ellipse_weight(points, (0.035 * L, 0.085 * L),
                                            (0.028 * L, 0.028 * L), 0, eps)),
        ]  # fmt: skip
    for side in (-1, 1):
        centre, angle = (side * 0.2 * L, 0.12 * L), side * 0.45
        layers.append(
            ("cortex", 100.0, _ellipse_weight(points, centre, (0.09 * L, 0.05 * L), angle, eps))
        )
        layers.append(
            ("medulla", 80.0, _ellipse_weight(points, centre, (0.055 * L, 0.027 * L), angle, eps))
        )
    effective = []
    for i, (name, value, W) in enumerate(layers):
        e = W.copy()
        for _, _, later in layers[i + 1 :]:
            e = e * (1 - later)
        effective.append((name, value, e))
    base = sum(v * e * tex for _, v, e in effective)
    regions = {}
    for name, _, e in effective:
        if name in ("body", "spine"):
            continue
        regions[name] = regions.get(name, 0) + e
    return base, regions


def kidney_phantom(
    m: tuple[int, int] = (128, 128),
    n_frames: int = 25,
    dt: float = 2.4,
    noise: float = 0.0,
    motion: bool = True,
    seed: int = 0,
    *,
    fov: float = 320.0,
    rotation: float = 6.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translation: float = 5.0,
    contrast: float = 1.0,
    organs: bool = True,
    texture: float = 0.05,
    edge: float = 1.0,
    window: tuple[float, float, float, float] | None = None,
    onset: float = 0.0,
) -> Phantom:
    """A procedural synthetic kidney DCE-MRI series with its truth (written for multireg).

    Anatomy (an axial slice, ``fov`` mm square, ω centred at 0): a body ellipse, two kidneys
    each with cortex and medulla and, with ``organs``, the liver, the spine and the aorta;
    smooth random textures (multiplicative, relative amplitude ``texture``) and smooth edges
    (tanh of the distance, width ``edge`` cells), so that spline interpolation is accurate and
    the partial-volume ``weights`` make the regions model exact. Intensities: pre-contrast
    70 (body) … 100 (cortex); enhancement α_r(t) added uniformly in each region: cortex and
    medulla from the study's two-compartment model and arterial input (paper-and-code.md §C.1,
    :func:`two_compartment`, :func:`study_aif`: peaks 46.2 and 31.6 at 7.2 s), the aorta the
    delayed arterial input, the liver a slow uptake. ``contrast`` scales every curve.

    ``n_frames`` frames ``dt`` s apart (the study's 25 × 2.4 s). Frame 0 is the reference;
    frames k ≥ 1 (with ``motion``) move by a random affine map y_k(x) = A_k x + b_k:
    A_k = R(φ) diag(s1, s2), φ ~ U(±``rotation``°), s_i ~ U(``scale``), b ~ U(±``translation``)
    mm. The data are d_k = f_k ∘ y_k⁻¹ evaluated exactly (procedurally), so that
    d_k(y(w_k, x)) = f_k(x) (the registration convention); ``noise`` adds Gaussian noise of
    standard deviation ``noise`` × the maximum of the noise-free data.

    ``window`` (ω = (a1, b1, a2, b2) mm, anatomy coordinates; default the full ``fov`` square)
    is the frames' own field of view: every frame is evaluated on the cells of ω *after* it
    moved, so a window that cuts through the body crops tissue differently in every frame
    (:attr:`Phantom.in_view` marks the reference cells a frame still observes). ``onset`` (s)
    delays the bolus arrival of every curve (more contrast-free early frames).
    """
    m = _pair("m", m)
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 2:
        raise ValueError(f"n_frames must be an integer >= 2, got {n_frames!r}")
    for name, value in (("dt", dt), ("fov", fov), ("edge", edge)):
        _checks.positive(name, value)
    for name, value in (
        ("noise", noise), ("rotation", rotation), ("translation", translation),
        ("contrast", contrast), ("texture", texture),
    ):  # fmt: skip
        _checks.positive(name, value, allow_zero=True)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be a range (lo, hi) with 0 < lo <= hi, got {scale!r}")
    rng_anatomy, rng_motion, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    _checks.positive("onset", onset, allow_zero=True)
    L = float(fov)
    if window is None:
        omega = (-L / 2, L / 2, -L / 2, L / 2)
    else:
        if len(window) != 4 or not (window[0] < window[1] and window[2] < window[3]):
            raise ValueError(f"window must be (a1, b1, a2, b2) with a_i < b_i, got {window!r}")
        omega = tuple(float(v) for v in window)
    domain = Domain(omega, m)
    eps = edge * min(domain.h)

    # texture: a few random plane waves, wavelengths 15–60 mm, unit standard deviation
    n_waves = 12
    k_dir = rng_anatomy.uniform(0, 2 * np.pi, n_waves)
    k_len = 2 * np.pi / rng_anatomy.uniform(15, 60, n_waves)
    phase = rng_anatomy.uniform(0, 2 * np.pi, n_waves)
    K = np.stack([np.cos(k_dir), np.sin(k_dir)], axis=1) * k_len[:, None]

    def tex(points):
        return texture * np.sqrt(2 / n_waves) * np.sum(np.cos(points @ K.T + phase), axis=1)

    times = np.arange(n_frames) * float(dt)
    curves = {
        "cortex": two_compartment(times, **_kin("cortex"), delay=4.5 + onset),
        "medulla": two_compartment(times, **_kin("medulla"), delay=4.5 + onset),
    }
    if organs:
        curves["liver"] = two_compartment(times, **_kin("liver"), delay=4.5 + onset)
        curves["aorta"] = study_aif(times - 4.5 - onset)
    curves = {k: contrast * v for k, v in curves.items()}

    import array_api_compat.numpy as xnp

    x = np.asarray(domain.cell_centers(xnp, dtype=xnp.float64))
    base, regions = _anatomy(x, L, eps, tex, organs)
    names = [n for n in ("cortex", "medulla", "aorta", "liver") if n in curves]
    weights = {n: np.reshape(regions[n], m) for n in names}

    w = np.tile([1.0, 0, 0, 0, 1, 0], (n_frames, 1))
    clean, moved, in_view = [], [], []
    lo, hi = np.array(omega[0::2]), np.array(omega[1::2])
    for k in range(n_frames):
        if motion and k > 0:
            phi = np.deg2rad(rng_motion.uniform(-rotation, rotation))
            s = rng_motion.uniform(scale[0], scale[1], 2)
            b = rng_motion.uniform(-translation, translation, 2)
            A = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]]) @ np.diag(s)
            w[k] = [A[0, 0], A[0, 1], b[0], A[1, 0], A[1, 1], b[1]]
        A = np.array([[w[k, 0], w[k, 1]], [w[k, 3], w[k, 4]]])
        b = np.array([w[k, 2], w[k, 5]])
        f = base + sum(curves[n][k] * regions[n] for n in names)
        clean.append(np.reshape(f, m))
        y = x @ A.T + b
        in_view.append(np.reshape(np.all((y >= lo) & (y <= hi), axis=1), m))
        # d_k(z) = f_k(y_k⁻¹(z)) at the cell centres z
        pts = np.linalg.solve(A, (x - b).T).T
        base_k, regions_k = _anatomy(pts, L, eps, tex, organs)
        moved.append(np.reshape(base_k + sum(curves[n][k] * regions_k[n] for n in names), m))
    clean, moved = np.stack(clean), np.stack(moved)
    sigma = float(noise) * float(np.max(moved))
    frames = moved + sigma * rng_noise.standard_normal(moved.shape)
    aif_times = np.arange(0.0, times[-1] + 1e-9, 0.05)
    return Phantom(
        frames=frames,
        times=times,
        omega=omega,
        masks={n: weights[n] > 0.5 for n in names},
        weights=weights,
        curves=curves,
        w=w,
        clean=clean,
        moved=moved,
        reference=np.reshape(base, m),
        aif_times=aif_times,
        aif=study_aif(aif_times - 4.5 - onset),
        sigma=sigma,
        in_view=np.stack(in_view),
    )


LARGE_MOTION_PATTERNS = ("study", "kidneys", "late", "weak")


def large_motion_phantom(
    m: tuple[int, int] = (96, 40),
    n_frames: int = 25,
    noise: float = 0.01,
    seed: int = 0,
    *,
    pattern: str = "study",
    rotation: float = 6.0,
    scale: tuple[float, float] = (0.9, 1.1),
    translation: float = 12.0,
    dt: float = 2.4,
) -> Phantom:
    """The kidney phantom in the regime of issue 14 (written for multireg): large random affine
    motion per frame (rotation ±``rotation``° and scaling ``scale`` about the body's centre,
    translation ±``translation`` mm), the organs near the edge of a field of view that is
    *smaller than the body* (ω = [−96, 96] × [−20, 60] mm of the 320 mm anatomy: the kidneys
    reach within ~3 mm of the upper edge, the body is cut on every side), and every frame
    cropped to ω *after* it moved, so that each frame misses different tissue
    (:attr:`Phantom.in_view`). Modelled on the study's own test data (paper-and-code.md §C;
    issue 14: 25 frames, ±6°, 0.9–1.1, crops after motion).

    ``pattern`` picks the enhancement: ``"study"`` the four regions of :func:`kidney_phantom`;
    ``"kidneys"`` contrast (and anatomy) only in cortex and medulla, as in the study;
    ``"late"`` a bolus 3 frames later (five contrast-free early frames); ``"weak"`` half the
    contrast. ``seed`` fixes anatomy texture, motion and noise."""
    if pattern not in LARGE_MOTION_PATTERNS:
        raise ValueError(f"pattern must be one of {LARGE_MOTION_PATTERNS}, got {pattern!r}")
    _checks.positive("dt", dt)
    return kidney_phantom(
        m,
        n_frames,
        dt=dt,
        noise=noise,
        seed=seed,
        fov=320.0,
        rotation=rotation,
        scale=scale,
        translation=translation,
        contrast=0.5 if pattern == "weak" else 1.0,
        organs=pattern != "kidneys",
        window=(-96.0, 96.0, -20.0, 60.0),
        onset=3 * dt if pattern == "late" else 0.0,
    )


def _kin(name: str) -> dict:
    F, Vb, PS, Ve = KINETICS[name]
    return dict(flow=F, blood_volume=Vb, ps=PS, ve=Ve)
