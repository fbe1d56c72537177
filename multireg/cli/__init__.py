"""The ``multireg`` command line: register, register-many, homotopy, superres, dynamics, demo,
validate, bench, apply, evaluate.

``multireg <command> --help`` documents every option. Inputs are read by :mod:`multireg.io`
(NIfTI, PNG/JPEG/TIFF, ``.npy``/``.npz``, with their geometry); outputs go to a folder
(``--out``, default ``./multireg-<command>``) as one unit: all of a run's outputs appear, or
none of them (:class:`multireg.io.OutputSet`), never over an input, and an existing output is
replaced only with ``--overwrite``. Whether the outputs can be written (folders creatable and
writable, nothing in the way) is checked before any computation. Progress bars (tqdm, when
installed) go to stderr, one per level, θ step or outer iteration, and only when stderr is a
terminal; ``--quiet`` turns them and the summary off.

Exit codes
----------
0
    success.
1
    an unexpected error (a bug; ``--debug`` prints the traceback).
2
    bad input or usage: an unknown option or value, a missing, unreadable or unsupported file,
    images whose grids do not match, NaN/Inf or constant data, an output that exists (without
    ``--overwrite``) or that would replace an input, a backend or optional package that is
    not installed. Usage errors exit through ``SystemExit(2)`` as argparse does; the others
    are returned by :func:`main`.
3
    the solver did not converge (its status is not ``converged``); the outputs are written.
4
    ``validate``: the backends disagree by more than ``--rtol``.
5
    ``register-many``: at least one pair failed (its row in ``summary.csv`` says why); the
    other pairs' outputs are written. Without failures, a pair that did not converge gives 3.
130
    interrupted (Ctrl-C); a run's outputs appear all together or not at all, and no temporary
    is left.
141
    the reader of stdout went away (``multireg register … | head -1``): the command stops
    quietly, as a shell tool killed by SIGPIPE (128 + 13) does; outputs already written stay.

Every error is one line on stderr, ``multireg: error: <message>`` (a traceback only with
``--debug``).

Contract for cross-framework validation (:mod:`multireg.validate`)
------------------------------------------------------------------
The computing commands are separated from their output writing, so that one command can be run
on several backends and the results compared:

* :func:`parse_command` ``(argv) -> (name, namespace)`` parses a command line without the
  program name (``["register", "T.png", "R.png", "--transform", "affine"]``); bad usage raises
  :class:`UsageError` (a ``ValueError``), ``--help`` exits through ``SystemExit(0)``.
* ``COMMANDS[name](namespace, backend) -> (result, status)`` for ``name`` in ``register``,
  ``homotopy``, ``superres``, ``dynamics``: reads the inputs, computes on ``backend`` (a name,
  a :class:`~multireg.Backend`, or None for ``namespace.backend``/the default), writes nothing.
  ``result`` is a :class:`CommandResult`: a dict whose values are NumPy arrays, floats or ints
  only (the same keys and shapes on every backend: ``objective`` and ``iterations`` always;
  ``parameters`` and ``warped`` for register/homotopy; ``image`` and ``motions`` for superres;
  ``displacement`` and ``det_min`` for nonparametric registration; see each ``run_<command>``),
  with the attributes ``info`` (JSON-able settings, per-level/per-step details, timings),
  ``raw`` (the solver's own result object) and ``inputs`` (the :class:`multireg.io.Image`
  inputs). ``status`` is a :class:`multireg.optimize.Status`; only ``Status.CONVERGED`` is a
  success. ``result.info["time"]`` is the wall time of the solve in seconds.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import shutil
import sys
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multireg import io
from multireg.optimize import Status

__all__ = [
    "COMMANDS",
    "EXIT_DISAGREE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_CONVERGED",
    "EXIT_OK",
    "EXIT_PAIRS_FAILED",
    "EXIT_STDOUT_CLOSED",
    "EXIT_USAGE",
    "CommandResult",
    "UsageError",
    "build_parser",
    "main",
    "parse_command",
    "run_dynamics",
    "run_homotopy",
    "run_register",
    "run_superres",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_CONVERGED = 3
EXIT_DISAGREE = 4
EXIT_PAIRS_FAILED = 5
EXIT_INTERRUPTED = 130
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader left

EPILOG = """\
exit codes:
  0    success
  1    unexpected error (rerun with --debug for the traceback)
  2    bad input or usage (unknown option, missing/unreadable/mismatched/NaN image,
       existing output without --overwrite, output over an input, backend not installed)
  3    the solver did not converge (outputs are still written)
  4    validate: backends disagree by more than --rtol
  5    register-many: at least one pair failed (its row in DIR/summary.csv says why)
  130  interrupted (a run's outputs appear all together or not at all)
  141  stdout was closed by its reader (e.g. | head); stopped quietly
"""

# Errors that mean "bad input or usage" (exit 2) rather than a bug (exit 1).
_INPUT_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ImportError,
)


# Errors of the environment or the command line that also count as bad usage for commands that
# read no input data (demo, bench).
_ENVIRONMENT_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ImportError,
)


class UsageError(ValueError):
    """A command line that cannot be parsed (unknown option, bad value, missing argument)."""


class CommandResult(dict):
    """A command's numbers (NumPy arrays, floats, ints) with ``info``, ``raw`` and ``inputs``.

    ``info``: JSON-able settings and details; ``raw``: the solver's result object; ``inputs``:
    the :class:`multireg.io.Image` objects read.
    """

    def __init__(self, values: dict, *, info: dict, raw: Any = None, inputs: tuple = ()):
        super().__init__(values)
        self.info = info
        self.raw = raw
        self.inputs = inputs


# ------------------------------------------------------------------------------------ parsing


class _Parser(argparse.ArgumentParser):
    """argparse with errors raised (one line, naming the command) instead of printed."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default unless it is None or a flag's False; keeps the epilog's
    layout (descriptions are wrapped by :func:`_wrap`)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text
            or default is None
            or isinstance(default, bool)
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        if isinstance(default, tuple):
            return (
                text
                + " (default: "
                + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
                + ")"
            )
        return text + " (default: %(default)s)"


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=min(100, shutil.get_terminal_size((100, 24)).columns - 2))


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 8,8, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,2.5, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _nonnegative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _levels(text: str) -> str | int | tuple[int, int]:
    if text in ("auto", "1"):
        return "auto" if text == "auto" else 1
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) == 1 and parts[0] >= 1:
        return parts[0]
    if len(parts) == 2 and 0 <= parts[0] <= parts[1]:
        return parts
    raise argparse.ArgumentTypeError(
        f"expected 'auto', a number of levels k >= 1, or FAIR levels lo,hi; got {text!r}"
    )


CLI_BACKEND_PREFERENCE = ("torch", "jax")
"""The command line's default backend when none is chosen (``--backend``, ``MULTIREG_BACKEND``):
the first installed of these. A command is a one-off process, and there torch answers sooner
than JAX, which compiles each kernel on its first call (measured, issue 13; see ``--backend``'s
help). The API's default (:mod:`multireg._backend`) stays JAX first: a long-lived process
pays JAX's compilation once and then runs faster."""


def _backend_names() -> list[str]:
    """The backends a command can compute on: the registered ones that differentiate (every
    command needs derivatives; the NumPy backend is forward-only, so it is not offered). Read
    from the adapter classes, so no framework is imported; one that is registered but not
    installed is offered, and choosing it says how to install it."""
    from multireg._backend import _backend_classes

    return sorted(n for n, c in _backend_classes().items() if getattr(c, "differentiable", True))


def _common(
    *, backend: bool = True, device: bool = True, per_worker: bool = False
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    if backend:
        g.add_argument(
            "--backend",
            choices=_backend_names(),
            default=None,
            help="framework that computes and differentiates (default: $MULTIREG_BACKEND, "
            f"else the first installed of {', '.join(CLI_BACKEND_PREFERENCE)}: a command is a "
            "one-off process, and there torch answers sooner because JAX compiles each kernel "
            "on its first call; 'multireg register' on FAIR's hands, whole new processes, one "
            "thread, shared 2-core machine: affine 6-11 s torch vs 45 s JAX with an empty "
            "compilation cache, 12 s vs 11 s with a warm one; elastic 10 s vs 78 s, and 12 s vs "
            "30 s. The Python API's default stays JAX first: a long-lived process compiles once "
            "and then runs faster)",
        )
        g.add_argument(
            "--dtype",
            choices=("float64", "float32"),
            default="float64",
            help="floating-point precision of the computation",
        )
    if backend and device:
        g.add_argument(
            "--device",
            default="cpu",
            help="device for the arrays, as the backend names it: cpu, cuda, cuda:1, gpu",
        )
    g.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars and no summary on stdout"
    )
    g.add_argument(
        "--debug", action="store_true", help="print the traceback of an error (for bug reports)"
    )

    def thread_count(text: str) -> int:
        if _count(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
        return int(text)

    class Threads(argparse.Action):
        # exported as MULTIREG_THREADS at parse time: every backend created afterwards reads it,
        # in this process and in the ones it starts (validate, bench)
        def __call__(self, parser, namespace, values, option_string=None):
            import os

            os.environ["MULTIREG_THREADS"] = str(values)
            setattr(namespace, self.dest, values)

    g.add_argument(
        "--threads",
        type=thread_count,
        action=Threads,
        default=None,
        metavar="N",
        help=(
            "CPU threads of each worker (default 1: one pair per CPU uses the CPUs better "
            "than a few pairs on many)"
            if per_worker
            else "CPU threads per computation (default: $MULTIREG_THREADS, else half the "
            "CPUs, at most 4; torch's own default oversubscribes a shared machine)"
        ),
    )
    return p


def _outputs(*, folder: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("outputs")
    if folder:
        g.add_argument(
            "--out",
            type=Path,
            default=None,
            metavar="DIR",
            help="folder for the outputs (created if missing; default ./multireg-<command>)",
        )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (an input is never overwritten)",
    )
    return p


def _images() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "template",
        type=Path,
        metavar="TEMPLATE",
        help="the image T that is moved (.nii, .nii.gz, .png, .jpg, .tif, .npy, .npz)",
    )
    p.add_argument(
        "reference",
        type=Path,
        metavar="REFERENCE",
        help="the fixed image R, on the same grid as T; the warped T is written on R's grid",
    )
    g = p.add_argument_group("image input")
    g.add_argument(
        "--spacing",
        type=_floats,
        default=None,
        metavar="S1,S2[,S3]",
        help="pixel size per axis for formats without geometry (PNG/JPEG/TIFF/.npy; "
        "default 1: omega in pixel units). NIfTI geometry comes from its affine",
    )
    g.add_argument(
        "--allow-oblique",
        action="store_true",
        help="accept a NIfTI whose axes are rotated/sheared against the world axes and "
        "register it in its voxel frame (parameters are then not in world coordinates)",
    )
    g.add_argument(
        "--warped",
        type=Path,
        default=None,
        metavar="FILE",
        help="path of the warped template (default: DIR/warped with REFERENCE's extension); "
        "its extension chooses the format",
    )
    return p


def _module_choices(module: str, name: str, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """A module's tuple of option names (imported lazily; ``fallback`` if it cannot be)."""
    try:
        return tuple(getattr(importlib.import_module(f"multireg.{module}"), name))
    except Exception:  # a missing or broken optional module must not break the parser
        return fallback


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


def build_parser() -> argparse.ArgumentParser:
    """The ``multireg`` argument parser (every subcommand and option, with help)."""
    import multireg

    parser = _Parser(
        prog="multireg",
        description="Variational image registration and coupled inverse problems, on torch or "
        "JAX. Run 'multireg <command> --help' for a command's options.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"multireg {multireg.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common, outputs = _common(), _outputs()

    def sub(name, help, parents, description):
        return commands.add_parser(
            name,
            help=help,
            description=_wrap(description),
            parents=parents,
            epilog=EPILOG,
            formatter_class=_Formatter,
        )

    # ---------------------------------------------------------------------------- register
    reg = sub(
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

    # ---------------------------------------------------------------------------- register-many
    many = sub(
        "register-many",
        "register many pairs listed in a CSV manifest, on a process pool or a Dask cluster",
        [_common(device=False, per_worker=True), outputs],
        "Register every (template, reference) pair of MANIFEST with the same options as "
        "'multireg register' (multireg.register_many: each pair exactly once, on a pool "
        "of --workers processes or on the Dask scheduler at --scheduler). MANIFEST is a CSV "
        "file with the columns template and reference (image paths, relative to the "
        "manifest's folder) and optionally id (the pair's folder name; default the template's "
        "file name without extension, or pair-<row> when those repeat) and template_labels, "
        "reference_labels (label maps on the images' grids: the template's labels are warped "
        "with the pair's map, nearest neighbour, and scored against the reference's by Dice). "
        "Each pair's outputs are written by its worker as it completes, all of them or none, "
        "to DIR/<id>/: the files 'multireg register' writes for the pair (warped.<ext>: "
        "T(y) on R's grid in R's format; result.json; displacement.npz for --transform "
        "nonparametric), so 'multireg apply DIR/<id>' works; DIR/summary.csv has one row per "
        "pair (id, status, distance, reduction, iterations, time, Dice, error). A pair that "
        "fails is a row with its error; the others go on. The manifest is checked (columns, "
        "files, ids, outputs) before any work. Ctrl-C cancels every pair: pairs not finished "
        "leave no folder, and summary.csv lists them as cancelled (exit 130). With "
        "--scheduler, a pair already running on a Dask worker cannot be stopped from here: it "
        "may still complete and write its folder after Ctrl-C (summary.csv lists it as "
        "cancelled all the same).",
    )
    many.add_argument(
        "manifest", type=Path, metavar="MANIFEST", help="CSV file listing the pairs (see above)"
    )
    g = many.add_argument_group("image input")
    g.add_argument(
        "--spacing",
        type=_floats,
        default=None,
        metavar="S1,S2[,S3]",
        help="pixel size per axis for formats without geometry (default 1: omega in pixels)",
    )
    _add_registration_options(many)
    g = many.add_argument_group("execution")
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=_count,
        default=None,
        metavar="N",
        help="local worker processes, one pair each at a time (default: the CPUs, at most 8)",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="address of a Dask scheduler (tcp://host:8786) to run the pairs on its workers "
        "(needs dask.distributed: pip install 'multireg[dask]')",
    )

    # ---------------------------------------------------------------------------- homotopy
    hom = sub(
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

    # ---------------------------------------------------------------------------- superres
    sr = sub(
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

    # ---------------------------------------------------------------------------- dynamics
    dy = sub(
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

    # ---------------------------------------------------------------------------- demo
    demo = sub(
        "demo",
        "run every capability on built-in synthetic data and write figures",
        [_common(backend=False)],
        "The demo: registration, homotopy, super-resolution and dynamics on synthetic data, "
        "on every installed backend, with figures written to a folder it names.",
    )
    demo.add_argument(
        "--backend",
        action="append",
        choices=_backend_names(),
        help="backend to run (repeatable; default: all installed)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for the figures (default: a new multireg-demo-<time> folder)",
    )
    demo.add_argument(
        "--overwrite", action="store_true", help="reuse a folder that holds an earlier demo"
    )
    demo.add_argument(
        "--small", action="store_true", help="smaller problems (seconds instead of a minute)"
    )

    # ---------------------------------------------------------------------------- validate
    val = sub(
        "validate",
        "run one command on every installed backend and compare the results",
        [_common(backend=False)],
        "Cross-framework validation: run COMMAND ARGS on each backend, print a table of the "
        "agreement (max relative difference of parameters, images, objective; iteration "
        "counts) and the time per backend. Exit 4 if the agreement is worse than --rtol. "
        "--rtol, --backends, --report and --overwrite may come before or after COMMAND.",
    )
    val.add_argument(
        "--rtol", type=_positive, default=1e-6, help="tolerance on the relative differences"
    )
    val.add_argument(
        "--backends",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        default=None,
        metavar="B1,B2",
        help="backends to compare (default: every installed differentiable backend)",
    )
    val.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the table as Markdown to FILE (never over an input; an existing FILE "
        "only with --overwrite)",
    )
    val.add_argument("--overwrite", action="store_true", help="replace an existing --report FILE")
    val.add_argument(
        "validated",
        choices=tuple(COMMANDS),
        metavar="COMMAND",
        help=f"the command to validate: {', '.join(COMMANDS)}",
    )
    val.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS", help="the command's arguments"
    )

    # ---------------------------------------------------------------------------- bench
    bench = sub(
        "bench",
        "run the benchmarks and write one Markdown report",
        [_common(backend=False), _outputs(folder=False)],
        "Run the bench/ scripts (backends and peers side by side) and write their tables "
        "into one Markdown report.",
    )
    bench.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats (minutes, not hours)"
    )
    bench.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="the report's path (default: chosen by multireg.report)",
    )
    bench.add_argument(
        "--no-run",
        action="store_true",
        help="run nothing: assemble the tables the scripts wrote last time",
    )
    bench.add_argument(
        "--timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="time limit per bench script (default: none)",
    )
    bench.add_argument(
        "--scripts",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        default=None,
        metavar="S1,S2",
        help="only these bench scripts (default: all)",
    )
    _add_apply_and_evaluate(sub, outputs)
    return parser


def _add_apply_and_evaluate(sub, outputs) -> None:
    """The parsers of ``multireg apply`` and ``multireg evaluate`` (issue 15); both compute on
    the host (NumPy), so they have no --backend, --dtype or --device."""
    result_help = (
        "the transformation: a 'multireg register' output folder or its result.json, an ITK "
        "transform file (.tfm, .txt, .h5) or an ITK/ANTs displacement field (.nii, .nii.gz)"
    )
    app = sub(
        "apply",
        "warp an image (labels, another modality) or landmarks with a registration's map",
        [_common(backend=False), outputs],
        "Warp IMAGE (on the template's grid) onto the reference grid, image(y(x)), map "
        "landmarks (world units), or export the map for ITK, ANTs and SimpleITK. Writes "
        "DIR/applied.<ext> (in IMAGE's format; on --like's grid and geometry when given), "
        "DIR/points.csv (--points) and the --export file.",
    )
    app.add_argument("result", type=Path, metavar="RESULT", help=result_help)
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

    ev = sub(
        "evaluate",
        "Dice, HD95, TRE and Jacobian statistics of a registration",
        [_common(backend=False), _outputs(folder=False)],
        "Print the metrics the inputs allow (multireg.metrics; Learn2Reg's conventions): Dice "
        "and HD95 per label (--labels), TRE in world units (--landmarks, through RESULT's "
        "map), and det of the Jacobian of RESULT's map (SDlogJ, % folded, min, max). --out "
        "writes them as JSON.",
    )
    ev.add_argument(
        "result", type=Path, nargs="?", default=None, metavar="RESULT", help=result_help
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


def _add_geometry(g) -> None:
    g.add_argument(
        "--spacing",
        type=_floats,
        default=None,
        metavar="S1,S2[,S3]",
        help="pixel size per axis for formats without geometry (default 1)",
    )
    g.add_argument(
        "--allow-oblique",
        action="store_true",
        help="read an oblique NIfTI in its voxel frame (see register --help)",
    )


_SUBCOMMANDS = (
    "register", "register-many", "homotopy", "superres", "dynamics", "demo", "validate", "bench",
    "apply", "evaluate",
)  # fmt: skip
_VALIDATE_OPTIONS = ("--rtol", "--backends", "--report")
_VALIDATE_FLAGS = ("--overwrite",)  # the validated command writes nothing: it is validate's


def _hoist_validate_options(argv: list[str]) -> list[str]:
    """Move validate's own options from after COMMAND to before it (they may go anywhere)."""
    head, rest = argv[:1], argv[1:]
    options: list[str] = []
    i, remaining = 0, []
    while i < len(rest):
        token = rest[i]
        name = token.split("=", 1)[0]
        if token in _VALIDATE_FLAGS:
            options.append(token)
            i += 1
            continue
        if name in _VALIDATE_OPTIONS:
            if "=" in token:
                options.append(token)
                i += 1
            else:
                options.extend(rest[i : i + 2])
                i += 2
            continue
        remaining.append(token)
        i += 1
    return head + options + remaining


def parse_command(argv: Sequence[str]) -> tuple[str, argparse.Namespace]:
    """Parse ``argv`` (without the program name) into ``(command name, namespace)``.

    Raises :class:`UsageError` on bad usage; ``--help`` and ``--version`` exit (SystemExit 0).
    """
    argv = [str(a) for a in argv]
    if argv and argv[0] == "validate":
        argv = _hoist_validate_options(argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        if argv and argv[0] in _SUBCOMMANDS and "'multireg --help'" in str(err):
            raise UsageError(
                str(err).replace("'multireg --help'", f"'multireg {argv[0]} --help'")
            ) from None
        raise
    if args.command == "validate" and not args.args:
        raise UsageError(f"validate {args.validated}: give the command's arguments")
    return args.command, args


# ---------------------------------------------------------------------------------- helpers


def _cli_default_backend() -> str:
    """The backend a command uses when ``--backend`` is not given: ``MULTIREG_BACKEND``, or a
    backend this process chose (``set_backend``, ``use_backend``), else the first installed of
    :data:`CLI_BACKEND_PREFERENCE`."""
    from multireg import _backend as backends

    name = backends._default_from_environment()
    if name is not None:
        return name
    if backends._default is not None or backends._context.get() is not None:
        return backends.get_backend().name
    installed = backends.available_backends()
    return next((n for n in CLI_BACKEND_PREFERENCE if n in installed), installed[0])


def _backend(backend: Any, args: argparse.Namespace):
    """The differentiable backend to compute on (explicit > ``--backend`` > the command line's
    default, :func:`_cli_default_backend`)."""
    import multireg

    if backend is None:
        backend = args.backend if args.backend is not None else _cli_default_backend()
    bk = multireg.get_backend(backend)
    if not bk.differentiable:
        raise ValueError(
            f"backend {bk.name!r} cannot differentiate; use --backend torch or --backend jax"
        )
    return bk


def _device(bk, name: str | None):
    """The backend's device object named ``name`` (cpu, cuda, cuda:1, gpu), from the array
    API's inspection namespace (``__array_namespace_info__().devices()``)."""
    if name is None:
        return None
    with warnings.catch_warnings():  # torch warns while probing its device types
        warnings.simplefilter("ignore")
        devices = [d for d in bk.xp.__array_namespace_info__().devices() if d is not None]
    wanted = name.strip().lower().replace("gpu", "cuda")
    for d in devices:
        label = str(d).lower().replace("gpu", "cuda")
        if label == wanted or (":" not in wanted and label.split(":")[0] == wanted):
            return d
    available = ", ".join(dict.fromkeys(str(d) for d in devices))
    raise ValueError(
        f"--device {name!r} is not available to the {bk.name} backend (available: {available})"
    )


def _to_backend(bk, data: np.ndarray, args, device):
    return bk.asarray(data, dtype=args.dtype, device=device)


def _host(bk, x) -> np.ndarray:
    return np.asarray(bk.to_numpy(x), dtype=np.float64)


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class _Progress:
    """tqdm bars on stderr, one per (stage, level) or per run; off when quiet or not a TTY."""

    def __init__(self, quiet: bool, total: int | None = None, unit: str = "it"):
        self.enabled = not quiet
        self.total, self.unit = total, unit
        self.bar, self.key = None, None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.enabled = False
            tqdm = None
        self._tqdm = tqdm

    def _open(self, key, desc: str, total: int | None) -> None:
        if self.key == key and self.bar is not None:
            return
        self.close()
        self.key = key
        self.bar = self._tqdm(
            total=total, desc=desc, unit=self.unit, file=sys.stderr, disable=None, leave=True
        )

    def registration(self, stage, domain, record) -> None:
        if not self.enabled:
            return
        m = "x".join(str(v) for v in domain.m)
        self._open((stage, domain.m), f"{stage} {m}", self.total)
        self.bar.n = min(int(record.iteration), self.total or int(record.iteration))
        self.bar.set_postfix_str(f"J={record.fun:.4g}", refresh=True)

    def step(self, desc: str, record: Any = None) -> None:
        if not self.enabled:
            return
        self._open("run", desc, self.total)
        self.bar.update(1)
        fun = getattr(record, "fun", None)
        if fun is not None:
            self.bar.set_postfix_str(f"J={float(fun):.4g}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.key = None, None


class _Fun:
    def __init__(self, fun: float):
        self.fun = fun


def _record_of(args: tuple) -> Any:
    """An object with ``fun`` from a callback's arguments, if they hold one."""
    if args and hasattr(args[0], "fun"):
        return args[0]
    if len(args) >= 2 and isinstance(args[1], (int, float)):
        return _Fun(float(args[1]))
    return None


def _read_pair(args):
    kwargs = dict(spacing=args.spacing, allow_oblique=args.allow_oblique)
    T = io.read_image(args.template, **kwargs)
    R = io.read_image(args.reference, **kwargs)
    if T.m != R.m:
        raise ValueError(
            f"template {T.path} has shape {T.m} but reference {R.path} has shape {R.m}; "
            "register images on the same grid (resample one first)"
        )
    scale = max(abs(v) for v in (*T.omega, *R.omega, *R.domain.extent))
    if not np.allclose(T.omega, R.omega, rtol=0, atol=1e-6 * scale):
        raise ValueError(
            f"template {T.path} covers omega {_fmt(T.omega)} but reference {R.path} covers "
            f"{_fmt(R.omega)}; their grids must coincide (resample one onto the other)"
        )
    return T, R


def _units(image: io.Image) -> str:
    """The units of omega, hence of translation parameters."""
    if image.frame in ("voxel", "world"):
        return f"{image.frame} frame (mm)" if image.frame == "voxel" else "world (mm)"
    if image.frame == "stored":
        return "units of the stored omega"
    return "pixels" if all(h == 1.0 for h in image.spacing) else "units of --spacing"


def _fmt(values, digits: int = 6) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}g}" for v in values) + ")"


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


_LAYOUTS = {
    "translation": "FAIR translation: y = x + (w1, w2[, w3])",
    "rigid": "FAIR rigid: 2D [phi, t1, t2] (rotation about the origin, then translation); "
    "3D [phi1, phi2, phi3, t1, t2, t3], R = R3 R2 R1",
    "affine": "FAIR affine: y1 = w1 x1 + w2 x2 + w3, y2 = w4 x1 + w5 x2 + w6 "
    "(3D: rows [A(k,:) b_k])",
    "bspline": "FAIR B-spline: coefficient blocks per component, Fortran order",
}


def _fair_parameters(trafo, w, bk) -> np.ndarray:
    if hasattr(trafo, "to_fair"):  # B-spline: C-order blocks to FAIR's Fortran order
        w = trafo.to_fair(w)
    return _host(bk, w)


def _status_of(*statuses: Status) -> Status:
    for s in statuses:
        if s is not Status.CONVERGED:
            return s
    return Status.CONVERGED


def _settings(args, keys: Sequence[str]) -> dict:
    return {k: io.to_jsonable(getattr(args, k)) for k in keys if hasattr(args, k)}


# ------------------------------------------------------------------------------- commands


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


COMMANDS: dict[str, Callable[..., tuple[CommandResult, Status]]] = {
    "register": run_register,
    "homotopy": run_homotopy,
    "superres": run_superres,
    "dynamics": run_dynamics,
}


# --------------------------------------------------------------------------------- outputs


def _out_dir(args, name: str) -> Path:
    out = args.out if args.out is not None else Path(f"multireg-{name}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    return out


def _input_paths(args) -> list[Path]:
    """The files a command reads: never written, and their absence is reported first."""
    return [
        Path(p)
        for p in (getattr(args, k, None) for k in ("template", "reference", "frames", "masks"))
        if p is not None
    ]


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


class _PairWriter:
    """``register-many``'s writer (:func:`multireg.register_many`'s ``writer``): a pair's
    folder gets the files of ``multireg register`` for that pair, written by the same code
    (:func:`_register_result`, :func:`_write`), all of them or none. Runs in the worker; holds
    only the parsed options, so it pickles to a spawned process or a Dask worker."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def __call__(self, folder: Path, result, *, job, backend, inputs, seconds) -> dict[str, str]:
        T, R = inputs  # io.Image: register-many's jobs are paths
        plan = {
            **_register_files(self.args, folder, Path(job.reference)),
            "result": folder / "result.json",
        }
        command = _register_result(self.args, T, R, result, backend, None, seconds)
        written = _write(
            "register", self.args, command, plan, io.OutputSet(plan.values(), overwrite=True)
        )
        return {k: str(v) for k, v in written.items()}


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


# ------------------------------------------------------------------------------------ main


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


def _demo(args) -> int:
    from multireg.workflow import demo

    if _accepts(demo.run, "quiet"):
        options = {}
        for key in ("overwrite", "small"):
            if getattr(args, key):
                if not _accepts(demo.run, key):
                    raise ValueError(f"this multireg's demo has no option --{key}")
                options[key] = True
        folder = demo.run(args.backend, out=args.out, quiet=args.quiet, **options)
        if not args.quiet and folder is not None:
            print(f"demo: figures written to {folder}")
    else:  # an older demo without figures
        if args.out is not None:
            raise ValueError("this multireg's demo writes no figures; --out is not supported")
        demo.run(args.backend, out=(lambda *a: None) if args.quiet else print)
    return EXIT_OK


def _validate(args) -> int:
    try:
        from multireg.workflow.validate import run_command
    except ImportError as err:
        raise ImportError(f"this multireg has no validate module ({err})") from None
    argv = [args.validated, *args.args]
    _, inner = parse_command(argv)  # usage errors of the inner command, before any work
    wrong = [b for b in args.backends or () if b not in _backend_names()]
    if wrong:  # e.g. numpy: forward-only, so no command can run on it
        raise ValueError(
            f"--backends: cannot validate on {', '.join(map(repr, wrong))}; "
            f"choose from {', '.join(_backend_names())}"
        )
    outputs = None
    if args.report is not None:  # the same output rules as every command, before any work
        outputs = io.OutputSet([args.report], overwrite=args.overwrite, protect=_input_paths(inner))
    report = run_command(argv, backends=args.backends, rtol=args.rtol)
    if outputs is not None:
        with outputs:
            outputs.stage(args.report).write_text(report.table(), encoding="utf-8")
    if not args.quiet:
        print(report.table())
    if not report.ok:
        print(
            f"multireg: error: the backends disagree by more than --rtol {args.rtol:g}",
            file=sys.stderr,
        )
        return EXIT_DISAGREE
    return EXIT_OK


def _bench(args) -> int:
    try:
        from multireg.workflow.report import write_bench_report
    except ImportError as err:
        raise ImportError(f"this multireg has no report module ({err})") from None
    if args.out is not None:  # refused or unwritable: said before the benchmarks run
        io.OutputSet([args.out], overwrite=args.overwrite)
    options: dict = {}
    for key, value in (("quiet", args.quiet), ("run", not args.no_run), ("timeout", args.timeout)):
        if _accepts(write_bench_report, key):
            options[key] = value
        elif key != "quiet" and value not in (True, None):
            raise ValueError(f"this multireg's bench report has no option {key!r}")
    path = write_bench_report(args.out, quick=args.quick, scripts=args.scripts, **options)
    if not args.quiet:
        print(f"bench: report written to {path}")
    return EXIT_OK


# ------------------------------------------------------------------------------ register-many

_MANIFEST_COLUMNS = ("template", "reference", "id", "template_labels", "reference_labels")


def _read_manifest(path: Path) -> list[dict]:
    """The pairs of a register-many manifest, checked before any work: the columns (template,
    reference; optional id, template_labels, reference_labels; no others), at least one row,
    every file present (paths relative to the manifest's folder), ids distinct and usable as
    folder names. Each error names the manifest and the row (its line in the file)."""
    import csv

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (the manifest)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"manifest {path}: cannot be read as text ({err})") from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or ()]
    if not columns:
        raise ValueError(f"manifest {path} is empty: it needs a header 'template,reference'")
    missing = [c for c in ("template", "reference") if c not in columns]
    if missing:
        raise ValueError(
            f"manifest {path}: no column {', '.join(map(repr, missing))} (header: "
            f"{','.join(columns)})"
        )
    unknown = [c for c in columns if c not in _MANIFEST_COLUMNS]
    if unknown or len(set(columns)) != len(columns):
        raise ValueError(
            f"manifest {path}: unknown or repeated column(s) "
            f"{', '.join(map(repr, unknown or columns))}; the columns are "
            f"{', '.join(_MANIFEST_COLUMNS)}"
        )
    folder = path.parent
    rows: list[dict] = []
    for raw in reader:
        line = reader.line_num
        if None in raw:
            raise ValueError(f"manifest {path}, line {line}: more values than columns")
        cells = {k.strip(): (v or "").strip() for k, v in raw.items()}
        if not any(cells.values()):
            continue  # a blank line
        row: dict = {"line": line}
        for key in ("template", "reference", "template_labels", "reference_labels"):
            value = cells.get(key, "")
            if not value:
                if key in ("template", "reference"):
                    raise ValueError(f"manifest {path}, line {line}: no {key}")
                row[key] = None
                continue
            file = folder / value
            if not file.is_file():
                raise FileNotFoundError(f"manifest {path}, line {line}: {key} {file}: no such file")
            row[key] = file
        if (row["template_labels"] is None) != (row["reference_labels"] is None):
            raise ValueError(
                f"manifest {path}, line {line}: give template_labels and reference_labels "
                "together (Dice compares the warped template labels with the reference's)"
            )
        row["id"] = cells.get("id", "")
        rows.append(row)
    if not rows:
        raise ValueError(f"manifest {path} is empty: it has a header but no pairs")
    if not any(r["id"] for r in rows):  # the template's name, unless two templates share it
        stems = [_stem(r["template"]) for r in rows]
        unique = len(set(stems)) == len(stems)
        for i, r in enumerate(rows):
            r["id"] = stems[i] if unique else f"pair-{i + 1}"
    for r in rows:
        name = r["id"]
        if not name or name in (".", "..") or "/" in name or "\\" in name or name[0] == ".":
            raise ValueError(
                f"manifest {path}, line {r['line']}: id {name!r} cannot name a folder (it must "
                "be non-empty, without / or \\, and not start with '.')"
            )
    ids = [r["id"] for r in rows]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"manifest {path}: the ids {', '.join(twice)} repeat (one folder each)")
    return rows


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", *(path.suffixes[-1:] or [""])):
        if ext and name.lower().endswith(ext.lower()):
            return name[: -len(ext)]
    return name


def _pair_map(args, result, domain):
    """The pair's map y(x) on the reference grid, from what the worker returned and wrote."""
    import multireg
    from multireg.workflow.apply import Map

    if args.transform != "nonparametric":
        options = {"omega": domain.omega, "p": tuple(args.p)} if args.transform == "bspline" else {}
        trafo = multireg.transform(args.transform, None if options else domain.dim, **options)
        return Map(domain, trafo, np.asarray(result.w))
    with np.load(result.outputs["displacement"]) as arrays:  # register's displacement.npz
        return Map(domain, displacement=arrays["displacement"])


def _pair_dice(args, row: dict, result) -> tuple[float, float]:
    """Dice (mean over labels) of the template's labels before (identity) and after warping
    with the pair's map (nearest neighbour), against the reference's labels."""
    from multireg.workflow import metrics
    from multireg.workflow.apply import apply

    fixed = io.read_image(row["reference_labels"], spacing=args.spacing)
    moving = io.read_image(row["template_labels"], spacing=args.spacing)
    if fixed.m != moving.m:
        raise ValueError(f"label maps of shapes {moving.m} and {fixed.m} (they share one grid)")
    warped = apply(_pair_map(args, result, fixed.domain), moving, order="nearest")
    return metrics.dice(moving.data, fixed.data).mean, metrics.dice(warped, fixed.data).mean


_SUMMARY_COLUMNS = (
    "id", "status", "distance", "reduction", "iterations", "iterations_per_level", "det_min",
    "time_s", "dice_before", "dice", "backend", "worker", "template", "reference", "error",
)  # fmt: skip


def _summary_row(row: dict, result, dice: tuple | None, error: str | None) -> dict:
    def number(v, fmt=".9g"):
        return "" if v is None or v != v else format(v, fmt)

    out = {"id": row["id"], "template": str(row["template"]), "reference": str(row["reference"])}
    if result is None:
        return {**out, "status": "cancelled", "error": error or ""}
    out.update(
        status=result.status,
        distance=number(result.distance),
        reduction=number(result.reduction),
        iterations=str(sum(result.iterations)) if result.iterations else "",
        iterations_per_level="+".join(map(str, result.iterations)),
        det_min=number(result.det_min),
        time_s=number(result.seconds, ".3f"),
        dice_before=number(dice[0], ".6f") if dice else "",
        dice=number(dice[1], ".6f") if dice else "",
        backend=result.backend,
        worker=result.worker,
        error="; ".join(e for e in (result.error, error) if e),
    )
    return out


def _write_summary(path: Path, rows: list[dict], overwrite: bool, protect: list) -> None:
    import csv
    import io as _io

    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    outputs = io.OutputSet([path], overwrite=overwrite, protect=protect)
    with outputs:
        outputs.stage(path).write_text(buffer.getvalue(), encoding="utf-8")


def _progress_line(done: int, total: int, summary: dict) -> str:
    width = len(str(total))
    head = f"[{done:>{width}}/{total}] {summary['id']}: {summary['status']}"
    if summary["status"] == "failed":
        return f"{head}: {summary['error']}"
    text = (
        f"{head}, {summary['iterations']} iterations, distance {float(summary['distance']):.6g}"
        f", {float(summary['time_s']):.2f} s"
    )
    if summary["dice"]:
        text += f", Dice {float(summary['dice_before']):.3f} -> {float(summary['dice']):.3f}"
    if summary["error"]:
        text += f" ({summary['error']})"
    return text


def _register_many(args) -> int:
    """``multireg register-many``: every pair of the manifest through
    :func:`multireg.register_many`; one folder per pair and DIR/summary.csv."""
    from multireg.workflow.many import register_many

    rows = _read_manifest(args.manifest)
    _check_registration_options(args)
    if args.workers == 0:
        raise ValueError("--workers must be at least 1")
    out = _out_dir(args, "register-many")
    inputs = [args.manifest] + [r[k] for r in rows for k in _MANIFEST_PATHS if r[k] is not None]
    planned = [out / "summary.csv"]
    for r in rows:  # each pair's folder: the files of 'multireg register' for the pair
        files = _register_files(args, out / r["id"], r["reference"])
        planned.extend([*files.values(), out / r["id"] / "result.json"])
    io.OutputSet(planned, overwrite=args.overwrite, protect=inputs)  # refused before any work
    for r in rows:  # a file of an earlier run that this one would leave beside its own
        for name, earlier in (("displacement.npz", "a nonparametric run"),
                              ("y_grid.npy", "an older multireg")):  # fmt: skip
            stale = out / r["id"] / name
            if stale not in planned and (stale.exists() or stale.is_symlink()):
                raise ValueError(
                    f"{stale}: left by {earlier}; this run writes no {name} and would leave it "
                    "beside its own outputs: remove it (or choose another --out)"
                )
    levels = args.levels if args.levels != 1 else None
    options = _registration_kwargs(args, levels)
    backend = args.backend or _cli_default_backend()
    executor = None
    if args.scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError(
                "--scheduler needs dask.distributed: pip install 'multireg[dask]'"
            ) from None
        try:
            executor = Client(args.scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise ValueError(f"--scheduler {args.scheduler}: cannot connect ({err})") from None
    summaries: list[dict | None] = [None] * len(rows)
    failed_metrics = 0

    def progress(done: int, total: int, result) -> None:
        nonlocal failed_metrics
        row = rows[result.index]
        dice, error = None, None
        if result.ok and row["template_labels"] is not None:
            try:
                dice = _pair_dice(args, row, result)
            except Exception as err:  # the registration's outputs stand; the row says why
                error = f"Dice: {type(err).__name__}: {err}".splitlines()[0]
                failed_metrics += 1
        summaries[result.index] = _summary_row(row, result, dice, error)
        if not args.quiet:
            try:
                print(_progress_line(done, total, summaries[result.index]), flush=True)
            except BrokenPipeError:  # '| head': the reader left; the pairs and summary go on
                if not stdout_closed():
                    raise
                stop_writing_stdout()

    jobs = [
        {"template": str(r["template"]), "reference": str(r["reference"]), "name": r["id"]}
        for r in rows
    ]
    out.mkdir(parents=True, exist_ok=True)  # the pair folders appear in it one by one
    interrupted = False
    started = time.perf_counter()
    try:
        register_many(
            jobs, executor=executor, workers=args.workers, backend=backend, dtype=args.dtype,
            threads=args.threads or 1, spacing=args.spacing, out=out, writer=_PairWriter(args),
            progress=progress, **options,
        )  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if executor is not None:
            executor.close()
    table = [
        s if s is not None else _summary_row(r, None, None, "interrupted before it finished")
        for r, s in zip(rows, summaries)
    ]
    for folder in (out, *(out / r["id"] for r in rows)):  # what killed workers left behind
        io.remove_stale_temporaries(folder)
    _write_summary(out / "summary.csv", table, args.overwrite, inputs)
    statuses = [s["status"] for s in table]
    failed = statuses.count("failed") + failed_metrics
    if interrupted:
        print(
            f"multireg: interrupted: {len(rows) - statuses.count('cancelled')} of {len(rows)} "
            f"pairs finished (their folders are complete), the others were cancelled and left "
            + (
                "nothing"
                if args.scheduler is None  # a Dask worker's running pair cannot be stopped
                else "nothing, except a pair already running on a Dask worker, which may "
                "still complete its folder"
            )
            + f"; see {out / 'summary.csv'}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not args.quiet:
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        print(
            f"register-many: {len(rows)} pairs on {backend} in "
            f"{time.perf_counter() - started:.1f} s: {counts}; wrote {out / 'summary.csv'}"
        )
    if failed:
        print(
            f"multireg: error: {failed} of {len(rows)} pairs failed (see the error column of "
            f"{out / 'summary.csv'}); exit code 5",
            file=sys.stderr,
        )
        return EXIT_PAIRS_FAILED
    if any(s != Status.CONVERGED.value for s in statuses):
        print(
            "multireg: warning: a pair did not converge (see the status column of "
            f"{out / 'summary.csv'}); outputs written, exit code 3",
            file=sys.stderr,
        )
        return EXIT_NOT_CONVERGED
    return EXIT_OK


_MANIFEST_PATHS = ("template", "reference", "template_labels", "reference_labels")


def _protected(args, *names: str) -> list[Path]:
    """The input paths of ``args`` named ``names`` (missing ones reported first)."""
    paths = []
    for name in names:
        value = getattr(args, name, None)
        for p in value if isinstance(value, (list, tuple)) else [value]:
            if p is None:
                continue
            if not Path(p).exists():
                raise FileNotFoundError(f"{p}: no such file")
            paths.append(Path(p))
    return paths


def _apply(args) -> int:
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


def _evaluate(args) -> int:
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


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _demo,
    "validate": _validate,
    "bench": _bench,
    "register-many": _register_many,
    "apply": _apply,
    "evaluate": _evaluate,
}


def _error(message: str) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message held
    print(f"multireg: error: {text}", file=sys.stderr)


def stdout_closed() -> bool:
    """Whether stdout's reader has gone away (a pipe whose read end is closed: poll reports
    POLLERR on its write end), as opposed to a broken pipe of a worker or a socket. True when
    it cannot be told (no descriptor, no poll): stdout is a command line's usual broken pipe."""
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
    except (AttributeError, OSError, ValueError):
        return True
    poll.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poll.poll(0))


def stop_writing_stdout() -> int:
    """Exit quietly after stdout's reader went away: stdout is pointed at the null device so
    that the interpreter's last flush of the buffered text does not fail again (the handling
    the Python documentation recommends, signal module, "Note on SIGPIPE"). Returns
    :data:`EXIT_STDOUT_CLOSED`."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # no descriptor (stdout replaced in-process)
        pass
    return EXIT_STDOUT_CLOSED


def _unexpected(err: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    _error(f"unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback)")
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring).

    Usage errors (unknown option, bad value) print one line and exit through
    ``SystemExit(2)``, as argparse does; ``--help`` and ``--version`` exit with 0.
    """
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    debug = "--debug" in argv
    try:
        name, args = parse_command(argv)
    except UsageError as err:
        _error(str(err))
        raise SystemExit(EXIT_USAGE) from None
    try:
        if name in COMMANDS:
            return _compute_and_write(name, args)
        return _HANDLERS[name](args)
    except KeyboardInterrupt:
        print(
            "multireg: interrupted; the run's outputs were written all together or not at all",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except BrokenPipeError as err:
        if stdout_closed():  # '| head': the reader has what it wanted; no error to report
            return stop_writing_stdout()
        return _unexpected(err, debug)
    except _INPUT_ERRORS as err:
        if name in ("demo", "bench") and not isinstance(err, _ENVIRONMENT_ERRORS):
            # these commands take no input data: a ValueError or TypeError there is a bug
            return _unexpected(err, debug)
        if debug:
            traceback.print_exc()
        _error(str(err) or type(err).__name__)
        return EXIT_USAGE
    except Exception as err:
        return _unexpected(err, debug)
