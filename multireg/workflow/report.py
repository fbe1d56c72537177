"""The benchmark report: run the bench/ scripts and collect their tables into one Markdown file.

``write_bench_report()`` runs each script of the repository's ``bench/`` folder as its own
process (``python bench/<name>.py [--quick]``, so that thread settings and compilation caches do
not leak from one benchmark into the next), collects the Markdown each writes to
``bench/out/<name>.md`` and writes ONE report, by default ``bench/out/REPORT.md``: a header with
the date, the machine (CPU model, cores, memory, load average before and after) and the software
(Python, NumPy, SciPy, torch, JAX, multireg and its git commit), a summary table (script, status,
wall time), a table of contents, and one section per script. A script that fails, or runs but
writes no table, is reported in its section with the end of its output, never silently dropped.

The bench/ scripts belong to the repository, not to the installed package: the report is made
from a checkout (``bench/`` next to the ``multireg`` package folder, as in an editable install;
else the checkout holding the current directory, as after ``pip install .`` in a clone; or
``bench_dir=``). The scripts then import the installed multireg.
With ``run=False`` nothing is run and the report is assembled from the tables already in
``bench/out/`` (bench/_harness.py does this after every script, so REPORT.md stays current).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from multireg._version import __version__

__all__ = ["ORDER", "find_bench_dir", "machine_info", "write_bench_report"]

ORDER = ("kernels", "registration", "homotopy", "superres", "dynamics")
"""The scripts in report order; other bench/*.py scripts (not starting with ``_``) follow."""
QUICK_ARGS: dict[str, tuple[str, ...]] = {"superres": ("--sizes", "small")}
"""Quick options of scripts without ``--quick`` (used when the script does not define it)."""
REPORT_NAME = "REPORT"
_TAIL = 40  # lines of output kept from a failing script


def _is_checkout(root: Path) -> bool:
    """Is ``root`` a checkout of multireg: bench/ with its harness beside multireg's pyproject?"""
    pyproject = root / "pyproject.toml"
    if not (root / "bench" / "_harness.py").is_file() or not pyproject.is_file():
        return False
    return (
        re.search(r'^name\s*=\s*"multireg"', pyproject.read_text(errors="replace"), re.M)
        is not None
    )


def find_bench_dir(path: str | os.PathLike | None = None) -> Path:
    """The bench/ folder: ``path`` if given; else ``bench/`` next to the package's folder (a
    source tree or an editable install); else that of the checkout holding the current directory
    (a clone installed with ``pip install .``, whose package in site-packages has no bench/).
    """
    if path is not None:
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"bench_dir {str(folder)!r} is not a folder")
        return folder.resolve()
    beside = Path(__file__).resolve().parent.parent
    cwd = Path.cwd().resolve()
    for root in (beside, cwd, *cwd.parents):
        if _is_checkout(root):
            return root / "bench"
    raise FileNotFoundError(
        "the benchmark scripts are in the bench/ folder of a clone of the multireg repository, "
        f"not in the installed package ({str(beside)!r}), and {str(cwd)!r} is not inside a "
        "clone: run multireg bench inside the clone"
    )


def _scripts(folder: Path, scripts: Sequence[str] | None) -> list[str]:
    found = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    if scripts is None:
        return [s for s in ORDER if s in found] + [s for s in found if s not in ORDER]
    if isinstance(scripts, str) or not all(isinstance(s, str) for s in scripts):
        raise TypeError("scripts must be a list of script names, e.g. ['kernels', 'homotopy']")
    names = [s.removesuffix(".py") for s in scripts]
    unknown = [s for s in names if s not in found]
    if unknown:
        raise ValueError(
            f"scripts: no bench script {', '.join(map(repr, unknown))} in {str(folder)!r}; "
            f"there are {', '.join(found) or 'none'}"
        )
    if not names:
        raise ValueError("scripts must name at least one bench script")
    return names


# ------------------------------------------------------------------------------ the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_commit(folder: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "describe", "--always", "--dirty", "--abbrev=10"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _load() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def machine_info(folder: Path | None = None) -> dict[str, str]:
    """The facts a reader needs to compare timings: CPU, cores, memory, load, software versions.

    Read without importing torch or JAX (versions from the installed distributions)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    threads = {
        v: os.environ[v]
        for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")
        if v in os.environ
    }
    info = {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "memory": _memory(),
        "load average (1, 5, 15 min)": _load(),
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "NumPy": _version("numpy"),
        "SciPy": _version("scipy"),
        "torch": _version("torch"),
        "JAX": _version("jax"),
        "multireg": __version__ + (f" (git {_git_commit(folder)})" if folder else ""),
    }
    if threads:
        info["thread settings"] = ", ".join(f"{k}={v}" for k, v in threads.items())
    return info


# ------------------------------------------------------------------------------ the sections


@dataclass(frozen=True)
class _Section:
    name: str
    status: str
    """``"ok"``, ``"failed (exit code N)"``, ``"timed out"``, ``"no table"``, ``"not run"``."""
    seconds: float
    command: str
    markdown: str | None
    """The script's table (its bench/out/<name>.md), or None."""
    output: str = ""
    """The end of the script's output (for failures and scripts that wrote no table)."""
    written: str = ""
    """When the table was written (modification time)."""


def _quick_args(script: Path) -> tuple[str, ...]:
    if "--quick" in script.read_text(errors="replace"):
        return ("--quick",)
    return QUICK_ARGS.get(script.stem, ())


def _tail(text: str, n: int = _TAIL) -> str:
    lines = text.rstrip().splitlines()
    cut = lines[-n:]
    return ("… (earlier lines cut)\n" if len(lines) > n else "") + "\n".join(cut)


def _mtime(path: Path) -> str:
    stamp = _dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    return stamp.strftime("%Y-%m-%d %H:%M:%S %Z")


def _run_script(
    folder: Path, name: str, quick: bool, timeout: float | None, echo: Callable[[str], object]
) -> _Section:
    script = folder / f"{name}.py"
    args = _quick_args(script) if quick else ()
    command = " ".join(["python", f"bench/{name}.py", *args])
    table = folder / "out" / f"{name}.md"
    echo(f"multireg bench: running {command} ...")
    started_wall = time.time()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(script), *args],
            cwd=folder.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        seconds = time.perf_counter() - t0
        output = (exc.stdout or "") + (exc.stderr or "")
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        echo(f"multireg bench: {name} timed out after {seconds:.0f} s")
        return _Section(name, "timed out", seconds, command, None, _tail(output))
    seconds = time.perf_counter() - t0
    output = proc.stdout + ("\n" + proc.stderr if proc.stderr.strip() else "")
    fresh = table.is_file() and table.stat().st_mtime >= started_wall - 1
    if proc.returncode != 0:
        status = f"failed (exit code {proc.returncode})"
        echo(f"multireg bench: {name} {status} after {seconds:.0f} s")
        return _Section(name, status, seconds, command, None, _tail(output))
    echo(f"multireg bench: {name} done in {seconds:.0f} s")
    if fresh:
        return _Section(name, "ok", seconds, command, table.read_text(), "", _mtime(table))
    return _Section(name, "no table", seconds, command, None, _tail(proc.stdout or output))


def _existing(folder: Path, name: str) -> _Section:
    table = folder / "out" / f"{name}.md"
    command = f"python bench/{name}.py"
    if table.is_file():
        return _Section(name, "ok", float("nan"), command, table.read_text(), "", _mtime(table))
    return _Section(name, "not run", float("nan"), command, None)


def _slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _demote(markdown: str) -> tuple[str, str]:
    """The script's title (its first heading) and its body with every heading one level down."""
    lines = markdown.strip("\n").splitlines()
    title = ""
    if lines and lines[0].startswith("# "):
        title, lines = lines[0][2:].strip(), lines[1:]
    out, fenced = [], False
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return title, "\n".join(out).strip("\n")


def _fmt_seconds(s: float) -> str:
    if s != s:
        return "—"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _assemble(
    sections: list[_Section], info: dict, *, quick: bool, ran: bool, started: str, loads: tuple
) -> str:
    lines = ["# multireg benchmark report", ""]
    how = "every script run now" if ran else "assembled from the tables already in bench/out/"
    mode = " with --quick (smaller sizes, fewer runs)" if quick else ""
    command = "multireg bench --quick" if quick else "multireg bench"
    lines.append(
        f"{started}; {how}{mode}. Reproduce: `{command}` from a checkout of the repository "
        "(or each `python bench/<name>.py`)."
    )
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    for key, value in info.items():
        lines.append(f"| {key} | {value} |")
    if ran:
        lines.append(f"| load average after | {loads[1]} |")
    lines += ["", "## Contents", ""]
    titles = {}
    for i, s in enumerate(sections, 1):
        title, _ = _demote(s.markdown) if s.markdown else ("", "")
        heading = f"{i}. {s.name}" + (f": {title}" if title else "")
        titles[s.name] = heading
        lines.append(f"- [{heading}](#{_slug(heading)}): {s.status}")
    lines += ["", "| script | status | wall time | table written |", "|---|---|---|---|"]
    for s in sections:
        lines.append(f"| {s.name} | {s.status} | {_fmt_seconds(s.seconds)} | {s.written or '—'} |")
    for s in sections:
        lines += ["", f"## {titles[s.name]}", ""]
        written = f", table written {s.written}" if s.written else ""
        lines += [f"`{s.command}` — {s.status}{written}", ""]
        if s.markdown:
            lines.append(_demote(s.markdown)[1])
        elif s.status == "not run":
            lines.append(f"No table yet: run `{s.command}`.")
        else:
            what = "wrote no table" if s.status == "no table" else s.status
            lines.append(f"The script {what}; the end of its output:")
            lines += ["", "```", s.output or "(no output)", "```"]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------ entry point


def write_bench_report(
    path: str | os.PathLike | None = None,
    *,
    quick: bool = False,
    scripts: Sequence[str] | None = None,
    bench_dir: str | os.PathLike | None = None,
    run: bool = True,
    timeout: float | None = None,
    quiet: bool = False,
) -> Path:
    """Run the bench/ scripts and write one Markdown report; returns its path.

    ``path``: the report (default ``bench/out/REPORT.md``); ``quick``: each script's quick
    option (``--quick``, or the short setting of :data:`QUICK_ARGS`); ``scripts``: names to run
    (default: every script, in :data:`ORDER`); ``bench_dir``: the bench folder (default: the
    checkout's); ``run=False``: run nothing, assemble the tables already written; ``timeout``:
    seconds per script (None: no limit); ``quiet``: no progress lines (on stderr).
    """
    folder = find_bench_dir(bench_dir)
    names = _scripts(folder, scripts)
    if timeout is not None:
        from multireg import _checks

        timeout = _checks.positive("timeout", timeout)
    out = Path(path) if path is not None else folder / "out" / f"{REPORT_NAME}.md"
    if out.is_dir():
        raise IsADirectoryError(f"path {str(out)!r} is a folder; give the report's file name")
    if not out.parent.is_dir():
        if path is not None:
            raise FileNotFoundError(f"path: the folder {str(out.parent)!r} does not exist")
        out.parent.mkdir(parents=True)

    def echo(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    started = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    info = machine_info(folder.parent)
    if run:
        sections = [_run_script(folder, n, quick, timeout, echo) for n in names]
    else:
        sections = [_existing(folder, n) for n in names]
    text = _assemble(
        sections,
        info,
        quick=quick,
        ran=run,
        started=started,
        loads=(info["load average (1, 5, 15 min)"], _load()),
    )
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    echo(f"multireg bench: report written to {out}")
    return out
