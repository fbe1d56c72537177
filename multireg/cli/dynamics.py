"""``multireg dynamics``: register a sequence whose intensities change (contrast agent)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from multireg import io
from multireg.cli._common import (
    _LAYOUTS,
    CommandResult,
    UsageError,
    _backend,
    _common,
    _count,
    _device,
    _floats,
    _host,
    _ints,
    _module_choices,
    _nonnegative,
    _outputs,
    _Progress,
    _settings,
    _to_backend,
    add_command,
)
from multireg.optimize import Status


def add_parser(commands) -> None:
    """The ``dynamics`` command's parser."""
    common, outputs = _common(), _outputs()
    dy = add_command(
        commands,
        "dynamics",
        "register a sequence whose intensities change (e.g. contrast agent)",
        [common, outputs],
        "Motion-corrected dynamic imaging (multireg.dynamics.solve): motions and a linear "
        "intensity model, jointly (separable least squares). FRAMES: .npy (N, m1, m2), .npz "
        "(entries 'frames', optional 'omega' and 'times') or NIfTI (m1, m2, N). The regions "
        "model needs --masks; the basis model does not. Writes DIR/dynamics.npz (motions, "
        "registered frames, model images, curves), DIR/result.json and, with --figures, "
        "DIR/curves.png.",
    )
    dy.add_argument(
        "frames", type=Path, nargs="?", default=None, metavar="FRAMES", help="the frames file"
    )
    g = dy.add_argument_group("problem")
    g.add_argument(
        "--phantom",
        action="store_true",
        help="use the built-in synthetic kidney DCE phantom (with its truth) instead of FRAMES",
    )
    g.add_argument(
        "--phantom-m",
        type=_ints,
        default=(48, 48),
        metavar="M1,M2",
        help="--phantom: cells per axis",
    )
    g.add_argument("--n-frames", type=_count, default=10, help="--phantom: number of frames")
    g.add_argument(
        "--noise", type=_nonnegative, default=0.01, help="--phantom: relative noise level"
    )
    g.add_argument("--seed", type=_count, default=0, help="--phantom: random seed")
    g.add_argument(
        "--times",
        type=_floats,
        default=None,
        metavar="T1,T2,...",
        help="acquisition time of each frame (default: the 'times' entry of an .npz)",
    )
    g.add_argument(
        "--masks",
        type=Path,
        default=None,
        metavar="FILE",
        help="region masks for --model regions: .npz (name -> (m1, m2) array) or .npy (R, m1, m2)",
    )
    g.add_argument(
        "--spacing",
        type=_floats,
        default=None,
        metavar="S1,S2",
        help="pixel size per axis for .npy/.npz frames without omega",
    )
    g.add_argument(
        "--motion",
        choices=("affine", "rigid", "nonparametric"),
        default="affine",
        help="motion model (nonparametric: B-spline on a --p control grid)",
    )
    g.add_argument(
        "--p",
        type=_ints,
        default=None,
        metavar="P1,P2",
        help="control grid of --motion nonparametric (default: the solver's)",
    )
    g.add_argument(
        "--model",
        choices=("regions", "basis"),
        default=None,
        help="intensity model (default: regions with --masks or --phantom, else basis)",
    )
    g.add_argument(
        "--alpha",
        type=_nonnegative,
        default=None,
        help="weight of the model's regulariser (default: the solver's)",
    )
    g.add_argument(
        "--n-basis", type=_count, default=None, help="--model basis: number of basis functions"
    )
    g = dy.add_argument_group("solver")
    g.add_argument(
        "--method",
        choices=_module_choices("dynamics", "METHODS", ("varpro", "bcd", "lap")),
        default="varpro",
        help="separable solver",
    )
    g.add_argument("--max-iter", type=_count, default=20, help="outer iterations")
    g.add_argument(
        "--init",
        choices=("coarse-to-fine", "preregister", "identity"),
        default="coarse-to-fine",
        help="starting motions: the identity, then the coupled solve on a pyramid of --levels "
        "grids (default); each frame registered to frame 0 by SSD (affine/rigid; w0='ssd'); "
        "or the identity on the finest grid only",
    )
    g.add_argument(
        "--levels",
        type=_count,
        default=None,
        help="--init coarse-to-fine: number of grids (default: down to about 8 cells)",
    )
    g.add_argument(
        "--no-search",
        action="store_true",
        help="--init coarse-to-fine/identity: skip the coarsest level's translation search (by "
        "default each frame's translation is searched within a third of the field of view and "
        "its best candidates refined, against local minima under large motion)",
    )
    g.add_argument(
        "--no-fov",
        action="store_true",
        help="keep cells whose point leaves a frame's field of view in its data term (the old "
        "objective; by default they drop out and each frame's term is normalised by its "
        "in-view fraction)",
    )
    g.add_argument(
        "--figures",
        action="store_true",
        help="also write DIR/curves.png, the recovered time curves (needs matplotlib)",
    )


def _read_masks(path: Path, m: tuple[int, ...]) -> dict:
    """Region masks: an .npz of name -> (m1, m2) arrays, or an .npy (R, m1, m2)."""
    fmt = io.format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if fmt not in ("npz", "npy"):
        raise ValueError(f"--masks {path}: expected .npz or .npy")
    try:
        if fmt == "npy":
            a = np.load(path, allow_pickle=False)
            masks = {f"region{r}": a[r] for r in range(a.shape[0])} if a.ndim == 3 else {}
        else:
            with np.load(path, allow_pickle=False) as z:
                masks = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as err:
        raise io.ImageReadError(f"{path}: cannot read the masks: {err}") from None
    if not masks or any(np.shape(v) != tuple(m) for v in masks.values()):
        shapes = {k: np.shape(v) for k, v in masks.items()}
        raise ValueError(f"--masks {path}: expected masks of shape {tuple(m)}, got {shapes}")
    return masks


_DYNAMICS_SETTINGS = (
    "phantom", "phantom_m", "n_frames", "noise", "seed", "times", "masks", "spacing", "motion",
    "p", "model", "alpha", "n_basis", "method", "max_iter", "init",
)  # fmt: skip


def run_dynamics(args: argparse.Namespace, backend: Any = None) -> tuple[CommandResult, Status]:
    """``multireg dynamics``: motions and intensity model of a sequence (writes nothing).

    Calls :func:`multireg.dynamics.solve`. Keys: ``motions`` ((N, p), FAIR layout, reference →
    frame), ``registered`` and ``model_images`` ((N, m1, m2)), ``curves`` ((N, R), when the
    model has them), ``objective``, ``fit_residual``, ``iterations``; ``--phantom`` also
    ``motion_error`` (relative displacement error against the truth).
    """
    import multireg
    from multireg.problems import dynamics

    if (args.frames is None) == (not args.phantom):
        raise UsageError("dynamics: give FRAMES or --phantom (one of them)")
    bk = _backend(backend, args)
    device = _device(bk, args.device)
    inputs: tuple = ()
    truth = None
    if args.phantom:
        if args.times is not None or args.masks is not None:
            raise ValueError("--times and --masks apply to FRAMES; the phantom has its own")
        m = tuple(args.phantom_m)
        if len(m) != 2:
            raise ValueError(f"--phantom-m needs two values, got {m}")
        if args.n_frames < 2:
            raise ValueError("--n-frames must be at least 2")
        truth = dynamics.kidney_phantom(m, args.n_frames, noise=args.noise, seed=args.seed)
        frames, times, omega = truth.frames, truth.times, tuple(truth.omega)
        masks = truth.masks
        source: dict = {"phantom": "kidney_phantom", "m": list(m), "n_frames": args.n_frames}
    else:
        img = io.read_frames(args.frames, spacing=args.spacing)
        if img.dim != 2:
            raise ValueError(f"{args.frames}: dynamics needs 2D frames, got frames of {img.m}")
        frames, omega = img.data, img.omega
        times = args.times if args.times is not None else img.extra.get("times")
        if times is None:
            raise ValueError(
                f"{args.frames}: the acquisition times are missing; pass --times T1,T2,..."
            )
        masks = _read_masks(args.masks, img.m) if args.masks is not None else None
        inputs = (img,)
        source = img.describe()
    times = np.asarray(times, dtype=np.float64).ravel()
    if times.shape[0] != frames.shape[0]:
        raise ValueError(f"--times has {times.shape[0]} values for {frames.shape[0]} frames")
    model = args.model or ("regions" if masks is not None else "basis")
    if model == "regions" and masks is None:
        raise ValueError("--model regions needs --masks (or use --model basis)")
    options: dict = dict(
        motion=args.motion,
        model=model,
        method=args.method,
        max_iter=args.max_iter,
        backend=bk,
        dtype=args.dtype,
    )
    if masks is not None:
        options["masks"] = masks
    if args.levels is not None and args.init != "coarse-to-fine":
        raise UsageError(f"--levels goes with --init coarse-to-fine, not --init {args.init}")
    if args.no_search and args.init == "preregister":
        raise UsageError("--no-search goes with --init coarse-to-fine or identity")
    if args.no_search:
        options["search"] = False
    if args.init == "identity":
        options["w0"] = "identity"
    elif args.init == "preregister":
        if args.motion not in ("affine", "rigid"):
            raise UsageError(
                f"--init preregister needs --motion affine or rigid, not {args.motion}"
            )
        options["w0"] = "ssd"
    elif args.levels is not None:
        options["levels"] = args.levels
    if args.no_fov:
        options["fov"] = False
    for key in ("alpha", "n_basis", "p"):
        if getattr(args, key) is not None:
            options[key] = tuple(args.p) if key == "p" else getattr(args, key)
    progress = _Progress(args.quiet, total=args.max_iter)
    options["callback"] = lambda record=None, *a: progress.step("dynamics", record)
    data = _to_backend(bk, frames, args, device)
    started = time.perf_counter()
    try:
        res = dynamics.solve(data, times, omega, **options)
        bk.sync(res.w)
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    values: dict = {
        "motions": _host(bk, res.w),
        "registered": _host(bk, res.registered),
        "model_images": _host(bk, res.model_images),
    }
    if res.curves is not None:
        values["curves"] = _host(bk, res.curves)
    values["objective"] = float(res.objective)
    values["fit_residual"] = float(res.fit_residual)
    values["iterations"] = int(res.iterations)
    if truth is not None and args.motion == "affine":  # the phantom's motions are affine
        m_img = tuple(frames.shape[1:])
        rel, _ = dynamics.motion_error(values["motions"], truth.w, omega, m_img, motion="affine")
        values["motion_error"] = float(rel)
    info = {
        "command": "dynamics",
        "multireg": multireg.__version__,
        "status": res.status.value,
        "converged": res.status is Status.CONVERGED,
        "message": res.message,
        "backend": bk.name,
        "dtype": args.dtype,
        "device": str(device) if device is not None else None,
        "settings": {**_settings(args, _DYNAMICS_SETTINGS), "model_used": model},
        "frames": source,
        "times": times,
        "omega": list(omega),
        "m": list(frames.shape[1:]),
        "motions": values["motions"],
        "motions_layout": _LAYOUTS.get(args.motion, "B-spline control grid coefficients"),
        "region_names": list(res.names),
        "curves": values.get("curves"),
        "objective": values["objective"],
        "fit_residual": values["fit_residual"],
        "motion_error": values.get("motion_error"),
        "iterations": values["iterations"],
        "time": elapsed,
        "timings": dict(res.timings),
    }
    if truth is not None:
        info["truth"] = {"curves": truth.curves, "motions": truth.w}
    return CommandResult(values, info=info, raw=res, inputs=inputs), res.status
