"""``multireg register``: register a template image to a reference image."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from multireg import io
from multireg.cli._common import (
    _LAYOUTS,
    CommandResult,
    _backend,
    _common,
    _device,
    _fair_parameters,
    _host,
    _images,
    _outputs,
    _Progress,
    _read_pair,
    _settings,
    _to_backend,
    _units,
    add_command,
)
from multireg.cli._options import (
    _PARAMETRIC_SETTINGS,
    _REGISTER_SETTINGS,
    _add_registration_options,
    _check_registration_options,
    _register_levels,
    _registration_kwargs,
)
from multireg.optimize import Status


def add_parser(commands) -> None:
    """The ``register`` command's parser."""
    common, outputs = _common(), _outputs()
    reg = add_command(
        commands,
        "register",
        "register a template image to a reference image",
        [_images(), common, outputs],
        "Find y so that T(y(x)) matches R(x) (FAIR: parametric PIR, nonparametric NPIR, "
        "multilevel). Writes DIR/warped.<ext> (T(y) on R's grid, in R's format and geometry), "
        "DIR/result.json (parameters in FAIR's layout, settings, status, iterations, "
        "distance, timings), DIR/displacement.npz (nonparametric) and DIR/registration.png "
        "(--figures).",
    )
    _add_registration_options(reg)
    g = reg.add_argument_group("figures")
    g.add_argument(
        "--figures",
        action="store_true",
        help="also write DIR/registration.png (needs matplotlib: pip install 'multireg[plot]')",
    )


def run_register(args: argparse.Namespace, backend: Any = None) -> tuple[CommandResult, Status]:
    """``multireg register``: read T and R, register, return the numbers (writes nothing).

    Keys: ``parameters`` (FAIR layout; for nonparametric the pre-registration's, absent
    without one), ``warped`` (T(y) on R's grid, shape m), ``objective`` (final distance),
    ``reduction``, ``iterations`` (total over levels); nonparametric also ``displacement``
    (y − x at the cell centres, shape (*m, d)) and ``det_min``.
    """
    import multireg

    _check_registration_options(args)
    T, R = _read_pair(args)
    bk = _backend(backend, args)
    device = _device(bk, args.device)
    # 'auto' is register()'s own choice (every level with at least 8 cells per axis)
    levels = "auto" if args.levels == "auto" else _register_levels(args.levels, R.domain)
    options = dict(_registration_kwargs(args, levels), backend=bk, dtype=args.dtype)
    Tb = _to_backend(bk, T.data, args, device)
    Rb = _to_backend(bk, R.data, args, device)
    progress = _Progress(args.quiet, total=args.max_iter)
    started = time.perf_counter()
    try:
        res = multireg.register(Tb, Rb, R.omega, callback=progress.registration, **options)
        bk.sync(res.warped)
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    return _register_result(args, T, R, res, bk, device, elapsed), res.status


def _register_result(args, T, R, res, bk, device, elapsed: float) -> CommandResult:
    """What ``multireg register`` writes of one registration (its numbers and result.json's
    contents); ``register-many``'s workers build the same for each pair."""
    import multireg

    nonparametric = args.transform == "nonparametric"
    values: dict = {}
    if res.w is not None:
        trafo = res.transform if not nonparametric else None
        values["parameters"] = (
            _fair_parameters(trafo, res.w, bk) if trafo is not None else _host(bk, res.w)
        )
    values["warped"] = _host(bk, res.warped)
    values["objective"] = float(res.distance)
    values["reduction"] = float(res.reduction)
    values["iterations"] = int(sum(res.iterations))
    if nonparametric:
        y = _host(bk, res.y)
        x = R.domain.cell_centers()
        values["displacement"] = (y - x).reshape(*R.m, R.dim)
        values["det_min"] = float(res.det_min)
        values["folded_cells"] = int(res.folded_cells)
    info = {
        "command": "register",
        "multireg": multireg.__version__,
        "status": res.status.value,
        "converged": res.status is Status.CONVERGED,
        "backend": bk.name,
        "dtype": args.dtype,
        "device": str(device) if device is not None else None,
        "settings": {
            **_settings(args, _REGISTER_SETTINGS if nonparametric else _PARAMETRIC_SETTINGS),
            "levels_used": sorted({lv.level for lv in res.levels}),  # what ran
        },
        "template": T.describe(),
        "reference": R.describe(),
        "omega": list(R.omega),
        "m": list(R.m),
        "parameters_layout": (
            _LAYOUTS.get(args.transform)
            if not nonparametric
            else (_LAYOUTS.get(args.pre_registration) if res.w is not None else None)
        ),
        "parameters_units": _units(R),
        "levels": [
            {
                "stage": lv.stage,
                "level": lv.level,
                "m": list(lv.domain.m),
                "iterations": lv.result.iterations,
                "status": lv.result.status.value,
                "message": lv.result.message,
                "distance": lv.distance,
            }
            for lv in res.levels
        ],
        "iterations": values["iterations"],
        "distance": values["objective"],
        "reduction": values["reduction"],
        "det_min": values.get("det_min"),
        "folded_cells": values.get("folded_cells"),
        "warnings": list(res.warnings),
        "intensity_exponent": res.intensity_exponent,
        "parameters": values.get("parameters"),
        "time": elapsed,
        "timings": dict(res.timings),
    }
    return CommandResult(values, info=info, raw=res, inputs=(T, R))


def _register_files(args, folder: Path, reference: Path, warped: Path | None = None) -> dict:
    """The files ``multireg register`` writes for one pair, but result.json (and the figure):
    the warped template in the reference's format, the displacement of a nonparametric map.
    ``register-many`` writes the same into each pair's folder."""
    plan = {
        "warped": warped if warped is not None else folder / f"warped{io.extension_of(reference)}"
    }
    io.format_of(plan["warped"])
    if args.transform == "nonparametric":
        plan["displacement"] = folder / "displacement.npz"
    return plan
