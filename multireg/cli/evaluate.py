"""``multireg evaluate``: Dice, HD95, TRE and Jacobian statistics of a registration. It
computes on the host (NumPy): no --backend, --dtype or --device."""

from __future__ import annotations

from pathlib import Path

from multireg import io
from multireg.cli._common import (
    EXIT_OK,
    RESULT_HELP,
    _add_geometry,
    _common,
    _outputs,
    _protected,
    _units,
    add_command,
)


def add_parser(commands) -> None:
    """The ``evaluate`` command's parser."""
    ev = add_command(
        commands,
        "evaluate",
        "Dice, HD95, TRE and Jacobian statistics of a registration",
        [_common(backend=False), _outputs(folder=False)],
        "Print the metrics the inputs allow (multireg.metrics; Learn2Reg's conventions): Dice "
        "and HD95 per label (--labels), TRE in world units (--landmarks, through RESULT's "
        "map), and det of the Jacobian of RESULT's map (SDlogJ, % folded, min, max). --out "
        "writes them as JSON.",
    )
    ev.add_argument(
        "result", type=Path, nargs="?", default=None, metavar="RESULT", help=RESULT_HELP
    )
    g = ev.add_argument_group("evaluate")
    g.add_argument(
        "--labels",
        type=Path,
        nargs=2,
        default=None,
        metavar=("FIXED", "WARPED"),
        help="label maps on one grid: the fixed labels and the moving labels warped onto it "
        "(multireg apply --order nearest)",
    )
    g.add_argument(
        "--landmarks",
        type=Path,
        nargs=2,
        default=None,
        metavar=("FIXED", "MOVING"),
        help="corresponding landmarks (world units; .csv/.txt/.npy)",
    )
    g.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="also write the metrics as JSON"
    )
    _add_geometry(g)


def run(args) -> int:
    """``multireg evaluate``: the metrics of :mod:`multireg.metrics`, printed (and --out JSON)."""
    from multireg.workflow import metrics
    from multireg.workflow.apply import as_map, read_points

    inputs = _protected(args, "result", "labels", "landmarks")
    if args.result is None and args.labels is None and args.landmarks is None:
        raise ValueError("give RESULT, --labels or --landmarks: there is nothing to evaluate")
    outputs = None
    if args.out is not None:
        outputs = io.OutputSet([args.out], overwrite=args.overwrite, protect=inputs)
    kwargs = dict(spacing=args.spacing, allow_oblique=args.allow_oblique)
    mp = as_map(args.result) if args.result is not None else None
    options: dict = {}
    domain = None
    if args.labels is not None:
        fixed, warped = (io.read_image(p, **kwargs) for p in args.labels)
        if fixed.m != warped.m:
            raise ValueError(
                f"--labels: {fixed.path} has shape {fixed.m} but {warped.path} has {warped.m}"
            )
        domain = fixed.domain
        options.update(fixed_labels=fixed.data, warped_labels=warped.data)
    if args.landmarks is not None:
        dim = mp.dim if mp is not None else None
        fixed_points, moving_points = (read_points(p, dim) for p in args.landmarks)
        options.update(fixed_points=fixed_points, moving_points=moving_points)
    report = metrics.evaluate(mp, domain=domain, **options)
    if domain is not None:
        report["hd95"]["units"] = _units(fixed)
    report["inputs"] = {
        "result": None if args.result is None else str(args.result),
        "labels": None if args.labels is None else [str(p) for p in args.labels],
        "landmarks": None if args.landmarks is None else [str(p) for p in args.landmarks],
    }
    if outputs is not None:
        with outputs:
            io.write_json(outputs.stage(args.out), report)
    if not args.quiet:
        print("\n".join(_evaluate_lines(report)))
    return EXIT_OK


def _evaluate_lines(report: dict) -> list[str]:
    lines = ["evaluate:"]
    if "dice" in report:
        d, h = report["dice"], report["hd95"]
        lines.append(
            f"  Dice mean {d['mean']:.4f} over labels present in both; HD95 mean "
            f"{h['mean']:.4g} ({h['units']})"
        )
        for label, value in d["per_label"].items():
            lines.append(f"    label {label}: Dice {value:.4f}, HD95 {h['per_label'][label]:.4g}")
    if "tre_initial" in report:
        t0 = report["tre_initial"]
        line = f"  TRE before: mean {t0['mean']:.4g}, max {t0['max']:.4g} ({t0['n']} landmarks)"
        lines.append(line)
        if "tre" in report:
            t = report["tre"]
            lines.append(
                f"  TRE after: mean {t['mean']:.4g} ± {t['std']:.3g}, median "
                f"{t['median']:.4g}, max {t['max']:.4g}"
            )
    if "jacobian" in report:
        j = report["jacobian"]
        lines.append(
            f"  det of the Jacobian: min {j['det_min']:.4g}, max {j['det_max']:.4g}, SDlogJ "
            f"{j['sdlogj']:.4g}, folded {j['folded_percent']:.3g} %"
        )
    return lines
