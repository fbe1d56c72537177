"""``multireg homotopy``: register by following the minimiser from smooth images to sharp ones."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from multireg.cli._common import (
    _LAYOUTS,
    CommandResult,
    _accepts,
    _backend,
    _common,
    _count,
    _device,
    _fair_parameters,
    _floats,
    _host,
    _images,
    _ints,
    _outputs,
    _positive,
    _Progress,
    _read_pair,
    _record_of,
    _settings,
    _status_of,
    _to_backend,
    add_command,
)
from multireg.cli._options import _add_distance
from multireg.optimize import Status


def add_parser(commands) -> None:
    """The ``homotopy`` command's parser."""
    common, outputs = _common(), _outputs()
    hom = add_command(
        commands,
        "homotopy",
        "register by following the minimiser from smooth images to sharp ones",
        [_images(), common, outputs],
        "Parametric registration by homotopy in the spline scale theta: predictor (exact "
        "dw/dtheta by automatic differentiation) and Newton corrector from theta = HI down to "
        "LO. Writes DIR/warped.<ext>, DIR/result.json (the path: theta, parameters, J, "
        "iterations per step).",
    )
    g = hom.add_argument_group("model")
    g.add_argument(
        "--transform",
        choices=("translation", "rigid", "affine", "bspline"),
        default="affine",
        help="transformation model (FAIR's parameter layout)",
    )
    g.add_argument(
        "--p",
        type=_ints,
        default=None,
        metavar="P1,P2[,P3]",
        help="control grid of --transform bspline",
    )
    _add_distance(g)
    g = hom.add_argument_group("path")
    g.add_argument(
        "--theta-range",
        type=_floats,
        default=None,
        metavar="HI,LO",
        help="first and last theta (decreasing, geometric steps; default: HI from the data, the "
        "largest theta at which the smoothed images still determine every parameter, LO 1e-3)",
    )
    g.add_argument("--n-steps", type=_count, default=40, help="number of theta values")
    g.add_argument(
        "--starts",
        type=_count,
        default=1,
        metavar="N",
        help="trace N paths from rotations 360°·k/N about the centre (2D rigid and affine) and "
        "keep the lowest final J: for rotations beyond the identity's branch",
    )
    g.add_argument(
        "--thetas",
        type=_floats,
        default=None,
        metavar="T1,T2,...",
        help="explicit decreasing theta values (replace --theta-range and --n-steps)",
    )
    g.add_argument(
        "--predictor",
        choices=("tangent", "secant", "none"),
        default="tangent",
        help="predictor (none: plain multiscale continuation)",
    )
    g.add_argument(
        "--hessian",
        choices=("exact", "gauss-newton"),
        default="exact",
        help="Hessian of the tangent predictor",
    )
    g.add_argument(
        "--corrector",
        choices=("newton", "trust-region", "gauss-newton"),
        default="newton",
        help="corrector at each theta",
    )
    g.add_argument(
        "--step",
        choices=("fixed", "adaptive"),
        default="fixed",
        help="fixed schedule or adaptive steps in log theta",
    )
    g.add_argument(
        "--tol", type=_positive, default=1e-9, help="corrector's relative gradient tolerance"
    )
    g.add_argument(
        "--max-corrector-iter", type=_count, default=50, help="corrector iterations per theta"
    )
    hom.add_argument(
        "--figures",
        action="store_true",
        help="also write DIR/homotopy.png, the path in theta (needs matplotlib)",
    )


_HOMOTOPY_SETTINGS = (
    "transform", "p", "distance", "theta_range", "n_steps", "starts", "thetas", "predictor",
    "hessian", "corrector", "step", "tol", "max_corrector_iter", "spacing", "allow_oblique",
)  # fmt: skip


def run_homotopy(args: argparse.Namespace, backend: Any = None) -> tuple[CommandResult, Status]:
    """``multireg homotopy``: follow the minimiser in θ (writes nothing).

    Keys: ``parameters`` (FAIR layout, at the last θ), ``warped``, ``objective`` (J at the last
    θ), ``iterations`` (corrector iterations, rejected trials included), ``theta`` (the last θ).
    """
    import multireg

    T, R = _read_pair(args)
    bk = _backend(backend, args)
    device = _device(bk, args.device)
    if args.p is not None and args.transform != "bspline":
        raise ValueError("--p applies to --transform bspline only")
    options: dict = dict(
        transform=args.transform,
        distance=args.distance,
        predictor=args.predictor,
        hessian=args.hessian,
        corrector=args.corrector,
        step=args.step,
        tol=args.tol,
        max_corrector_iter=args.max_corrector_iter,
        backend=bk,
        dtype=args.dtype,
    )
    if args.p is not None:
        options["p"] = tuple(args.p)
    if args.thetas is not None:
        options["thetas"] = list(args.thetas)
        n_thetas = len(args.thetas)
    else:
        if args.theta_range is not None:
            if len(args.theta_range) != 2:
                raise ValueError(f"--theta-range needs two values HI,LO, got {args.theta_range}")
            options["theta_range"] = tuple(args.theta_range)
        options["n_steps"] = args.n_steps
        n_thetas = args.n_steps
    if args.starts > 1:
        options["starts"] = args.starts
    progress = _Progress(args.quiet, total=n_thetas if args.step == "fixed" else None, unit="θ")
    if _accepts(multireg.homotopy, "callback"):
        # callback(theta, J, iterations) or callback(point): one step of the bar per θ
        options["callback"] = lambda *a, **k: progress.step("homotopy", _record_of(a))
    elif not args.quiet:
        print(f"homotopy: following {n_thetas} theta values ...", file=sys.stderr)
    Tb = _to_backend(bk, T.data, args, device)
    Rb = _to_backend(bk, R.data, args, device)
    started = time.perf_counter()
    try:
        res = multireg.homotopy(Tb, Rb, R.omega, **options)
        bk.sync(res.warped)
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    status = res.status
    if status is Status.CONVERGED and not res.success:
        status = _status_of(*(p.status for p in res.path))
    values = {
        "parameters": _fair_parameters(res.transform, res.w, bk),
        "warped": _host(bk, res.warped),
        "objective": float(res.distance),
        "theta": float(res.theta),
        "iterations": int(res.corrector_iterations),
    }
    info = {
        "command": "homotopy",
        "multireg": multireg.__version__,
        "status": status.value,
        "converged": status is Status.CONVERGED,
        "message": res.message,
        "backend": bk.name,
        "dtype": args.dtype,
        "device": str(device) if device is not None else None,
        "settings": _settings(args, _HOMOTOPY_SETTINGS),
        "template": T.describe(),
        "reference": R.describe(),
        "omega": list(R.omega),
        "m": list(R.m),
        "parameters_layout": _LAYOUTS.get(args.transform),
        "parameters": values["parameters"],
        "distance": values["objective"],
        "theta": values["theta"],
        "iterations": values["iterations"],
        "rejected": int(res.rejected),
        "theta_max": {
            "how": res.theta_choice.method if res.theta_choice is not None else "given",
            "value": float(res.thetas[0]),
        },
        "folded": bool(res.folded),
        "events": [
            {"kind": e.kind, "theta": [e.theta_from, e.theta_to], "eigenvalue": e.eigenvalue}
            for e in res.events
        ],
        "branches": {
            "count": len(res.branches) if res.branches else 1,
            "best": int(res.best_branch),
            "J": [float(b.distance) for b in res.branches] if res.branches else None,
        },
        "path": {
            "theta": res.thetas,
            "w": res.ws,
            "J": res.funs,
            "grad_norm": res.grad_norms,
            "iterations": res.iterations,
            "predictor_error": res.predictor_errors,
            "status": [p.status.value for p in res.path],
            "jump": [bool(p.jump) for p in res.path],
        },
        "time": elapsed,
        "timings": dict(res.timings),
    }
    return CommandResult(values, info=info, raw=res, inputs=(T, R)), status
