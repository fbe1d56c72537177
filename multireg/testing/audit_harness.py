"""The bad-input audit's harness: a :class:`Case` and its :class:`Outcome`, the
:class:`Context` with the synthetic inputs every case reads, running one case (a subprocess
``python -m multireg ...`` for the command line, an in-process call for the API), the sha256 of
the inputs before and after, and the verdict (:func:`run_case`, :func:`run_cases`). What each
verdict means is said in :mod:`multireg.testing.audit`, the command that runs the cases of
:mod:`multireg.testing.audit_cases` through this harness.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SHIFT", "VERDICTS", "Case", "Context", "Outcome", "run_case", "run_cases"]

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
