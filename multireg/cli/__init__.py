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

Contract for cross-framework validation (:mod:`multireg.cli.validate`)
----------------------------------------------------------------------
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
import sys
import traceback
from collections.abc import Callable, Sequence

from multireg.cli import (
    apply,
    bench,
    demo,
    dynamics,
    evaluate,
    homotopy,
    register,
    register_many,
    superres,
    validate,
)
from multireg.cli._common import (
    _ENVIRONMENT_ERRORS,
    _INPUT_ERRORS,
    CLI_BACKEND_PREFERENCE,
    EXIT_DISAGREE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    EXIT_PAIRS_FAILED,
    EXIT_STDOUT_CLOSED,
    EXIT_USAGE,
    CommandResult,
    UsageError,
    _error,
    _unexpected,
    new_parser,
    parse,
    stdout_closed,
    stop_writing_stdout,
)
from multireg.cli._compute import COMMANDS, _compute_and_write
from multireg.cli.dynamics import run_dynamics
from multireg.cli.homotopy import run_homotopy
from multireg.cli.register import run_register
from multireg.cli.superres import run_superres

__all__ = [
    "CLI_BACKEND_PREFERENCE",
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
    "stdout_closed",
    "stop_writing_stdout",
]

_MODULES = (
    register, register_many, homotopy, superres, dynamics, demo, validate, bench, apply, evaluate,
)  # fmt: skip
"""The commands, in the order ``multireg --help`` lists them."""
_NAMES = tuple(m.__name__.rpartition(".")[2].replace("_", "-") for m in _MODULES)
_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    name: m.run for name, m in zip(_NAMES, _MODULES) if name not in COMMANDS
}


def build_parser() -> argparse.ArgumentParser:
    """The ``multireg`` argument parser (every subcommand and option, with help)."""
    parser, commands = new_parser()
    for module in _MODULES:
        module.add_parser(commands)
    return parser


def parse_command(argv: Sequence[str]) -> tuple[str, argparse.Namespace]:
    """Parse ``argv`` (without the program name) into ``(command name, namespace)``.

    Raises :class:`UsageError` on bad usage; ``--help`` and ``--version`` exit (SystemExit 0).
    """
    argv = [str(a) for a in argv]
    if argv and argv[0] == "validate":
        argv = validate.hoist_options(argv)
    args = parse(build_parser(), argv, _NAMES)
    if args.command == "validate" and not args.args:
        raise UsageError(f"validate {args.validated}: give the command's arguments")
    return args.command, args


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
