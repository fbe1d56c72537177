"""Bad-input audit: run unusual and wrong input through the command line and the API, judge each.

    python -m multireg.testing.audit [--quick] [--backend NAME] [--out FILE [--overwrite]]
                                     [--cases TEXT] [--keep] [--list] [--hashes]

Each case writes its synthetic inputs (32² images and the like) into a temporary folder, runs one
command-line call (a subprocess ``python -m multireg ...``) or one API call (in this process, any
exception caught and classified), and records the exit code (or exception type), the first line
of the error, the time, and the sha256 of every input file before and after. Verdicts, worst
first (a case gets the first that applies):

``DATA LOSS``
    an input file (or a file the case said must be left alone, e.g. an existing output without
    ``--overwrite``) changed or disappeared.
``TRACEBACK``
    a traceback on stderr; exit code 1 (the command line's "unexpected error", a traceback it
    hides); death by a signal nobody sent; from the API an exception other than ``ValueError`` /
    ``TypeError`` (``OSError`` where a file is at fault), or one raised inside NumPy / torch /
    JAX rather than by multireg (e.g. torch's ``RuntimeError``, NumPy's ufunc ``TypeError``).
``PARTIAL OUTPUT``
    outputs incomplete after a success, any new file after a failure or an interrupt (a run's
    outputs are one unit: all of them or none), or a temporary left behind (a new file or folder
    whose name starts with ``.`` or contains ``.tmp``).
``WRONG VERDICT``
    success where an error is expected or the reverse, exit 3 (not converged) on a problem that a
    good library solves or refuses, a hang, or a wrong result (registering an image to itself not
    giving the identity, a known shift not recovered, ``result.json`` claiming levels that did
    not run, ``--help`` offering a backend that is then refused).
``POOR ERROR``
    the right kind of failure, but not a clear one-line message naming the problem (the message
    must mention one of the case's keywords, e.g. the option or file at fault, and must not name
    an internal temporary), or one that comes only after the work has started (``fast`` cases).
``ok``
    a clear one-line error naming the problem, or a correct success.

The expectations are what a careful library should do (issue 12), not today's behaviour. Exit
status 0 only when every case is ``ok``. ``--quick`` runs a subset (in-process API cases and a
few command-line calls) in well under a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VERDICTS", "Case", "Context", "Outcome", "cases", "main", "run_case", "run_cases"]

VERDICTS = ("ok", "DATA LOSS", "TRACEBACK", "PARTIAL OUTPUT", "WRONG VERDICT", "POOR ERROR")
_SEVERITY = ("DATA LOSS", "TRACEBACK", "PARTIAL OUTPUT", "WRONG VERDICT", "POOR ERROR")

#: The known shift of the synthetic template: T(x + SHIFT) = R(x) (pixel units, omega = [0, m]).
SHIFT = (1.5, -1.0)
#: Packages whose exceptions and frames count as multireg's own.
_OWN_PACKAGES = ("multireg", "multireg_torch", "multireg_jax", "multireg_numpy")
_CLI_TIMEOUT = 300.0


# ------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One audit case.

    ``kind`` ``"cli"``: ``argv`` follows ``python -m multireg`` (``prefix`` replaces that), with
    ``{i}`` standing for the inputs folder and ``{b}`` for the backend; ``--backend {b}`` is
    appended when ``backend``. ``kind`` ``"api"``: ``call(ctx, folder)`` is the call.
    ``expect``: ``"error"``, ``"success"``, ``"either"`` (a clear error or a correct success) or
    ``"interrupt"``. ``outputs``: files (relative to the case's folder) a success must leave.
    ``protect``: files besides the inputs that must be left unchanged. ``check(ctx, folder,
    value)`` judges a success (``value``: the API's return, the command's stdout) and returns a
    problem or None. ``mentions``: an error must contain one of these (any case; ``-`` and ``_``
    alike). ``fast``: an error must come before any work: for the API before any optimiser
    runs (watched with ``sys.setprofile``); for the command line within this many seconds
    beyond the time it takes to start Python, import multireg and the backend, measured once.
    ``interrupt``: ``(signal, trigger)``, trigger ``"write"`` (the first new file under the
    case's folder) or ``"compute"`` (about a second after the framework is loaded); ``rerun``:
    after the interrupt, run the same command again and judge that run.
    ``may_not_converge``: exit 3 / a non-converged status is an honest answer here.
    """

    name: str
    kind: str
    expect: str = "error"
    argv: tuple[str, ...] = ()
    call: Callable[[Context, Path], Any] | None = None
    backend: bool = False
    prefix: tuple[str, ...] = ("-m", "multireg")
    env: dict[str, str | None] = field(default_factory=dict)
    setup: Callable[[Context, Path], None] | None = None
    outputs: tuple[str, ...] = ()
    protect: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    check: Callable[[Context, Path, Any], str | None] | None = None
    mentions: tuple[str, ...] = ()
    os_errors: bool = False
    fast: float | None = None
    interrupt: tuple[int, str] | None = None
    rerun: bool = False
    may_not_converge: bool = False
    quick: bool = False
    timeout: float = _CLI_TIMEOUT
    needs: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What a case did and the verdict on it."""

    case: str
    kind: str
    exit: str
    error: str
    verdict: str
    problems: list[str]
    elapsed: float
    hashes: dict[str, tuple[str | None, str | None]]
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


@dataclass
class _Raw:
    code: int | None = None
    exc: BaseException | None = None
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    elapsed: float = 0.0
    note: str = ""
    signalled: bool = False
    timed_out: bool = False
    worked: str | None = None


class Context:
    """The audit's temporary folder, its inputs, the backend and the arrays of the API cases."""

    def __init__(self, root: Path, backend: str, python: str = sys.executable):
        self.root = Path(root)
        self.inputs = self.root / "inputs"
        self.logs = self.root / "logs"
        self.backend = backend
        self.python = python
        self.logs.mkdir(parents=True, exist_ok=True)
        self.reference_hashes: dict[str, str] = {}
        self.handed: list[tuple[str, np.ndarray, str]] = []
        self._startup: float | None = None
        self.make_inputs()

    def i(self, name: str) -> str:
        """The path of an input file, as a string."""
        return str(self.inputs / name)

    def make_inputs(self) -> None:
        """(Re)write every input file; a case that damaged one must not spoil the next."""
        if self.inputs.exists():
            for p in self.inputs.rglob("*"):
                with contextlib.suppress(OSError):
                    if not p.is_symlink():
                        p.chmod(0o755 if p.is_dir() else 0o644)
            shutil.rmtree(self.inputs)
        _write_inputs(self.inputs)
        self.reference_hashes = _snapshot([self.inputs], self.root)

    def startup(self) -> float:
        """Seconds to start Python, import multireg and make one array on the backend."""
        if self._startup is None:
            code = (
                "import numpy, multireg; "
                f"multireg.get_backend({self.backend!r}).asarray(numpy.zeros(2))"
            )
            started = time.perf_counter()
            subprocess.run([self.python, "-c", code], check=True, capture_output=True)
            self._startup = time.perf_counter() - started
        return self._startup

    def warm(self) -> None:
        """Load the backend's framework in this process, so that an API case's time is its own."""
        from multireg import get_backend

        get_backend(self.backend).asarray(np.zeros(2))

    def array(self, name: str) -> np.ndarray:
        """An input file's array for an API case; the audit checks the call leaves it unchanged."""
        a = np.load(self.inputs / name, allow_pickle=False)
        self.handed.append((name, a, _array_hash(a)))
        return a


def _pattern(m: Sequence[int], shift: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """Two anisotropic Gaussians (no symmetry a rotation or shear could exploit), sampled at the
    cell centres of [0, m1] × [0, m2] moved by ``-shift``, so that P_s(x + s) = P_0(x)."""
    m = tuple(int(v) for v in m)
    x = [np.arange(n) + 0.5 for n in m]
    X1, X2 = np.meshgrid(x[0] - shift[0], x[1] - shift[1], indexing="ij")

    def g(c1, c2, s1, s2):
        return np.exp(
            -((X1 - c1 * m[0]) ** 2) / (2 * (s1 * m[0]) ** 2)
            - (X2 - c2 * m[1]) ** 2 / (2 * (s2 * m[1]) ** 2)
        )

    return g(0.40, 0.47, 0.09, 0.07) + 0.6 * g(0.62, 0.60, 0.06, 0.10)


def _frames(n: int, m: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    shifts = rng.uniform(-1.0, 1.0, size=(n, 2))
    shifts[0] = 0.0
    return np.stack([_pattern((m, m), s) for s in shifts])


def _write_inputs(folder: Path) -> None:
    folder.mkdir(parents=True)
    R = _pattern((32, 32))
    T = _pattern((32, 32), SHIFT)
    save = {
        "T.npy": T,
        "R.npy": R,
        "R16.npy": _pattern((16, 16)),
        "T3d.npy": np.random.default_rng(1).random((8, 8, 8)),
        "nan.npy": np.where(np.arange(T.size).reshape(T.shape) == 40, np.nan, T),
        "inf.npy": np.where(np.arange(T.size).reshape(T.shape) == 40, np.inf, T),
        "empty.npy": np.zeros((0, 0)),
        "one_d.npy": T[0],
        "four_d.npy": np.random.default_rng(2).random((4, 4, 4, 4)),
        "const.npy": np.full((32, 32), 0.5),
        "tiny_T.npy": np.array([[0.0, 1.0], [0.5, 0.2]]),
        "tiny_R.npy": np.array([[0.2, 0.9], [0.4, 0.0]]),
        "subnormal_T.npy": T * 1e-310,
        "subnormal_R.npy": R * 1e-310,
        "huge_T.npy": T * 1e300,
        "huge_R.npy": R * 1e300,
        "bool_T.npy": T > 0.5,
        "bool_R.npy": R > 0.5,
        "int16_T.npy": np.round(T * 1000).astype(np.int16),
        "int16_R.npy": np.round(R * 1000).astype(np.int16),
        "complex.npy": T + 1j * R,
        "frames.npy": _frames(4, 16),
        "frames_big.npy": _frames(16, 48),
        "frames2d.npy": _pattern((16, 16)),
        "frames_nan.npy": np.where(_frames(4, 16) > 0.9, np.nan, _frames(4, 16)),
    }
    for name, a in save.items():
        np.save(folder / name, a)
    np.save(folder / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.savez(folder / "two_entries.npz", a=T, b=R)
    frames = _frames(4, 16)
    np.savez(folder / "frames.npz", frames=frames, times=np.arange(4.0))
    # big enough that registering its frames (work) takes seconds, so that an error after it shows
    np.savez(folder / "frames_big.npz", frames=save["frames_big.npy"], times=np.arange(16.0))
    np.savez(folder / "masks.npz", kidney=frames[0] > 0.5, rest=frames[0] <= 0.5)
    np.savez(folder / "masks_bad.npz", kidney=np.ones((8, 8), bool))
    (folder / "zero.npy").write_bytes(b"")
    (folder / "text.npy").write_text("not an array\n")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(200)))
    (folder / "adir").mkdir()
    (folder / "folder.npy").mkdir()
    ro = folder / "ro_T.npy"
    np.save(ro, T)
    ro.chmod(0o444)
    (folder / "link_T.npy").symlink_to("T.npy")
    with contextlib.suppress(ImportError):
        from PIL import Image

        Image.fromarray(np.round(T * 230).astype(np.uint8)).save(folder / "T.png")
        Image.fromarray(np.round(R * 230).astype(np.uint8)).save(folder / "R.png")
        rgba = np.stack(
            [np.round(T * 230).astype(np.uint8)] * 3 + [np.full(T.shape, 255, np.uint8)], -1
        )
        Image.fromarray(rgba).save(folder / "T_rgba.png")
    with contextlib.suppress(ImportError):
        import nibabel as nib

        eye = np.eye(4)
        nib.save(nib.Nifti1Image(T.astype(np.float32), eye), folder / "T.nii.gz")
        nib.save(nib.Nifti1Image(R.astype(np.float32), eye), folder / "R.nii.gz")
        nib.save(
            nib.Nifti1Image(R.astype(np.float32), np.diag([2.0, 2.0, 1.0, 1.0])),
            folder / "R_spacing2.nii.gz",
        )
        full = (folder / "T.nii.gz").read_bytes()
        (folder / "truncated.nii.gz").write_bytes(full[: len(full) // 3])


# ------------------------------------------------------------------------------------ hashing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _snapshot(roots: Sequence[Path], base: Path) -> dict[str, str]:
    """Every entry under ``roots``: sha256 for files, ``link:target`` for links, ``dir``."""
    out: dict[str, str] = {}
    for root in roots:
        if not root.exists() and not root.is_symlink():
            continue
        paths = [root] if not root.is_dir() or root.is_symlink() else sorted(root.rglob("*"))
        for p in paths:
            key = os.path.relpath(p, base)
            if p.is_symlink():
                out[key] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[key] = "dir"
            elif p.is_file():
                try:
                    out[key] = _sha256(p)
                except OSError as err:
                    out[key] = f"unreadable: {err}"
            else:
                out[key] = "special"
    return out


def _array_hash(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _is_temporary(name: str) -> bool:
    return name.startswith(".") or ".tmp" in name


# ------------------------------------------------------------------------------------ running


def _format(ctx: Context, text: str) -> str:
    return text.replace("{i}", str(ctx.inputs)).replace("{b}", ctx.backend)


def _command(ctx: Context, case: Case) -> list[str]:
    argv = [_format(ctx, a) for a in case.argv]
    if case.backend:
        argv += ["--backend", ctx.backend]
    return [ctx.python, *case.prefix, *argv]


def _environment(ctx: Context, case: Case) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MULTIREG_BACKEND"] = ctx.backend
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("MULTIREG_DEBUG", None)
    for key, value in case.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = _format(ctx, value)
    return env


def _framework_loaded(pid: int) -> bool:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "libtorch" in maps or "jaxlib" in maps or "xla_extension" in maps


def _new_file(folder: Path, before: set[str]) -> bool:
    for p in folder.rglob("*"):
        if p.is_file() and str(p) not in before:
            return True
    return False


def _spawn(ctx: Context, case: Case, folder: Path, tag: str, interrupt) -> _Raw:
    cmd = _command(ctx, case)
    out_log = ctx.logs / f"{case.name}.{tag}.stdout"
    err_log = ctx.logs / f"{case.name}.{tag}.stderr"
    before = {str(p) for p in folder.rglob("*")}
    started = time.perf_counter()
    raw = _Raw()
    with open(out_log, "w") as out, open(err_log, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=folder, env=_environment(ctx, case), stdout=out, stderr=err, text=True
        )
        if interrupt is not None:
            sig, trigger = interrupt
            loaded_at = None
            while proc.poll() is None:
                now = time.perf_counter() - started
                if now > case.timeout:
                    break
                if trigger == "write":
                    fire = _new_file(folder, before)
                else:  # "compute": about a second after the framework is in memory
                    if loaded_at is None and _framework_loaded(proc.pid):
                        loaded_at = now
                    fire = (loaded_at is not None and now > loaded_at + 1.0) or (
                        loaded_at is None and now > 30.0
                    )
                if fire:
                    proc.send_signal(sig)
                    raw.signalled = True
                    raw.note = f"{signal.Signals(sig).name} at {now:.1f} s ({trigger})"
                    break
                time.sleep(0.002 if trigger == "write" else 0.05)
            if not raw.signalled:
                raw.note = "finished before the signal could be sent"
        try:
            raw.code = proc.wait(timeout=max(1.0, case.timeout - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raw.timed_out = True
    raw.elapsed = time.perf_counter() - started
    raw.stdout = out_log.read_text(errors="replace")
    raw.stderr = err_log.read_text(errors="replace")
    return raw


def _run_cli(ctx: Context, case: Case, folder: Path) -> _Raw:
    if not case.rerun:
        return _spawn(ctx, case, folder, "run", case.interrupt)
    first = _spawn(ctx, case, folder, "killed", case.interrupt)
    left = sorted(os.path.relpath(p, folder) for p in folder.rglob("*") if p.is_file())
    raw = _spawn(ctx, case, folder, "rerun", None)
    raw.note = f"{first.note}; left {left or 'nothing'}; then rerun"
    return raw


class _WorkWatch:
    """Notes the first call into multireg's optimisers (``sys.setprofile``), so that "the error
    came before any work" is a fact about the call, not a guess from its time."""

    _SOLVERS = ("_loop.py", "newton.py", "lbfgs.py", "trust_region.py", "cg.py", "linesearch.py")

    def __init__(self) -> None:
        folder = Path(importlib.util.find_spec("multireg.optimize").origin).parent
        self.files = {str(folder / name) for name in self._SOLVERS}
        self.first: str | None = None

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename in self.files:
            self.first = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
            sys.setprofile(None)

    def __enter__(self) -> _WorkWatch:
        self.previous = sys.getprofile()
        sys.setprofile(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.setprofile(self.previous)


def _run_api(ctx: Context, case: Case, folder: Path) -> _Raw:
    raw = _Raw()
    started = time.perf_counter()
    with _WorkWatch() if case.fast is not None else contextlib.nullcontext() as watch:
        try:
            raw.value = case.call(ctx, folder)
        except Exception as exc:  # classified below: the audit must survive every case
            raw.exc = exc
    raw.elapsed = time.perf_counter() - started
    raw.worked = getattr(watch, "first", None)
    return raw


# ---------------------------------------------------------------------------------- verdicts


def _own_dirs() -> list[Path]:
    dirs = []
    for name in _OWN_PACKAGES:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin:
                dirs.append(Path(spec.origin).resolve().parent)
    return dirs


def _foreign(exc: BaseException, caller: Any = None) -> str | None:
    """Where an exception came from, if not from multireg's own code (or the case's ``caller``
    function itself, e.g. a call with a misspelt keyword): a leaked error."""
    module = type(exc).__module__
    if module != "builtins" and module.split(".")[0] not in _OWN_PACKAGES:
        return f"{module}.{type(exc).__qualname__}"
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = Path(tb.tb_frame.f_code.co_filename).resolve()
    code = getattr(caller, "__code__", None)
    if code is not None and filename == Path(code.co_filename).resolve():
        return None
    if any(filename.is_relative_to(d) for d in _own_dirs()):
        return None
    return f"raised in {filename}:{tb.tb_lineno}"


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _cli_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        return lines[-1]
    for ln in lines:
        if "error" in ln.lower():
            return ln
    return lines[0] if lines else ""


def _names(message: str, word: str) -> bool:
    """Whether ``message`` names ``word``: a short one (an argument such as ``T``) as a whole
    word with its case, a longer one anywhere, any case, ``-`` and ``_`` alike."""
    if len(word) <= 2:
        return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", message) is not None
    return word.lower().replace("_", "-") in message.lower().replace("_", "-")


def _message_problems(case: Case, message: str, n_lines: int | None) -> list[str]:
    problems = []
    if not message:
        problems.append("failed without a message")
        return problems
    if n_lines is not None and n_lines != 1:
        problems.append(f"the error takes {n_lines} lines on stderr, not one")
    if case.mentions and not any(_names(message, m) for m in case.mentions):
        problems.append(f"the message names none of {list(case.mentions)}")
    if ".tmp" in message.lower():
        problems.append("the message names an internal temporary file")
    return problems


def _classify(
    ctx: Context,
    case: Case,
    folder: Path,
    raw: _Raw,
    before: dict[str, str],
    after: dict[str, str],
    guarded: list[str],
) -> Outcome:
    found: dict[str, list[str]] = {v: [] for v in _SEVERITY}
    hashes = {k: (before.get(k), after.get(k)) for k in guarded}

    # DATA LOSS: an input or a protected file changed or vanished
    for key in guarded:
        if before.get(key) != after.get(key):
            what = "disappeared" if after.get(key) is None else "changed"
            found["DATA LOSS"].append(f"{key} {what}")

    # the outcome itself
    if case.kind == "cli":
        code = raw.code
        exit_text = "timeout" if raw.timed_out else str(code)
        error = _cli_error_line(raw.stderr)
        if raw.timed_out:
            found["WRONG VERDICT"].append(f"hung: no result after {case.timeout:.0f} s")
        if "Traceback (most recent call last)" in raw.stderr:
            found["TRACEBACK"].append("traceback on stderr")
        if code == 1:
            found["TRACEBACK"].append("exit 1: an unexpected (internal) error")
        if code is not None and code < 0 and not raw.signalled:
            found["TRACEBACK"].append(f"killed by signal {-code}")
        failed = code not in (0, 3)
        n_lines = len([ln for ln in raw.stderr.splitlines() if ln.strip()])
    else:
        exc = raw.exc
        if exc is None:
            status = getattr(raw.value, "status", None)
            exit_text = "returned" + (f" {getattr(status, 'value', status)}" if status else "")
            error = ""
        else:
            exit_text = type(exc).__name__
            error = f"{type(exc).__name__}: {_first_line(str(exc))}"
            allowed: tuple[type, ...] = (ValueError, TypeError)
            if case.os_errors:
                allowed += (OSError,)
            where = _foreign(exc, case.call)
            if not isinstance(exc, allowed):
                found["TRACEBACK"].append(f"unexpected exception type {type(exc).__name__}")
            elif where:
                found["TRACEBACK"].append(f"error leaked from outside multireg ({where})")
        failed = exc is not None
        code = None
        n_lines = None

    # PARTIAL OUTPUT: temporaries, incomplete outputs, outputs after a failure
    new = [k for k in after if k not in before]
    for key in new:
        if _is_temporary(Path(key).name):
            found["PARTIAL OUTPUT"].append(f"temporary left behind: {key}")
    new_files = [k for k in new if after[k] != "dir" and not _is_temporary(Path(k).name)]
    succeeded = not failed and not raw.timed_out
    if succeeded and case.kind == "cli":
        missing = [o for o in case.outputs if not (folder / o).exists()]
        if missing:
            found["PARTIAL OUTPUT"].append(f"outputs missing after exit {code}: {missing}")
    if failed and new_files:
        if case.interrupt and not case.rerun:
            produced = {os.path.relpath(folder / o, ctx.root) for o in case.outputs}
            if set(new_files) != produced:
                found["PARTIAL OUTPUT"].append(f"interrupted run left {sorted(new_files)}")
        else:
            found["PARTIAL OUTPUT"].append(f"failed run left {sorted(new_files)}")
    if case.rerun and failed:
        found["PARTIAL OUTPUT"].append("the rerun after the kill failed (leftovers block it)")

    # WRONG VERDICT / POOR ERROR
    expect = case.expect
    if expect == "interrupt":
        if raw.signalled and code not in (130, 0, 3):
            found["WRONG VERDICT"].append(f"exit {code} after SIGINT (130 expected)")
        if raw.signalled and code == 130 and not error:
            found["POOR ERROR"].append("interrupted without saying so")
        expect = "success" if not raw.signalled or code in (0, 3) else "interrupted"
    if expect == "error" and succeeded:
        found["WRONG VERDICT"].append(f"succeeded ({exit_text}) where an error is expected")
    if expect == "success" and failed and not raw.timed_out and not found["TRACEBACK"]:
        what = error if case.kind == "api" else f"exit {code}: {error}"
        found["WRONG VERDICT"].append(f"failed ({what}) where success is expected")
    if expect in ("error", "either") and failed and not found["TRACEBACK"] and not raw.timed_out:
        if case.kind == "cli" and code != 2:
            found["WRONG VERDICT"].append(f"exit {code} for bad input (2 expected)")
        found["POOR ERROR"] += _message_problems(case, error, n_lines)
        if raw.worked:
            found["POOR ERROR"].append(
                f"the error came after the work had started ({raw.worked} ran; {raw.elapsed:.1f} s)"
            )
        elif case.kind == "cli" and case.fast is not None:
            limit = case.fast + ctx.startup()
            if raw.elapsed > limit:
                found["POOR ERROR"].append(
                    f"the error came after {raw.elapsed:.1f} s, not before any work "
                    f"(limit {limit:.1f} s: start-up and {case.fast:g} s)"
                )
    if succeeded and expect in ("success", "either") and not case.may_not_converge:
        if code == 3:
            found["WRONG VERDICT"].append(f"exit 3 (did not converge): {error}")
        status = getattr(raw.value, "status", None)
        if status is not None and getattr(status, "value", status) != "converged":
            found["WRONG VERDICT"].append(f"status {getattr(status, 'value', status)}")
        if case.check is not None and not found["PARTIAL OUTPUT"]:
            try:
                problem = case.check(ctx, folder, raw.value if case.kind == "api" else raw.stdout)
            except Exception as err:  # a check that cannot read the result: the result is wrong
                problem = f"result unreadable ({type(err).__name__}: {err})"
            if problem:
                found["WRONG VERDICT"].append(problem)

    verdict = next((v for v in _SEVERITY if found[v]), "ok")
    problems = [f"{v}: {p}" for v in _SEVERITY for p in found[v]]
    note = raw.note
    if case.fast is not None:
        note = (note + "; " if note else "") + f"time to the error {raw.elapsed:.1f} s"
    return Outcome(
        case.name, case.kind, exit_text, error, verdict, problems, raw.elapsed, hashes, note
    )


def run_case(ctx: Context, case: Case) -> Outcome:
    """Run one case in its own folder and judge it."""
    folder = ctx.root / "cases" / case.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if _snapshot([ctx.inputs], ctx.root) != ctx.reference_hashes:
        ctx.make_inputs()  # an earlier case damaged them (its own verdict says so)
    if case.setup is not None:
        case.setup(ctx, folder)
    roots = [ctx.inputs, folder]
    before = _snapshot(roots, ctx.root)
    guarded = [k for k in before if k.startswith("inputs") and before[k] != "dir"]
    guarded += [os.path.relpath(folder / p, ctx.root) for p in case.protect]
    ctx.handed = []
    raw = _run_cli(ctx, case, folder) if case.kind == "cli" else _run_api(ctx, case, folder)
    after = _snapshot(roots, ctx.root)
    for k, (name, array, digest) in enumerate(ctx.handed):  # the caller's arrays, in place
        key = f"array {k}: {name}"
        before[key], after[key] = digest, _array_hash(array)
        guarded.append(key)
    ctx.handed = []
    outcome = _classify(ctx, case, folder, raw, before, after, guarded)
    named = _named_inputs(ctx, case)
    outcome.hashes = {
        k: v
        for k, v in outcome.hashes.items()
        if k in named or v[0] != v[1] or not k.startswith("inputs")
    }
    return outcome


def _named_inputs(ctx: Context, case: Case) -> set[str]:
    text = " ".join(_format(ctx, a) for a in case.argv)
    names = set()
    for p in ctx.inputs.iterdir():
        if str(p) in text or p.name in case.uses:
            names.add(os.path.relpath(p, ctx.root))
    return names


def run_cases(
    ctx: Context, selected: Sequence[Case], progress: Callable[[Outcome], Any] | None = None
) -> list[Outcome]:
    if any(c.kind == "api" for c in selected):
        ctx.warm()
    outcomes = []
    for case in selected:
        outcome = run_case(ctx, case)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return outcomes


# ------------------------------------------------------------------------------ the API cases


def _register(ctx: Context, T: Any, R: Any, omega: Any = (0, 32, 0, 32), **kw: Any) -> Any:
    from multireg import register

    kw.setdefault("backend", ctx.backend)
    kw.setdefault("levels", 3)
    return register(T, R, omega, **kw)


def _shift_problem(w: Any, shift: Sequence[float] = SHIFT, tol: float = 0.1) -> str | None:
    """A problem if the affine parameters (FAIR layout) are not the known translation."""
    w = np.asarray(w, dtype=np.float64).ravel()
    want = np.array([1.0, 0.0, shift[0], 0.0, 1.0, shift[1]])
    if w.shape != want.shape or not np.all(np.isfinite(w)):
        return f"parameters {w.tolist()} are not 6 finite numbers"
    err_linear = np.max(np.abs(w[[0, 1, 3, 4]] - want[[0, 1, 3, 4]]))
    err_shift = np.max(np.abs(w[[2, 5]] - want[[2, 5]]))
    if err_linear > tol / 10 or err_shift > tol:
        return (
            f"the known shift {list(shift)} was not recovered: parameters {np.round(w, 4).tolist()}"
        )
    return None


def _host(x: Any) -> np.ndarray:
    from multireg._checks import to_host

    return np.asarray(to_host(x), dtype=np.float64)


def _shifted(ctx: Context, folder: Path, res: Any) -> str | None:
    return _shift_problem(_host(res.w))


def _identity(ctx: Context, folder: Path, res: Any) -> str | None:
    return _shift_problem(_host(res.w), (0.0, 0.0), tol=1e-3)


def _not_blank(ctx: Context, folder: Path, res: Any) -> str | None:
    return "the warped image is all zero" if np.max(np.abs(_host(res.warped))) < 0.1 else None


def _levels_ran(ctx: Context, folder: Path, res: Any) -> str | None:
    ran = [lv.level for lv in res.levels]
    return f"levels {ran} reported for a 32² image (it has 0 to 5)" if max(ran) > 5 else None


def _torch_grad(ctx: Context, folder: Path) -> Any:
    from multireg import get_backend

    bk = get_backend("torch")  # the core never imports a framework: its adapter makes tensors
    T = bk.asarray(ctx.array("T.npy")).requires_grad_()
    return _register(ctx, T, bk.asarray(ctx.array("R.npy")))


def _negative_strides(ctx: Context, folder: Path) -> Any:
    """FAIR reads a picture as ``img[::-1].T``: a view with a negative stride (same values)."""
    T, R = ctx.array("T.npy"), ctx.array("R.npy")
    T_view = np.ascontiguousarray(T.T[::-1])[::-1].T
    R_view = np.ascontiguousarray(R.T[::-1])[::-1].T
    if not (T_view.strides[1] < 0 and np.array_equal(T_view, T)):
        raise AssertionError("the audit's negative-stride view is wrong")
    return _register(ctx, T_view, R_view)


def _dynamics(ctx: Context, name: str = "frames.npy", **kw: Any) -> Any:
    from multireg.problems import dynamics

    frames = ctx.array(name)
    n, m1, m2 = frames.shape if frames.ndim == 3 else (1, *frames.shape)
    times = kw.pop("times", np.arange(n, dtype=np.float64))
    omega = kw.pop("omega", (0.0, float(m1), 0.0, float(m2)))
    kw.setdefault("backend", ctx.backend)
    return dynamics.solve(frames, times, omega, **kw)


def _superres(ctx: Context, name: str = "frames.npy", **kw: Any) -> Any:
    from multireg.problems import superres

    frames = ctx.array(name)
    m = frames.shape[-1]
    omega = kw.pop("omega", (-m / 2, m / 2, -m / 2, m / 2))
    m_fine = kw.pop("m_fine", (2 * m, 2 * m))
    kw.setdefault("backend", ctx.backend)
    kw.setdefault("max_iter", 2)
    return superres.solve(frames, omega, m_fine, **kw)


def _homotopy(ctx: Context, **kw: Any) -> Any:
    from multireg.problems.homotopy import homotopy

    kw.setdefault("backend", ctx.backend)
    return homotopy(ctx.array("T.npy"), ctx.array("R.npy"), (0, 32, 0, 32), **kw)


def _read(ctx: Context, name: str) -> Any:
    from multireg import io

    return io.read_image(ctx.i(name))


def _write_over_input(ctx: Context, folder: Path) -> Any:
    from multireg import io

    T = ctx.i("T.npy")
    return io.write_image(T, ctx.array("R.npy"), overwrite=True, protect=[T])


def _write_existing(ctx: Context, folder: Path) -> Any:
    from multireg import io

    return io.write_image(folder / "existing.npy", ctx.array("R.npy"))


def _existing_npy(ctx: Context, folder: Path) -> None:
    np.save(folder / "existing.npy", np.zeros((4, 4)))


def _api_cases() -> list[Case]:
    def case(name, expect, call, mentions="", check=None, q=False, **kw) -> Case:
        m = tuple(mentions.split("|")) if mentions else ()
        return Case(f"api-{name}", "api", expect, call=call, mentions=m, check=check, quick=q, **kw)

    def e(name, call, mentions, **kw):  # must raise a clear ValueError / TypeError
        return case(name, "error", call, mentions, **kw)

    def x(name, call, mentions, check, **kw):  # a clear error or a correct result
        return case(name, "either", call, mentions, check, **kw)

    def s(name, call, check, **kw):  # must work and be right
        return case(name, "success", call, "", check, **kw)

    def reg(**options):  # register the shifted pair with these options
        return lambda c, f: _register(c, c.array("T.npy"), c.array("R.npy"), **options)

    def reg_arrays(T, R, omega=(0, 32, 0, 32), **options):
        return lambda c, f: _register(c, T(c), R(c), omega, **options)

    def a(name, scale=1.0, kind=None):  # an input array, scaled or converted
        def load(c):
            v = c.array(name) * scale
            return v.astype(kind) if kind is not None else v

        return load

    T, R = a("T.npy"), a("R.npy")
    tiny = (a("tiny_T.npy"), a("tiny_R.npy"), (0, 2, 0, 2))
    nan = float("nan")
    return [
        # ordinary and unusual input that must work
        s("register-shift", reg(), _shifted, q=True),
        s("register-self", reg_arrays(R, R), _identity, q=True),
        s("negative-strides", _negative_strides, _shifted, q=True),
        x("torch-requires-grad", _torch_grad, "T|grad", _shifted, needs=("torch",), q=True),
        s("uint8-images", reg_arrays(a("T.npy", 200, np.uint8), a("R.npy", 200, np.uint8)),
            _shifted),
        x("bool-images", reg_arrays(a("bool_T.npy"), a("bool_R.npy")), "T|bool", None,
            may_not_converge=True),
        # extreme intensities: rescale (and get it right) or refuse clearly
        x("subnormal-1e-310", reg_arrays(a("T.npy", 1e-310), a("R.npy", 1e-310)),
            "intensit|scale|small|T", _shifted),
        x("huge-1e300", reg_arrays(a("T.npy", 1e300), a("R.npy", 1e300)),
            "intensit|scale|large|overflow|T", _shifted),
        # sizes against levels
        x("tiny-2x2-one-level", reg_arrays(*tiny, levels=None), "small|cells|size|T", _not_blank),
        e("tiny-2x2-levels-3", reg_arrays(*tiny, levels=3), "level|small|cells"),
        x("levels-beyond-image", reg_arrays(a("R16.npy"), a("R16.npy"), (0, 16, 0, 16), levels=9),
            "level", _identity),
        x("levels-3-20", reg(levels=(3, 20)), "level", _levels_ran),
        e("levels-0", reg(levels=0), "level", q=True),
        e("levels-reversed", reg(levels=(5, 3)), "level", q=True),
        e("levels-string", reg(levels="abc"), "level", q=True),
        # bad images
        e("nan-image", reg_arrays(a("nan.npy"), R), "nan", q=True),
        e("inf-image", reg_arrays(a("inf.npy"), R), "inf", q=True),
        e("empty-image", reg_arrays(a("empty.npy"), a("empty.npy")), "T|empty|shape", q=True),
        e("constant-images", reg_arrays(a("const.npy"), a("const.npy")), "constant|contrast",
            q=True),
        e("one-d-image", reg_arrays(a("one_d.npy"), a("one_d.npy"), (0, 32)), "dimension|shape|T",
            q=True),
        e("shape-mismatch", reg_arrays(T, a("R16.npy")), "shape", q=True),
        e("dim-mismatch-3d-2d", reg_arrays(a("T3d.npy"), R), "shape|dimension", q=True),
        e("complex-image", reg_arrays(a("complex.npy"), R), "real|complex", q=True),
        e("string-image", reg_arrays(lambda c: "T.png", R), "T", q=True),
        e("none-image", reg_arrays(lambda c: None, R), "T", q=True),
        # bad domains and options
        e("omega-length", reg_arrays(T, R, (0, 32, 0)), "omega", q=True),
        e("omega-b-below-a", reg_arrays(T, R, (32, 0, 0, 32)), "omega", q=True),
        e("omega-nan", reg_arrays(T, R, (0, nan, 0, 32)), "omega", q=True),
        e("omega-3d-for-2d", reg_arrays(T, R, (0, 32, 0, 32, 0, 32)), "omega", q=True),
        e("unknown-keyword", reg(max_iters=5), "max_iters", q=True),
        e("misspelt-method", reg(method="gaus-newton"), "method", q=True),
        e("misspelt-transform", reg(transform="afine"), "transform|afine", q=True),
        e("negative-alpha", reg(transform="nonparametric", alpha=-1.0), "alpha", q=True),
        e("nan-alpha", reg(transform="nonparametric", alpha=nan), "alpha", q=True),
        e("missing-alpha", reg(transform="nonparametric"), "alpha", q=True),
        e("negative-theta", reg(theta=-1.0), "theta", q=True),
        e("negative-max-iter", reg(max_iter=-1), "max_iter", q=True),
        e("nan-tolerance", reg(tol_j=nan), "tol_j", q=True),
        e("w0-wrong-shape", reg(w0=np.zeros(3)), "w0", q=True),
        e("mi-with-gauss-newton", reg(distance="mi"), "mi|gauss", q=True),
        e("dtype-float16", reg(dtype="float16"), "dtype", q=True),
        e("backend-numpy", reg(backend="numpy"), "numpy|differentiat", q=True),
        e("backend-unknown", reg(backend="nosuch"), "nosuch", q=True),
        e("get-backend-unknown", lambda c, f: _multireg().get_backend("nosuch"), "nosuch", q=True),
        e("set-backend-unknown", lambda c, f: _multireg().set_backend("nosuch"), "nosuch", q=True),
        # homotopy, super-resolution, dynamics
        e("homotopy-increasing-thetas", lambda c, f: _homotopy(c, theta_range=(1.0, 10.0)), "theta",
            q=True),
        e("superres-2d-frames", lambda c, f: _superres(c, "frames2d.npy", m_fine=(32, 32)),
            "frames", q=True),
        e("superres-m-fine-zero", lambda c, f: _superres(c, m_fine=(0, 0)), "m_fine", q=True),
        e("superres-negative-alpha", lambda c, f: _superres(c, alpha=-1.0), "alpha", q=True),
        e("superres-unknown-method", lambda c, f: _superres(c, method="gauss"), "method", q=True),
        e("superres-nan-frames", lambda c, f: _superres(c, "frames_nan.npy"), "nan|frames", q=True),
        e("superres-omega-length", lambda c, f: _superres(c, omega=(0, 16)), "omega", q=True),
        e("dynamics-regions-no-masks", lambda c, f: _dynamics(c, model="regions"),
            "masks", fast=1.0, q=True),
        e("dynamics-times-length", lambda c, f: _dynamics(c, model="basis", times=np.arange(3.0)),
            "times", q=True),
        e("dynamics-masks-shape", lambda c, f: _dynamics(c, masks={"a": np.ones((8, 8), bool)}),
            "masks|mask", q=True),
        e("dynamics-unknown-model", lambda c, f: _dynamics(c, model="bogus"), "model", q=True),
        e("dynamics-2d-frames", lambda c, f: _dynamics(c, "frames2d.npy", model="basis"), "frames",
            q=True),
        # files
        e("io-read-missing", lambda c, f: _read(c, "missing.npy"), "missing.npy", os_errors=True,
            q=True),
        e("io-read-corrupt-png", lambda c, f: _read(c, "corrupt.png"), "corrupt.png",
            os_errors=True, uses=("corrupt.png",), needs=("PIL",), q=True),
        e("io-read-object-npy", lambda c, f: _read(c, "object.npy"), "object.npy", os_errors=True,
            uses=("object.npy",), q=True),
        e("io-write-over-input", _write_over_input, "input", os_errors=True, uses=("T.npy",),
            q=True),
        e("io-write-existing", _write_existing, "exists|overwrite", os_errors=True,
            setup=_existing_npy, protect=("existing.npy",), q=True),
    ]  # fmt: skip


def _multireg() -> Any:
    import multireg

    return multireg


# ---------------------------------------------------------------------- command-line cases


def _result_json(folder: Path) -> dict:
    return json.loads((folder / "out" / "result.json").read_text())


def _cli_shifted(ctx: Context, folder: Path, stdout: str) -> str | None:
    return _shift_problem(_result_json(folder)["parameters"])


def _cli_identity(ctx: Context, folder: Path, stdout: str) -> str | None:
    return _shift_problem(_result_json(folder)["parameters"], (0.0, 0.0), tol=1e-3)


def _cli_shift_length(ctx: Context, folder: Path, stdout: str) -> str | None:
    """The shift's length, whatever axis order and orientation the file format implies."""
    w = np.asarray(_result_json(folder)["parameters"], dtype=np.float64)
    length, want = float(np.hypot(w[2], w[5])), float(np.hypot(*SHIFT))
    det = abs(np.linalg.det(w[[0, 1, 3, 4]].reshape(2, 2)))
    if abs(length - want) > 0.15 or abs(det - 1) > 0.02:
        return f"the known shift (length {want:.3f}) was not recovered: {np.round(w, 4).tolist()}"
    return None


def _cli_not_blank(ctx: Context, folder: Path, stdout: str) -> str | None:
    warped = np.load(folder / "out" / "warped.npy")
    return "the warped image is all zero" if np.max(np.abs(warped)) < 0.1 else None


def _cli_levels_ran(ctx: Context, folder: Path, stdout: str) -> str | None:
    info = _result_json(folder)
    ran = [lv["level"] for lv in info.get("levels", [])]
    used = info.get("settings", {}).get("levels_used")
    claimed = used if isinstance(used, list) else []
    if max(ran, default=0) > 5 or max(claimed, default=0) > 5:
        return f"result.json records levels {claimed or ran} for a 32² image (ran: {ran})"
    return None


def _help_backends(ctx: Context, folder: Path, stdout: str) -> str | None:
    match = re.search(r"--backend \{([^}]*)\}", stdout)
    if match and "numpy" in match.group(1).split(","):
        return "register --help offers --backend numpy, which register refuses"
    return None


def _help_printed(ctx: Context, folder: Path, stdout: str) -> str | None:
    return None if "usage" in stdout.lower() else "no usage text on stdout"


def _report_written(ctx: Context, folder: Path, stdout: str) -> str | None:
    return None if "|" in (folder / "report.md").read_text() else "the report holds no table"


def _existing_outputs(ctx: Context, folder: Path) -> None:
    (folder / "out").mkdir()
    np.save(folder / "out" / "warped.npy", np.zeros((32, 32)))
    (folder / "out" / "result.json").write_text("{}\n")


def _existing_result(ctx: Context, folder: Path) -> None:
    (folder / "out").mkdir()
    (folder / "out" / "result.json").write_text("{}\n")


def _existing_notes(ctx: Context, folder: Path) -> None:
    (folder / "existing.md").write_text("my notes: keep me\n")


def _link_to_input(name: str, target: str) -> Callable[[Context, Path], None]:
    def setup(ctx: Context, folder: Path) -> None:
        (folder / name).symlink_to(ctx.inputs / target)

    return setup


def _unicode_input(ctx: Context, folder: Path) -> None:
    shutil.copy(ctx.inputs / "T.npy", folder / "T ü 1.npy")


def _read_only_folder(ctx: Context, folder: Path) -> None:
    (folder / "locked").mkdir()
    (folder / "locked").chmod(0o555)


def _cli_cases() -> list[Case]:
    def case(name, expect, command, mentions="", check=None, q=False, **kw) -> Case:
        m = tuple(mentions.split("|")) if mentions else ()
        kw.setdefault(
            "backend",
            (command.split() or [""])[0] in ("register", "homotopy", "superres", "dynamics"),
        )
        argv = tuple(shlex.split(command))
        return Case(f"cli-{name}", "cli", expect, argv, mentions=m, check=check, quick=q, **kw)

    def e(name, command, mentions, **kw):  # must exit 2 with one clear line
        return case(name, "error", command, mentions, **kw)

    def x(name, command, mentions, check, **kw):  # a clear error or a correct result
        return case(name, "either", command, mentions, check, outputs=OUT, **kw)

    def s(name, command, check, **kw):  # must work and be right
        kw.setdefault("outputs", OUT)
        return case(name, "success", command, "", check, **kw)

    OUT = ("out/warped.npy", "out/result.json")
    REG = "register {i}/T.npy {i}/R.npy"
    VAL = "validate --backends {b} --report"
    bogus = {"MULTIREG_BACKEND": "bogus"}
    fig = importlib.util.find_spec("matplotlib") is not None
    slow_run = (
        f"{REG} --out out --transform nonparametric --alpha 10 --max-iter 30" + " --figures" * fig
    )
    slow_out = ("out/warped.npy", "out/displacement.npz", "out/result.json") + (
        "out/registration.png",
    ) * fig
    sigint, sigkill = signal.SIGINT, getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows: TERM
    dyn = "dynamics {i}/frames.npz"
    rows = [
        # help, usage, environment
        s("help", "--help", _help_printed, outputs=(), q=True),
        s("help-bad-env", "--help", _help_printed, outputs=(), env=bogus, q=True),
        s("register-help-bad-env", "register --help", _help_printed, outputs=(), env=bogus,
            backend=False),
        s("import-bad-env", "'import multireg'", None, outputs=(), prefix=("-c",), env=bogus,
            backend=False, q=True),
        s("register-help-backends", "register --help", _help_backends, outputs=(), backend=False,
            q=True),
        e("no-command", "", "command", q=True),
        e("unknown-command", "regster {i}/T.npy", "regster", q=True),
        e("unknown-option", f"{REG} --foo 1", "--foo", q=True),
        e("misspelt-option", f"{REG} --max-iters 5", "--max-iters"),
        e("missing-argument", "register {i}/T.npy", "reference"),
        e("bad-env-backend", REG, "MULTIREG_BACKEND|bogus", env=bogus, backend=False),
        s("bad-env-explicit-backend", f"{REG} --out out", _cli_shifted, env=bogus),
        e("env-backend-numpy", REG, "numpy|differentiat", env={"MULTIREG_BACKEND": "numpy"},
            backend=False),
        e("backend-numpy", f"{REG} --backend numpy", "numpy", backend=False),
        e("backend-unknown", f"{REG} --backend nosuch", "nosuch", backend=False),
        e("dtype-float16", f"{REG} --dtype float16", "float16|dtype"),
        e("device-unknown", f"{REG} --device cuda:99", "cuda|device"),
        # options
        x("levels-3-20", f"{REG} --out out --levels 3,20", "level", _cli_levels_ran),
        e("levels-0", f"{REG} --levels 0", "level"),
        e("levels-reversed", f"{REG} --levels 5,3", "level"),
        e("levels-text", f"{REG} --levels abc", "level"),
        e("max-iter-negative", f"{REG} --max-iter -1", "max-iter"),
        e("theta-negative", f"{REG} --theta -1", "theta"),
        e("tol-nan", f"{REG} --tol-j nan", "tol-j"),
        e("alpha-negative", f"{REG} --transform nonparametric --alpha -1", "alpha"),
        e("alpha-missing", f"{REG} --transform nonparametric", "alpha"),
        e("nonparametric-newton", f"{REG} --transform nonparametric --alpha 1 --method newton",
            "method|newton"),
        e("mi-gauss-newton", f"{REG} --distance mi", "mi|gauss|method"),
        e("bspline-p-zero", f"{REG} --transform bspline --p 0,0", "--p|p"),
        e("spacing-zero", f"{REG} --spacing 0,1", "spacing"),
        e("spacing-3d-for-2d", f"{REG} --spacing 1,1,1", "spacing"),
        # bad images
        e("missing-input", "register {i}/missing.npy {i}/R.npy", "missing.npy", q=True),
        e("directory-input", "register {i}/adir {i}/R.npy", "adir"),
        e("directory-named-npy", "register {i}/folder.npy {i}/R.npy", "folder.npy"),
        e("corrupt-png", "register {i}/corrupt.png {i}/R.png", "corrupt.png", needs=("PIL",)),
        e("corrupt-nifti", "register {i}/corrupt.nii.gz {i}/R.nii.gz", "corrupt.nii.gz",
            needs=("nibabel",)),
        e("truncated-nifti", "register {i}/truncated.nii.gz {i}/R.nii.gz", "truncated.nii.gz",
            needs=("nibabel",)),
        e("empty-file", "register {i}/zero.npy {i}/R.npy", "zero.npy"),
        e("text-as-npy", "register {i}/text.npy {i}/R.npy", "text.npy"),
        e("object-npy", "register {i}/object.npy {i}/R.npy", "object.npy"),
        e("npz-ambiguous", "register {i}/two_entries.npz {i}/R.npy", "two_entries.npz"),
        e("unknown-extension", "register {i}/T.xyz {i}/R.npy", "xyz"),
        e("nan-image", "register {i}/nan.npy {i}/R.npy", "nan", q=True),
        e("inf-image", "register {i}/inf.npy {i}/R.npy", "inf"),
        e("empty-array", "register {i}/empty.npy {i}/empty.npy", "empty.npy"),
        e("one-d-array", "register {i}/one_d.npy {i}/one_d.npy", "one_d.npy"),
        e("four-d-array", "register {i}/four_d.npy {i}/four_d.npy", "four_d.npy"),
        e("complex-array", "register {i}/complex.npy {i}/R.npy", "complex"),
        e("constant-images", "register {i}/const.npy {i}/const.npy", "constant|contrast"),
        x("tiny-2x2", "register {i}/tiny_T.npy {i}/tiny_R.npy --out out", "small|level|cells",
            _cli_not_blank),
        e("shape-mismatch", "register {i}/T.npy {i}/R16.npy", "shape"),
        e("dim-mismatch", "register {i}/T3d.npy {i}/R.npy", "shape|dimension"),
        e("nifti-spacing-mismatch", "register {i}/T.nii.gz {i}/R_spacing2.nii.gz",
            "omega|grid|spacing", needs=("nibabel",)),
        x("subnormal-1e-310", "register {i}/subnormal_T.npy {i}/subnormal_R.npy --out out",
            "intensit|scale|small", _cli_shifted),
        x("huge-1e300", "register {i}/huge_T.npy {i}/huge_R.npy --out out", "intensit|scale|large",
            _cli_shifted),
        x("bool-images", "register {i}/bool_T.npy {i}/bool_R.npy --out out", "bool", None,
            may_not_converge=True),
        # ordinary runs that must work and be right
        s("register-shift", f"{REG} --out out", _cli_shifted),
        s("register-self", "register {i}/R.npy {i}/R.npy --out out", _cli_identity, q=True),
        s("register-int16", "register {i}/int16_T.npy {i}/int16_R.npy --out out", _cli_shifted),
        s("register-png", "register {i}/T.png {i}/R.png --out out", _cli_shift_length,
            outputs=("out/warped.png", "out/result.json"), needs=("PIL",)),
        s("register-rgba-png", "register {i}/T_rgba.png {i}/R.png --out out", _cli_shift_length,
            outputs=("out/warped.png", "out/result.json"), needs=("PIL",)),
        s("register-nifti", "register {i}/T.nii.gz {i}/R.nii.gz --out out", _cli_shift_length,
            outputs=("out/warped.nii.gz", "out/result.json"), needs=("nibabel",)),
        s("read-only-input", "register {i}/ro_T.npy {i}/R.npy --out out", _cli_shifted),
        s("symlink-input", "register {i}/link_T.npy {i}/R.npy --out out", _cli_shifted),
        s("unicode-space-name", "register 'T ü 1.npy' {i}/R.npy --out out", _cli_shifted,
            setup=_unicode_input, protect=("T ü 1.npy",)),
        # outputs: never over an input or an existing file, checked before any work
        e("output-is-input", f"{REG} --warped {{i}}/T.npy", "input|T.npy"),
        e("output-is-input-overwrite", f"{REG} --warped {{i}}/R.npy --overwrite", "input|R.npy"),
        e("output-symlink-to-input", f"{REG} --warped link.npy --overwrite", "input|link.npy",
            setup=_link_to_input("link.npy", "T.npy"), protect=("link.npy",)),
        e("out-under-file", f"{REG} --out {{i}}/T.npy/sub", "T.npy|--out|folder|director"),
        e("warped-under-file", f"{REG} --warped {{i}}/R.npy/w.npy", "R.npy|warped|folder|director"),
        e("warped-unknown-extension", f"{REG} --warped w.xyz", "xyz"),
        e("warped-is-folder", f"{REG} --warped {{i}}/adir", "adir"),
        e("existing-outputs", f"{REG} --out out", "exists|overwrite", setup=_existing_outputs,
            protect=OUT, q=True),
        e("existing-result-only", f"{REG} --out out", "exists|overwrite", setup=_existing_result,
            protect=("out/result.json",)),
        s("existing-outputs-overwrite", f"{REG} --out out --overwrite", _cli_shifted,
            setup=_existing_outputs),
        # validate --report obeys the same rules
        e("validate-report-over-input", f"{VAL} {{i}}/T.npy {REG} --max-iter 1", "input|T.npy",
            q=True),
        e("validate-report-read-only-input", f"{VAL} {{i}}/ro_T.npy {REG} --max-iter 1",
            "input|ro_T.npy"),
        e("validate-report-existing", f"{VAL} existing.md {REG} --max-iter 1", "exists|overwrite",
            setup=_existing_notes, protect=("existing.md",)),
        e("validate-report-symlink", f"{VAL} link.md {REG} --max-iter 1", "input|exists|link.md",
            setup=_link_to_input("link.md", "R.npy"), protect=("link.md",)),
        e("validate-report-under-file", f"{VAL} {{i}}/T.npy/r.md {REG} --max-iter 1",
            "T.npy|report"),
        s("validate-report-new", f"{VAL} report.md {REG} --max-iter 1", _report_written,
            outputs=("report.md",)),
        e("validate-unknown-backend", f"validate --backends nosuch {REG}", "nosuch"),
        # interrupts: all outputs or none, no temporaries, a rerun needs no --overwrite
        case("sigint-while-writing", "interrupt", slow_run, outputs=slow_out,
            interrupt=(sigint, "write")),
        case("sigint-while-computing", "interrupt", slow_run, outputs=slow_out,
            interrupt=(sigint, "compute")),
        case("kill9-then-rerun", "success", slow_run, outputs=slow_out,
            interrupt=(sigkill, "write"), rerun=True),
        # homotopy, super-resolution, dynamics
        e("homotopy-increasing-range", "homotopy {i}/T.npy {i}/R.npy --theta-range 1,10", "theta"),
        e("homotopy-n-steps-zero", "homotopy {i}/T.npy {i}/R.npy --n-steps 0", "n-steps"),
        e("homotopy-thetas-nan", "homotopy {i}/T.npy {i}/R.npy --thetas 1,nan", "thetas"),
        e("superres-no-frames", "superres", "frames|synthetic"),
        e("superres-2d-frames", "superres {i}/frames2d.npy", "frames2d.npy"),
        e("superres-nan-frames", "superres {i}/frames_nan.npy", "nan"),
        e("superres-n-frames-zero", "superres --synthetic --n-frames 0", "n-frames"),
        e("superres-m-fine-zero", "superres --synthetic --m-fine 0,0", "m-fine"),
        e("superres-alpha-negative", "superres --synthetic --alpha -1", "alpha"),
        e("superres-tiny-frames", "superres --synthetic --m-coarse 2,2", "m-coarse|small|cells"),
        e("dynamics-no-frames", "dynamics", "frames|phantom"),
        e("dynamics-regions-no-masks", "dynamics {i}/frames_big.npz --model regions", "masks",
            fast=3.0),
        e("dynamics-masks-shape", f"{dyn} --masks {{i}}/masks_bad.npz", "masks"),
        e("dynamics-times-count", f"{dyn} --model basis --times 1,2", "times"),
        e("dynamics-n-basis-zero", f"{dyn} --model basis --n-basis 0", "n-basis"),
        e("dynamics-phantom-tiny", "dynamics --phantom --phantom-m 2,2", "phantom-m|small|cells"),
    ]  # fmt: skip
    if getattr(os, "geteuid", lambda: 0)() != 0:  # root writes into read-only folders
        rows.append(
            e(
                "out-read-only-folder",
                f"{REG} --out locked/out",
                "locked|permission|writ",
                setup=_read_only_folder,
            )
        )
    return rows


def cases(*, quick: bool = False, api: bool = True, cli: bool = True) -> list[Case]:
    """The audit's cases (``quick``: the subset that runs in well under a minute)."""
    selected = (_api_cases() if api else []) + (_cli_cases() if cli else [])
    selected = [c for c in selected if all(importlib.util.find_spec(n) for n in c.needs)]
    return [c for c in selected if c.quick] if quick else selected


# ----------------------------------------------------------------------------------- tables


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _inputs_cell(o: Outcome) -> str:
    changed = [k for k, (a, b) in o.hashes.items() if a != b]
    if changed:
        return "CHANGED " + ", ".join(Path(k).name for k in changed)
    return f"{len(o.hashes)} same"


def table(outcomes: Sequence[Outcome], *, markdown: bool = False, width: int = 64) -> str:
    header = ("case", "kind", "exit", "first line of the error", "inputs", "time", "verdict")
    rows = [
        (
            o.case,
            o.kind,
            o.exit,
            o.error if markdown else _short(o.error, width),
            _inputs_cell(o),
            f"{o.elapsed:.1f} s",
            o.verdict,
        )
        for o in outcomes
    ]
    if markdown:
        esc = [[c.replace("|", "\\|") for c in r] for r in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in esc]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        + [fmt.format(*r) for r in rows]
    )


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return {v: sum(o.verdict == v for o in outcomes) for v in VERDICTS}


def summary(outcomes: Sequence[Outcome]) -> str:
    c = counts(outcomes)
    parts = [f"{v} {n}" for v, n in c.items()]
    return f"{len(outcomes)} cases: " + ", ".join(parts)


def problems_text(outcomes: Sequence[Outcome], *, markdown: bool = False) -> str:
    lines = []
    for o in outcomes:
        if o.ok and not o.note:
            continue
        if o.ok:
            lines.append(f"- {o.case}: ok ({o.note})" if markdown else f"  {o.case}: ok ({o.note})")
            continue
        lines.append(f"- **{o.case}** ({o.verdict})" if markdown else f"  {o.case} ({o.verdict})")
        for p in o.problems:
            lines.append(f"  - {p}" if markdown else f"      {p}")
        if o.note:
            lines.append(f"  - note: {o.note}" if markdown else f"      note: {o.note}")
    return "\n".join(lines)


def hashes_text(outcomes: Sequence[Outcome]) -> str:
    lines = ["| case | file | sha256 before | sha256 after |", "|---|---|---|---|"]
    for o in outcomes:
        for key, (a, b) in sorted(o.hashes.items()):
            lines.append(f"| {o.case} | {key} | {a or '(absent)'} | {b or '(absent)'} |")
    return "\n".join(lines)


def markdown_report(
    outcomes: Sequence[Outcome], *, backend: str, quick: bool, elapsed: float
) -> str:
    return (
        "\n\n".join(
            [
                "# multireg bad-input audit",
                f"Backend {backend}; {'quick subset' if quick else 'all cases'}; "
                f"{elapsed:.0f} s; `python -m multireg.testing.audit`. {summary(outcomes)}.",
                table(outcomes, markdown=True),
                "## Cases that are not ok, and notes",
                problems_text(outcomes, markdown=True) or "None.",
                "## sha256 of the inputs each case named (and any that changed), before and after",
                hashes_text(outcomes),
            ]
        )
        + "\n"
    )


# -------------------------------------------------------------------------------------- main


def _default_backend() -> str:
    from multireg._backend import _instance, available_backends

    names = [n for n in available_backends() if _instance(n).differentiable]
    if not names:
        raise SystemExit("multireg audit: no differentiating backend is installed (torch or jax)")
    return "torch" if "torch" in names else names[0]


def _check_report_path(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise ValueError(f"--out {path}: is a folder; name a file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--out {path}: exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"--out {path}: {parent} is not a folder")


def _write_report(path: Path, text: str, overwrite: bool) -> None:
    """Atomically: a recognisable temporary beside ``path``, then a link (never clobbers) or a
    rename (``overwrite``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".multireg-audit.tmp"
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multireg.testing.audit",
        description="Run bad and unusual input through multireg's command line and API; "
        "print a table with a verdict per case. Exit 0 only when every case is ok.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a subset that runs in well under a minute"
    )
    parser.add_argument("--backend", help="backend for the runs (default: torch if installed)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out FILE")
    parser.add_argument("--cases", metavar="TEXT", help="only the cases whose name contains TEXT")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--hashes", action="store_true", help="also print the sha256 table")
    args = parser.parse_args(argv)

    selected = cases(quick=args.quick)
    if args.cases:
        selected = [c for c in selected if args.cases in c.name]
    if args.list:
        for c in selected:
            print(f"{c.name:40s} {c.kind:4s} expect {c.expect}{'  (quick)' if c.quick else ''}")
        return 0
    if args.out is not None:
        try:
            _check_report_path(args.out, args.overwrite)
        except (ValueError, OSError) as err:
            print(f"multireg audit: error: {err}", file=sys.stderr)
            return 2
    if args.backend is None:
        args.backend = _default_backend()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="multireg-audit-"))
    try:
        ctx = Context(root, args.backend)
        print(
            f"multireg audit: {len(selected)} cases, backend {args.backend}, in {root}", flush=True
        )

        def progress(o: Outcome) -> None:
            print(f"  {o.verdict:14s} {o.case} ({o.elapsed:.1f} s)", flush=True)

        outcomes = run_cases(ctx, selected, progress)
    finally:
        if not args.keep:
            for p in root.rglob("*"):
                with contextlib.suppress(OSError):
                    if not p.is_symlink() and p.is_dir():
                        p.chmod(0o755)
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print()
    print(table(outcomes))
    bad = problems_text(outcomes)
    if bad:
        print("\nnot ok, and notes:\n" + bad)
    if args.hashes:
        print("\n" + hashes_text(outcomes))
    print(f"\n{summary(outcomes)} ({elapsed:.0f} s)")
    if args.keep:
        print(f"kept {root}")
    if args.out is not None:
        text = markdown_report(outcomes, backend=args.backend, quick=args.quick, elapsed=elapsed)
        _write_report(args.out, text, args.overwrite)
        print(f"wrote {args.out}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
