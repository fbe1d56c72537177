"""``multireg apply``: warp an image or landmarks with a registration's map, or export the map
for ITK, ANTs and SimpleITK. It computes on the host (NumPy): no --backend, --dtype or --device."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from multireg import io
from multireg.cli._common import (
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    RESULT_HELP,
    _add_geometry,
    _common,
    _out_dir,
    _outputs,
    _protected,
    add_command,
)


def add_parser(commands) -> None:
    """The ``apply`` command's parser."""
    outputs = _outputs()
    app = add_command(
        commands,
        "apply",
        "warp an image (labels, another modality) or landmarks with a registration's map",
        [_common(backend=False), outputs],
        "Warp IMAGE (on the template's grid) onto the reference grid, image(y(x)), map "
        "landmarks (world units), or export the map for ITK, ANTs and SimpleITK. Writes "
        "DIR/applied.<ext> (in IMAGE's format; on --like's grid and geometry when given), "
        "DIR/points.csv (--points) and the --export file.",
    )
    app.add_argument("result", type=Path, metavar="RESULT", help=RESULT_HELP)
    app.add_argument(
        "image",
        type=Path,
        nargs="?",
        default=None,
        metavar="IMAGE",
        help="the image to warp (any format multireg reads); optional with --points or --export",
    )
    g = app.add_argument_group("apply")
    g.add_argument(
        "--order",
        choices=("nearest", "linear", "cubic"),
        default="linear",
        help="interpolation: nearest for label maps (labels kept exactly), linear or cubic",
    )
    g.add_argument(
        "--like",
        type=Path,
        default=None,
        metavar="REFERENCE",
        help="the output grid and geometry (default: the registration's reference grid)",
    )
    g.add_argument("--fill", type=float, default=0.0, help="the value outside IMAGE (default 0)")
    g.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="path of the warped image (default DIR/applied with IMAGE's extension)",
    )
    g.add_argument(
        "--points",
        type=Path,
        default=None,
        metavar="FILE",
        help="landmarks of the reference (world units; .csv/.txt/.npy) to map into the "
        "template, written to DIR/points.csv",
    )
    g.add_argument(
        "--inverse",
        action="store_true",
        help="map --points from the template back to the reference (fixed-point inverse "
        "for nonlinear maps; the residual is reported)",
    )
    g.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the map for ITK/ANTs/SimpleITK: .tfm, .txt or .h5 (linear maps: an "
        "ITK AffineTransform) or .nii/.nii.gz (a displacement field on the reference grid, "
        "or --like's; LPS vectors)",
    )
    _add_geometry(g)


def run(args) -> int:
    """``multireg apply``: warp IMAGE (and --points) with RESULT's map; outputs as one unit."""
    from multireg.workflow.apply import apply as warp
    from multireg.workflow.apply import as_map, read_points, transform_points, write_points

    inputs = _protected(args, "result", "image", "like", "points")
    if args.inverse and args.points is None:
        raise ValueError("--inverse applies to --points")
    if args.image is None and args.points is None and args.export is None:
        raise ValueError("give IMAGE, --points or --export: there is nothing to apply")
    if args.image is None and args.output is not None:
        raise ValueError("--output names the warped IMAGE; give IMAGE")
    out = _out_dir(args, "apply")
    plan = {}
    if args.image is not None:
        plan["image"] = args.output or out / f"applied{io.extension_of(args.image)}"
        io.format_of(plan["image"])
    if args.points is not None:
        plan["points"] = out / "points.csv"
    if args.export is not None:
        suffixes = (".tfm", ".txt", ".h5", ".mat", ".nii", ".nii.gz")
        if not args.export.name.lower().endswith(suffixes):
            raise ValueError(f"--export {args.export}: the name must end in {', '.join(suffixes)}")
        plan["export"] = args.export
    outputs = io.OutputSet(plan.values(), overwrite=args.overwrite, protect=inputs)
    kwargs = dict(spacing=args.spacing, allow_oblique=args.allow_oblique)
    image = io.read_image(args.image, **kwargs) if args.image is not None else None
    like = io.read_image(args.like, **kwargs) if args.like is not None else None
    mp = as_map(args.result)
    points = read_points(args.points, mp.dim) if args.points is not None else None
    grid = like.domain if like is not None else (mp.domain or getattr(image, "domain", None))
    if args.export is not None and args.export.name.lower().endswith((".nii", ".nii.gz")):
        if grid is None:
            raise ValueError("--export as a displacement field needs a grid: give --like")
    elif args.export is not None and not mp.is_linear:
        raise ValueError(
            f"--export {args.export}: only a linear map is an ITK transform file; export this "
            "map as a displacement field (.nii.gz)"
        )
    elif args.export is not None and args.export.suffix.lower() in (".h5", ".mat"):
        from multireg.workflow import itk

        itk._sitk()  # the binary formats need SimpleITK: said before any work
    started = time.perf_counter()
    data = None
    if image is not None:
        data = warp(mp, image, order=args.order, like=like, fill=args.fill)
    mapped = None
    if points is not None:
        mapped = transform_points(mp, points, inverse=args.inverse)
    elapsed = time.perf_counter() - started
    with outputs:
        at = outputs.stage
        if data is not None:
            geometry = like if like is not None else (image if image.domain == grid else None)
            io.write_image(
                at(plan["image"]), data, like=geometry, omega=None if geometry else grid.omega
            )
        if mapped is not None:
            write_points(at(plan["points"]), mapped.points)
        if "export" in plan:
            from multireg.workflow import itk

            if args.export.name.lower().endswith((".nii", ".nii.gz")):
                itk.write_displacement(at(plan["export"]), mp, like=grid)
            else:
                itk.write_transform(at(plan["export"]), mp)
    if not args.quiet:
        if data is not None:
            print(
                f"apply: {args.image} warped ({args.order}) onto a "
                f"{'x'.join(map(str, grid.m))} grid in {elapsed:.2f} s"
            )
        if mapped is not None:
            direction = "inverse" if args.inverse else "forward"
            print(
                f"  {len(mapped.points)} points mapped ({direction}); max residual "
                f"{mapped.max_residual:.3g}{'' if mapped.converged else ' (NOT converged)'}"
            )
        print("  wrote " + ", ".join(str(p) for p in plan.values()))
    if mapped is not None and not mapped.converged:
        print(
            "multireg: warning: the inverse did not converge for every point (the map may "
            "fold there); outputs written, exit code 3",
            file=sys.stderr,
        )
        return EXIT_NOT_CONVERGED
    return EXIT_OK
