"""What every command shares: the exit codes, the errors, the parser's machinery and option
groups, the value parsers, the choice of backend and device, progress bars, reading an image pair,
and what is done when stdout's reader goes away."""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import shutil
import sys
import textwrap
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multireg import io
from multireg.optimize import Status

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


RESULT_HELP = (
    "the transformation: a 'multireg register' output folder or its result.json, an ITK "
    "transform file (.tfm, .txt, .h5) or an ITK/ANTs displacement field (.nii, .nii.gz)"
)


def new_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The ``multireg`` parser without commands, and the action each command module's
    ``add_parser`` adds its parser to."""
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
    return parser, commands


def add_command(commands, name: str, help: str, parents: list, description: str):
    """A command's parser: its help line, wrapped description, parent option groups, and the
    exit-code table as its epilog."""
    return commands.add_parser(
        name,
        help=help,
        description=_wrap(description),
        parents=parents,
        epilog=EPILOG,
        formatter_class=_Formatter,
    )


def parse(parser: argparse.ArgumentParser, argv: list[str], names: Sequence[str]):
    """``parser.parse_args(argv)``; a usage error found by the top-level parser after a
    command's name (``names``) points to that command's help."""
    try:
        return parser.parse_args(argv)
    except UsageError as err:
        if argv and argv[0] in names and "'multireg --help'" in str(err):
            raise UsageError(
                str(err).replace("'multireg --help'", f"'multireg {argv[0]} --help'")
            ) from None
        raise


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
        # tqdm draws nothing where stderr is not a terminal (disable=None): it is not even
        # imported then, nor with --quiet (0.1-0.3 s less for a scripted one-off)
        self.enabled = not quiet and sys.stderr.isatty()
        self.total, self.unit = total, unit
        self.bar, self.key = None, None
        tqdm = None
        if self.enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self.enabled = False
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
