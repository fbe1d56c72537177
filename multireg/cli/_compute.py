"""The computing commands (register, homotopy, superres, dynamics): their registry
:data:`COMMANDS` (the contract of cross-framework validation, see :mod:`multireg.cli`), and the
output writing they share: the plan checked before the work, the outputs written as one unit,
the figure, the summary on stdout."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from multireg import io
from multireg.cli._common import (
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    CommandResult,
    _input_paths,
    _out_dir,
)
from multireg.cli.dynamics import run_dynamics
from multireg.cli.homotopy import run_homotopy
from multireg.cli.register import _register_files, run_register
from multireg.cli.superres import run_superres
from multireg.optimize import Status

COMMANDS: dict[str, Callable[..., tuple[CommandResult, Status]]] = {
    "register": run_register,
    "homotopy": run_homotopy,
    "superres": run_superres,
    "dynamics": run_dynamics,
}


def _plan(name: str, args) -> tuple[dict[str, Path], io.OutputSet]:
    """The outputs a command will write, checked before any work: none is an input, none
    exists without ``--overwrite``, every folder can be created and written
    (:class:`multireg.io.OutputSet`, which also removes stale temporaries of killed runs)."""
    out = _out_dir(args, name)
    plan: dict[str, Path] = {}
    if name == "register":
        plan.update(_register_files(args, out, args.reference, args.warped))
    elif name == "homotopy":
        plan["warped"] = (
            args.warped
            if args.warped is not None
            else out / f"warped{io.extension_of(args.reference)}"
        )
        io.format_of(plan["warped"])
    elif name == "superres":
        plan["reconstruction"] = out / "reconstruction.npz"
        if args.frames is not None and io.format_of(args.frames) == "nifti":
            plan["image"] = out / "reconstruction.nii.gz"
    elif name == "dynamics":
        plan["arrays"] = out / "dynamics.npz"
    if getattr(args, "figures", False):
        function, filename = _FIGURES[name]
        _check_figures(function)
        plan["figure"] = out / filename
    plan["result"] = out / "result.json"
    outputs = io.OutputSet(plan.values(), overwrite=args.overwrite, protect=_input_paths(args))
    return plan, outputs


_FIGURES = {
    "register": ("registration_figure", "registration.png"),
    "homotopy": ("homotopy_path", "homotopy.png"),
    "superres": ("superres_figure", "superres.png"),
    "dynamics": ("dynamics_curves", "curves.png"),
}


def _check_figures(function: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("--figures needs matplotlib: pip install 'multireg[plot]'") from None
    try:
        from multireg.workflow import figures
    except ImportError:
        raise ImportError("--figures needs multireg.figures, which this multireg lacks") from None
    if not hasattr(figures, function):
        raise ImportError(f"multireg.figures has no {function}")


def _figure(name: str, result: CommandResult, path: Path) -> None:
    """Draw a command's figure with :mod:`multireg.figures` into ``path``."""
    from multireg.workflow import figures

    raw = result.raw
    if name == "register":
        T, R = result.inputs
        figures.registration_figure(T.data, R.data, raw, path)
    elif name == "homotopy":
        figures.homotopy_path(raw, path)
    elif name == "superres":
        frame = result.info["first_frame"]
        truth = result.info.get("truth_image")
        figures.superres_figure(truth, frame, _checks_host(raw.f0), result["image"], path)
    elif name == "dynamics":
        names = result.info["region_names"]
        curves = result.get("curves")
        if curves is None:
            raise ValueError("--figures: this intensity model has no time curves to draw")
        recovered = {n: curves[:, r] for r, n in enumerate(names)}
        truth = result.info.get("truth", {}).get("curves")
        figures.dynamics_curves(result.info["times"], truth, recovered, path)


def _checks_host(x) -> np.ndarray:
    from multireg._checks import to_host

    return np.asarray(to_host(x), dtype=np.float64)


def _write(
    name: str, args, result: CommandResult, plan: dict[str, Path], outputs: io.OutputSet
) -> dict[str, Path]:
    """Write a command's outputs as one unit: all of them appear, or none (an error or Ctrl-C
    while writing leaves the folder as it was; :class:`multireg.io.OutputSet`). The plan was
    checked before the work. Returns the paths written."""
    info = dict(result.info)
    info["outputs"] = {k: str(v) for k, v in plan.items()}
    info.pop("first_frame", None)
    info.pop("truth_image", None)
    with outputs:
        at = outputs.stage  # where each planned output is written until the set is complete
        if name in ("register", "homotopy"):
            R = result.inputs[1]
            io.write_image(at(plan["warped"]), result["warped"], like=R)
            if "displacement" in plan:
                io.write_npz(
                    at(plan["displacement"]),
                    displacement=result["displacement"],
                    y=result["displacement"] + R.domain.cell_centers().reshape(*R.m, R.dim),
                    omega=np.asarray(R.omega),
                    m=np.asarray(R.m),
                )
        elif name == "superres":
            io.write_npz(
                at(plan["reconstruction"]),
                image=result["image"],
                motions=result["motions"],
                omega=np.asarray(tuple(result.info["omega"])),
            )
            if "image" in plan:
                (img,) = result.inputs
                io.write_image(at(plan["image"]), result["image"], like=img, omega=img.omega)
        elif name == "dynamics":
            arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
            io.write_npz(at(plan["arrays"]), **arrays)
        if "figure" in plan:
            _figure(name, result, at(plan["figure"]))
        io.write_json(at(plan["result"]), info)
    return dict(plan)


def _summary(name: str, result: CommandResult, status: Status, written: dict) -> list[str]:
    info = result.info
    lines = [
        f"{name}: backend {info['backend']} ({info['dtype']}, {info.get('device')}), "
        f"status {status.value}, {info['iterations']} iterations, "
        f"objective {result['objective']:.6g}, {info['time']:.2f} s"
    ]
    if name == "register":
        lv = ", ".join(str(v["iterations"]) for v in info["levels"])
        lines.append(
            f"  distance reduced to {100 * result['reduction']:.3g} % of the identity's; "
            f"iterations per level: {lv}"
        )
        if "det_min" in result:
            lines.append(f"  min det of the Jacobian of y: {result['det_min']:.4g}")
        lines.extend(f"  warning: {text}" for text in info.get("warnings", ()))
    if "parameters" in result:
        w = (np.round(result["parameters"], 6) + 0.0).tolist()  # no -0.0
        if len(w) <= 12:
            units = info.get("parameters_units") or ""
            lines.append(f"  parameters (FAIR layout; {units}): {w}")
    if name == "superres" and result.get("image_error") is not None:
        lines.append(
            f"  relative image error {result['image_error']:.3g}, "
            f"max motion error {result['motion_error']:.3g}"
        )
    lines.append("  wrote " + ", ".join(str(p) for p in written.values()))
    return lines


def _compute_and_write(name: str, args) -> int:
    for path in _input_paths(args):  # a missing input is the first thing to report
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
    plan, outputs = _plan(name, args)
    result, status = COMMANDS[name](args, None)
    written = _write(name, args, result, plan, outputs)
    if not args.quiet:
        print("\n".join(_summary(name, result, status, written)))
    else:  # the summary carries the warnings; --quiet must not hide them
        for warning in result.info.get("warnings") or ():
            print(f"multireg: warning: {warning}", file=sys.stderr)
    if status is not Status.CONVERGED:
        message = result.info.get("message") or status.value
        print(
            f"multireg: warning: the solver did not converge ({message}); "
            "outputs written, exit code 3",
            file=sys.stderr,
        )
        return EXIT_NOT_CONVERGED
    return EXIT_OK
