"""The model and solver options shared by ``multireg register`` and ``multireg register-many``:
one definition, so that both commands accept, check and document the same options, and pass
them to :func:`multireg.register` the same way."""

from __future__ import annotations

import argparse
from typing import Any

from multireg.cli._common import (
    _count,
    _ints,
    _levels,
    _nonnegative,
    _positive,
)


def _add_distance(g, *, fair: bool = False) -> None:
    g.add_argument(
        "--distance",
        choices=("ssd", "ncc", "ngf", "mi", "mi-gn") if fair else ("ssd", "ncc", "ngf", "mi"),
        default="ssd",
        help="distance measure (mi needs --method lbfgs, trust-region or newton"
        + (
            "; mi-gn: FAIR's Gauss-Newton MI, its joint histogram as the residual and a "
            "heuristic curvature)"
            if fair
            else ")"
        ),
    )


def _add_registration_options(parser) -> None:
    """The model and solver options of ``multireg register``, shared by ``register-many``
    (one definition, so that both commands accept and document the same options)."""
    import multireg

    g = parser.add_argument_group("model")
    g.add_argument(
        "--transform",
        choices=("translation", "rigid", "affine", "bspline", "nonparametric"),
        default="affine",
        help="transformation model; parameters in FAIR's layout and the units of omega",
    )
    g.add_argument(
        "--p",
        type=_ints,
        default=None,
        metavar="P1,P2[,P3]",
        help="control grid of --transform bspline (cells per axis)",
    )
    _add_distance(g, fair=True)
    g.add_argument(
        "--image-model",
        choices=("spline", "linear"),
        default="spline",
        help="continuous image model (cubic B-spline or linear interpolation)",
    )
    g.add_argument(
        "--theta",
        type=_nonnegative,
        default=0.0,
        help="spline smoothing weight theta (0 interpolates)",
    )
    g.add_argument(
        "--regularizer",
        choices=("elastic", "diffusive", "curvature"),
        default="elastic",
        help="regulariser of --transform nonparametric",
    )
    g.add_argument(
        "--alpha",
        type=_positive,
        default=None,
        help="regularisation weight of --transform nonparametric (required there)",
    )
    g.add_argument("--mu", type=_nonnegative, default=1.0, help="elastic Lamé constant mu")
    g.add_argument("--lam", type=_nonnegative, default=0.0, help="elastic Lamé constant lambda")
    g.add_argument(
        "--pre-registration",
        choices=("affine", "rigid", "translation", "none"),
        default="affine",
        help="parametric pre-registration of --transform nonparametric on the coarsest level",
    )
    g = parser.add_argument_group("solver")
    g.add_argument(
        "--levels",
        type=_levels,
        default="auto",
        metavar="auto|K|LO,HI",
        help="multilevel: 'auto' (every level with at least 8 cells per axis), the K "
        "finest levels, or FAIR's level numbers LO,HI",
    )
    g.add_argument(
        "--method",
        choices=("gauss-newton", "newton", "trust-region", "lbfgs"),
        default="gauss-newton",
        help="optimiser (nonparametric: gauss-newton or lbfgs)",
    )
    g.add_argument(
        "--max-iter",
        type=_count,
        default=multireg.problems.registration.MAX_ITER,
        help="iterations per level (register()'s default)",
    )
    g.add_argument(
        "--tol-j", type=_nonnegative, default=1e-3, help="relative change of J (FAIR's tolJ)"
    )
    g.add_argument(
        "--tol-y", type=_nonnegative, default=1e-2, help="relative change of y (FAIR's tolY)"
    )
    g.add_argument(
        "--tol-g", type=_nonnegative, default=1e-2, help="relative gradient norm (FAIR's tolG)"
    )
    g = parser.add_argument_group(
        "FAIR-exact computations (multireg's defaults serve users better; these reproduce FAIR)"
    )
    g.add_argument(
        "--fair-compat",
        action="store_true",
        help="reproduce FAIR's own computations: the three options below take their FAIR "
        "values unless given, --distance ngf takes FAIR's boundary rows and mi becomes mi-gn",
    )
    g.add_argument(
        "--linear-solver",
        choices=("pcg", "direct"),
        default=None,
        help="Gauss-Newton/Newton system: pcg (default; truncated Jacobi-PCG to the CG "
        "tolerance) or direct (FAIR: solved exactly, as its backslash)",
    )
    g.add_argument(
        "--prolongation",
        choices=("linear", "constant"),
        default=None,
        help="nonparametric multilevel, the outer half cells of the finer level: linear "
        "(default; extrapolated, carries an affine map exactly) or constant (FAIR's mfPu: "
        "copied)",
    )
    g.add_argument(
        "--det-method",
        choices=("multireg", "fair"),
        default=None,
        help="nonparametric det of the Jacobian behind det_min and folds: multireg (default; "
        "on the unknowns' own grid) or fair (FAIR's 'Jac' on the nodes, whose averaging "
        "hides some folds)",
    )


def _auto_levels(omega, m) -> int:
    from multireg.grid import Domain, pyramid_domains

    domains = pyramid_domains(Domain(omega, m), min_size=1)
    return max(1, min(3, sum(min(d.m) >= 8 for d in domains)))


def _register_levels(requested, domain) -> int | tuple[int, int] | None:
    """``multireg.register``'s ``levels`` for ``--levels``: 'auto', K or FAIR's LO,HI.

    Levels that the image does not have are refused, not trimmed: ``--levels 3,20`` on a
    128×128 image (FAIR levels 0..7, level = ceil(log2 min m)) would run 3..7 while the user
    believes 3..20 ran, so the error names the levels there are.
    """
    from multireg.grid import pyramid_domains

    if requested == "auto":
        return _auto_levels(domain.omega, domain.m)
    if requested == 1:
        return None
    numbers = [d.level for d in pyramid_domains(domain, min_size=1)]  # coarsest first
    size = "x".join(str(v) for v in domain.m)
    if isinstance(requested, int):
        if requested > len(numbers):
            raise ValueError(
                f"--levels {requested}: a {size} image has {len(numbers)} levels "
                f"(FAIR levels {numbers[0]} to {numbers[-1]}); use --levels {len(numbers)} or fewer"
            )
        return requested
    lo, hi = requested
    if hi > numbers[-1]:
        raise ValueError(
            f"--levels {lo},{hi}: a {size} image has FAIR levels {numbers[0]} to {numbers[-1]} "
            f"(level = ceil(log2 of the smallest size)); its finest is level {numbers[-1]}: "
            f"use --levels {min(lo, numbers[-1])},{numbers[-1]}"
        )
    return requested


_REGISTER_SETTINGS = (
    "transform", "p", "distance", "image_model", "theta", "regularizer", "alpha", "mu", "lam",
    "pre_registration", "levels", "method", "max_iter", "tol_j", "tol_y", "tol_g", "spacing",
    "allow_oblique", "fair_compat", "linear_solver", "prolongation", "det_method",
)  # fmt: skip


_NONPARAMETRIC_ONLY = (
    "regularizer", "alpha", "mu", "lam", "pre_registration", "prolongation", "det_method",
)  # fmt: skip
_PARAMETRIC_SETTINGS = tuple(k for k in _REGISTER_SETTINGS if k not in _NONPARAMETRIC_ONLY)


def _check_registration_options(args: argparse.Namespace) -> None:
    """The combinations of the registration options that argparse cannot check alone."""
    nonparametric = args.transform == "nonparametric"
    if nonparametric and args.alpha is None:
        raise ValueError("--transform nonparametric needs --alpha (the regularisation weight)")
    if not nonparametric and args.alpha is not None:
        raise ValueError("--alpha applies to --transform nonparametric only")
    if args.p is not None and args.transform != "bspline":
        raise ValueError("--p applies to --transform bspline only")
    if args.p is None and args.transform == "bspline":
        raise ValueError("--transform bspline needs --p (the control grid, e.g. --p 8,8)")
    # register() ignores these where they do not apply; a command line says so instead
    if args.linear_solver is not None and args.method not in ("gauss-newton", "newton"):
        raise ValueError("--linear-solver applies to --method gauss-newton or newton only")
    for option, value in (("--prolongation", args.prolongation), ("--det-method", args.det_method)):
        if value is not None and not nonparametric:
            raise ValueError(f"{option} applies to --transform nonparametric only")


def _registration_kwargs(args: argparse.Namespace, levels: Any) -> dict:
    """:func:`multireg.register`'s keyword arguments from the registration options (without
    the backend and dtype), for ``register`` and ``register-many`` alike."""
    options = dict(
        transform=args.transform,
        distance=args.distance,
        image_model=args.image_model,
        theta=args.theta,
        levels=levels,
        method=args.method,
        max_iter=args.max_iter,
        tol_j=args.tol_j,
        tol_y=args.tol_y,
        tol_g=args.tol_g,
    )
    if args.distance == "mi-gn":
        from multireg.distances import MIGaussNewton

        options["distance"] = MIGaussNewton()
    if args.fair_compat:
        options["fair_compat"] = True
    for key in ("linear_solver", "prolongation", "det_method"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.p is not None:
        options["p"] = tuple(args.p)
    if args.transform == "nonparametric":
        options.update(
            regularizer=args.regularizer,
            alpha=args.alpha,
            mu=args.mu,
            lam=args.lam,
            pre_registration=None if args.pre_registration == "none" else args.pre_registration,
        )
    return options
