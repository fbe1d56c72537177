"""``multireg superres``: a high-resolution image and the motions from low-resolution frames."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from multireg import io
from multireg.cli._common import (
    CommandResult,
    UsageError,
    _accepts,
    _backend,
    _common,
    _count,
    _device,
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
    """The ``superres`` command's parser."""
    common, outputs = _common(), _outputs()
    sr = add_command(
        commands,
        "superres",
        "reconstruct a high-resolution image and the motions from low-resolution frames",
        [common, outputs],
        "Super-resolution with unknown rigid/affine motion (separable least squares: VarPro "
        "or block coordinate descent). FRAMES: .npy (N, m1, m2), .npz (entry 'frames', "
        "optional 'omega') or NIfTI (m1, m2, N). Without stored geometry omega is centred at "
        "0 in coarse pixels (rotations turn about the image centre). Writes "
        "DIR/reconstruction.npz (image, motions, omega) and, for NIfTI frames, "
        "DIR/reconstruction.nii.gz, plus DIR/result.json.",
    )
    sr.add_argument(
        "frames", type=Path, nargs="?", default=None, metavar="FRAMES", help="the frames file"
    )
    g = sr.add_argument_group("problem")
    g.add_argument(
        "--synthetic",
        action="store_true",
        help="use a built-in synthetic problem with known truth instead of FRAMES",
    )
    g.add_argument(
        "--m-fine",
        type=_ints,
        default=None,
        metavar="M1,M2",
        help="cells of the reconstruction (default: twice the frames' size)",
    )
    g.add_argument(
        "--m-coarse",
        type=_ints,
        default=(12, 12),
        metavar="M1,M2",
        help="--synthetic: cells of each frame (default 12,12: coarse enough that registering "
        "each frame to frame 0 leaves errors the joint solve removes; at 16,16 that "
        "pre-registration is already within 2%% of the best image)",
    )
    g.add_argument("--n-frames", type=_count, default=8, help="--synthetic: number of frames")
    g.add_argument("--seed", type=_count, default=0, help="--synthetic: random seed")
    g.add_argument("--motion", choices=("rigid", "affine"), default="rigid", help="motion model")
    g.add_argument(
        "--downsample",
        choices=("average", "point"),
        default="average",
        help="frame formation: cell averages or point samples",
    )
    g.add_argument("--alpha", type=_nonnegative, default=1e-2, help="regularisation weight")
    g.add_argument(
        "--regularizer",
        choices=("gradient", "identity"),
        default="gradient",
        help="regulariser of the image",
    )
    g = sr.add_argument_group("solver")
    g.add_argument(
        "--method",
        choices=_module_choices("superres", "METHODS", ("varpro", "bcd")),
        default="varpro",
        help="separable solver",
    )
    g.add_argument(
        "--jacobian",
        choices=_module_choices(
            "separable", "JACOBIANS", ("implicit", "unrolled", "kaufman", "partial")
        ),
        default="implicit",
        help="VarPro's reduced Jacobian",
    )
    g.add_argument("--max-iter", type=_count, default=20, help="outer iterations")
    g.add_argument("--tol-j", type=_nonnegative, default=1e-6, help="relative change of J")
    g.add_argument("--tol-y", type=_nonnegative, default=1e-4, help="relative change of w")
    g.add_argument(
        "--tol-g",
        type=_nonnegative,
        default=1e-2,
        help="relative gradient norm (the library's default: with linear interpolation the "
        "objective is only piecewise smooth in the motions, and its gradient levels off at "
        "~1e-3 while J has settled)",
    )
    sr.add_argument(
        "--figures",
        action="store_true",
        help="also write DIR/superres.png: a frame, the initial and final reconstructions "
        "(needs matplotlib)",
    )


def _centred(omega) -> tuple[float, ...]:
    """``omega`` shifted so that its centre is the origin."""
    return tuple(v for a, b in zip(omega[0::2], omega[1::2]) for v in (-(b - a) / 2, (b - a) / 2))


_SUPERRES_SETTINGS = (
    "synthetic", "m_fine", "m_coarse", "n_frames", "seed", "motion", "downsample", "alpha",
    "regularizer", "method", "jacobian", "max_iter", "tol_j", "tol_y", "tol_g",
)  # fmt: skip


def run_superres(args: argparse.Namespace, backend: Any = None) -> tuple[CommandResult, Status]:
    """``multireg superres``: reconstruct image and motions from frames (writes nothing).

    Keys: ``image`` (shape m_fine), ``motions`` ((N, p), row 0 the identity), ``objective``,
    ``iterations`` (outer); ``--synthetic`` also ``image_error`` and ``motion_error``
    (relative to the truth) and the same at the start (``image_error_start``,
    ``motion_error_start``: the pre-registered motions and the fit there).
    """
    import multireg
    from multireg.problems import superres

    if (args.frames is None) == (not args.synthetic):
        raise UsageError("superres: give FRAMES or --synthetic (one of them)")
    bk = _backend(backend, args)
    device = _device(bk, args.device)
    truth = None
    inputs: tuple = ()
    if args.synthetic:
        from multireg.data import blobs

        m_coarse = tuple(args.m_coarse)
        if len(m_coarse) != 2:
            raise ValueError(f"--m-coarse needs two values, got {m_coarse}")
        m_fine = tuple(args.m_fine) if args.m_fine is not None else tuple(2 * v for v in m_coarse)
        if args.n_frames < 2:
            raise ValueError("--n-frames must be at least 2")
        image, _ = blobs((4 * m_fine[0], 4 * m_fine[1]), seed=args.seed)
        with multireg.use_backend(bk):  # make_problem computes the frames on the default
            truth = superres.make_problem(
                image,
                m_fine=m_fine,
                m_coarse=m_coarse,
                n_frames=args.n_frames,
                motion=args.motion,
                downsample=args.downsample,
                alpha=args.alpha,
                seed=args.seed,
            )
        frames, omega = truth.frames, truth.omega
        source = {"synthetic": True}
    else:
        img = io.read_frames(args.frames)
        if img.dim != 2:
            raise ValueError(f"{args.frames}: superres needs 2D frames, got frames of {img.m}")
        frames = img.data
        # without stored geometry, centre omega at 0 so that rotations turn about the centre
        omega = _centred(img.omega) if img.frame == "pixel" else img.omega
        m_fine = tuple(args.m_fine) if args.m_fine is not None else tuple(2 * v for v in img.m)
        inputs = (img,)
        source = img.describe()
    if len(m_fine) != 2:
        raise ValueError(f"--m-fine needs two values, got {m_fine}")
    options = dict(
        motion=args.motion,
        downsample=args.downsample,
        alpha=args.alpha,
        regularizer=args.regularizer,
        method=args.method,
        jacobian=args.jacobian,
        backend=bk,
        dtype=args.dtype,
        max_iter=args.max_iter,
        tol_j=args.tol_j,
        tol_y=args.tol_y,
        tol_g=args.tol_g,
    )
    progress = _Progress(args.quiet, total=args.max_iter)
    if _accepts(superres.solve, "callback"):
        options["callback"] = lambda record=None, *a: progress.step("superres", record)
    elif not args.quiet:
        print(
            f"superres: {frames.shape[0]} frames {frames.shape[1:]} -> {m_fine} ...",
            file=sys.stderr,
        )
    data = _to_backend(bk, frames, args, device)
    started = time.perf_counter()
    try:
        res = superres.solve(data, omega, m_fine, **options)
        bk.sync(res.f)
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    values = {
        "image": _host(bk, res.f),
        "motions": _host(bk, res.w),
        "objective": float(res.separable.result.fun),
        "iterations": int(res.iterations),
    }
    if truth is not None:
        f_true, w_true = truth.f_true, truth.w_true
        values["image_error"] = float(
            np.linalg.norm(values["image"] - f_true) / np.linalg.norm(f_true)
        )
        values["motion_error"] = float(np.max(np.abs(values["motions"] - w_true)))
        # the same errors at the start (pre-registration and the fit there): the improvement
        values["image_error_start"] = float(
            np.linalg.norm(_host(bk, res.f0) - f_true) / np.linalg.norm(f_true)
        )
        values["motion_error_start"] = float(np.max(np.abs(_host(bk, res.w0) - w_true)))
    info = {
        "command": "superres",
        "multireg": multireg.__version__,
        "status": res.status.value,
        "converged": res.status is Status.CONVERGED,
        "message": res.separable.result.message,
        "backend": bk.name,
        "dtype": args.dtype,
        "device": str(device) if device is not None else None,
        "settings": _settings(args, _SUPERRES_SETTINGS),
        "frames": source,
        "omega": list(omega),
        "m_fine": list(m_fine),
        "motions": values["motions"],
        "objective": values["objective"],
        "iterations": values["iterations"],
        "inner_iterations": int(res.inner_iterations),
        "image_error": values.get("image_error"),
        "motion_error": values.get("motion_error"),
        "image_error_start": values.get("image_error_start"),
        "motion_error_start": values.get("motion_error_start"),
        "first_frame": np.asarray(frames[0]),
        "truth_image": None if truth is None else truth.f_true,
        "time": elapsed,
        "timings": dict(res.timings),
    }
    return CommandResult(values, info=info, raw=res, inputs=inputs), res.status
