"""Writing outputs so that an interruption never leaves a half-written file: atomic writes of
single files, :class:`OutputSet` for files that belong together, the temporaries both use, and
the writability probe that reports an unwritable output before a long computation.

Writing is atomic: the data go to a temporary file in the output's folder, which then replaces
the output (``os.replace``; a new output is linked into place, so an existing file is never
clobbered unless ``overwrite=True``). An interruption therefore leaves either the old output or
the complete new one, never a half-written file. An output whose path resolves to an input
(``like.path`` or any path in ``protect``) is refused, and so is an existing output unless
``overwrite=True``; an output that is a symbolic link is replaced as a link (its target is
never written). Several files that belong together (a command's outputs) are written as one
unit by :class:`OutputSet`: all of them appear, or none.

Temporaries are named ``.multireg-tmp-<pid>-<host>-<random>-<name>`` (``<host>``: 8 hex digits
of a hash of the host name), so that they are recognisable; :func:`remove_stale_temporaries`
removes those of a multireg process that died without cleaning up (``kill -9``), and
:class:`OutputSet` calls it on every folder it writes into.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TEMP_PREFIX",
    "OutputSet",
    "atomic_path",
    "check_output",
    "remove_stale_temporaries",
    "to_jsonable",
    "write_json",
]


# ------------------------------------------------------------------------------------ writing


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    path: str | os.PathLike, *, overwrite: bool = False, protect: Iterable[Any] = ()
) -> Path:
    """Refuse an output that is an input (``protect``) or exists without ``overwrite``.

    A symbolic link counts as existing even when its target does not (writing replaces the
    link, never its target); one that resolves to an input is refused like the input itself.
    """
    path = Path(path)
    for p in protect:
        p = getattr(p, "path", p)  # an Image or a path
        if p is not None and _same_file(path, Path(p)):
            raise ValueError(f"{path}: refusing to write over an input file")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; name an output file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite=True (--overwrite) to replace it")
    return path


# ------------------------------------------------------------------------------ temporaries

TEMP_PREFIX = ".multireg-tmp-"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"^\.multireg-tmp-(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{8})-")


def _temp_prefix() -> str:
    """The start of this process's temporary names: ``.multireg-tmp-<pid>-<host>-``."""
    return f"{TEMP_PREFIX}{os.getpid()}-{_HOST}-"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this host). Unsure counts as alive."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that a dead multireg process left in ``folder``; return them.

    Only entries named by this module (``.multireg-tmp-<pid>-<host>-…``) are touched, only those
    of this host (a folder shared between machines may hold another machine's live run), and
    only when process ``<pid>`` no longer exists. Anything that cannot be removed is left.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or match["host"] != _HOST or _pid_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _existing_ancestor(folder: Path) -> tuple[Path, Path | None]:
    """``(the nearest existing ancestor of folder (or folder), the highest missing folder)``.

    Raises ``NotADirectoryError`` (naming ``folder`` as given) when that ancestor is a file (a
    folder cannot be made there) or a path component is a broken symbolic link.
    """
    anchor = Path(os.path.abspath(folder))
    missing = None
    while not anchor.exists():
        if anchor.is_symlink():
            raise NotADirectoryError(f"{folder}: cannot create it: {anchor} is a broken link")
        missing, anchor = anchor, anchor.parent
    if not anchor.is_dir():
        if missing is None:
            raise NotADirectoryError(f"{folder}: is a file, not a folder")
        raise NotADirectoryError(
            f"{folder}: cannot create the folder: {anchor} is a file, not a folder"
        )
    return anchor, missing


def _probe(folder: Path, shown: Path) -> None:
    """Create and remove a file in ``folder``: the only sure test that one can write there
    (permission bits say nothing for root, read-only mounts, ACLs, full quotas)."""
    with _sigint_deferred():  # a Ctrl-C between creating and removing it would leave it
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(), suffix="-probe")
        except OSError as err:
            where = "" if Path(os.path.abspath(shown)) == folder else f" (in {folder})"
            raise PermissionError(
                f"{shown}: cannot write there{where}: {err.strerror or err}"
            ) from None
        os.close(fd)
        os.unlink(name)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) inside the block and raise KeyboardInterrupt after it.

    For the few renames that put a set of outputs in place: an interrupt between two of them
    would leave a partial set. Only the main thread can set signal handlers; elsewhere the block
    runs unprotected (Python delivers SIGINT to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if received:
        raise KeyboardInterrupt


class OutputSet:
    """A run's output files, written as one unit: all of them appear, or none of them.

    ``OutputSet(paths, overwrite=, protect=)`` checks everything before any work: each path is
    refused if it is an input or exists without ``overwrite`` (:func:`check_output`); each
    folder must be creatable and writable, which is tested by creating and removing a probe
    file in it (or in its nearest existing ancestor), so that an unwritable output is reported
    before a long computation, naming the output; stale temporaries of dead multireg processes
    are removed from those folders (:func:`remove_stale_temporaries`). Nothing is created.

    Then ``with outputs:`` writes each file to ``outputs.stage(path)`` and, when the block ends
    without an exception, :meth:`commit` puts them all in place; on an exception (Ctrl-C
    included) the staged files are removed and the outputs are left as they were.

    How "all or none" is kept:

    * A folder that does not exist yet (``--out new/dir``): its highest missing folder ``M`` is
      built as a hidden temporary folder beside it (``.multireg-tmp-…-M``) and renamed to ``M``
      at the end: one atomic ``rename``, so ``M`` appears complete or not at all (if ``M``
      appeared meanwhile with something in it, the rename fails and nothing is replaced).
    * A folder that exists: the files are staged in a hidden temporary folder inside it (same
      file system, so each move is an atomic ``rename``); the commit moves them in one by one.
      An existing file (``overwrite``) is first hard-linked into the temporary folder as a
      backup, then replaced by ``os.replace``: the path always holds the old or the new file,
      never nothing. A new file is linked into place (refused if one appeared meanwhile). If a
      step fails, the steps done so far are undone (backups renamed back, new files removed),
      so the folder is as before.
    * Ctrl-C during the commit (a few renames) is held back until the commit is complete
      (:func:`_sigint_deferred`), then raised: the outputs are complete and the run still
      ends as interrupted.

    What is not covered: ``kill -9`` (or a power cut) in the middle of the commit's renames
    may leave part of the new set beside part of the old one; the temporaries it leaves
    (staged files, backups) are recognisable and are removed by the next run into the folder.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        overwrite: bool = False,
        protect: Iterable[Any] = (),
    ) -> None:
        protect = tuple(protect)
        self.paths = [check_output(p, overwrite=overwrite, protect=protect) for p in paths]
        self.overwrite = overwrite
        self._key = [Path(os.path.abspath(p)) for p in self.paths]
        if len(set(self._key)) != len(self._key):
            same = sorted({str(p) for p, k in zip(self.paths, self._key) if self._key.count(k) > 1})
            raise ValueError(f"two outputs would be written to the same file: {', '.join(same)}")
        # per output folder: (nearest existing ancestor, highest missing folder or None)
        self._folders: dict[Path, tuple[Path, Path | None]] = {}
        for path, key in zip(self.paths, self._key):
            folder = key.parent
            if folder not in self._folders:
                anchor, missing = _existing_ancestor(path.parent)
                _probe(anchor, path.parent)
                remove_stale_temporaries(anchor)
                self._folders[folder] = (anchor, missing)
        # output folder (exists) or highest missing folder -> (its temporary folder, inside?)
        self._stages: dict[Path, tuple[Path, bool]] = {}
        self._active = False

    def __enter__(self) -> OutputSet:
        if self._active:
            raise RuntimeError("this OutputSet is already being written")
        self._active = True
        return self

    def __exit__(self, kind, value, tb) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            self._discard()
            self._active = False

    def stage(self, path: str | os.PathLike) -> Path:
        """Where to write output ``path`` now: a fresh path with the same name, in a hidden
        temporary folder (the writer chooses the format by the name, as for ``path``)."""
        if not self._active:
            raise RuntimeError("stage() is for use inside 'with outputs:'")
        key = Path(os.path.abspath(path))
        if key not in self._key:
            raise ValueError(f"{path}: not one of this set's outputs")
        staged = self._staged(key)
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged

    def _staged(self, key: Path) -> Path:
        _, missing = self._folders[key.parent]
        if missing is None:
            return self._stage_folder(key.parent, inside=True) / key.name
        return self._stage_folder(missing, inside=False) / key.relative_to(missing)

    def _stage_folder(self, folder: Path, *, inside: bool) -> Path:
        if folder not in self._stages:
            where = folder if inside else folder.parent
            name = tempfile.mkdtemp(dir=where, prefix=_temp_prefix(), suffix=f"-{folder.name}")
            if not inside:  # it becomes the user's folder: the usual permissions, not 0700
                os.chmod(name, 0o777 & ~_umask())
            self._stages[folder] = (Path(name), inside)
        return self._stages[folder][0]

    def commit(self) -> None:
        """Put every staged output in place, all or none (see the class docstring)."""
        staged = {key: self._staged(key) for key in self._key}
        absent = [str(p) for p, key in zip(self.paths, self._key) if not staged[key].exists()]
        if absent:
            raise RuntimeError(f"outputs were not written: {', '.join(absent)}")
        undo: list[Callable[[], Any]] = []
        with _sigint_deferred():
            try:
                for folder, (stage, inside) in self._stages.items():
                    if not inside:
                        _rename_folder(stage, folder)
                        undo.append(functools.partial(os.rename, folder, stage))
                for key in self._key:
                    if self._folders[key.parent][1] is None:
                        self._move_in(staged[key], key, undo)
            except BaseException:
                for step in reversed(undo):
                    with contextlib.suppress(OSError):
                        step()
                raise

    def _move_in(self, staged: Path, key: Path, undo: list) -> None:
        """Move one staged file to ``key`` in an existing folder, recording how to undo it."""
        if os.path.lexists(key):
            if not self.overwrite:
                raise FileExistsError(
                    f"{key}: exists; pass overwrite=True (--overwrite) to replace it"
                )
            backup = staged.parent / ".old" / key.name
            backup.parent.mkdir(exist_ok=True)
            try:  # a second name for the old file: the path is never empty
                os.link(key, backup, follow_symlinks=False)
            except OSError:  # a file system without hard links
                os.rename(key, backup)
            undo.append(functools.partial(os.replace, backup, key))
            os.replace(staged, key)
            return
        _link_new(staged, key)
        undo.append(functools.partial(os.unlink, key))

    def _discard(self) -> None:
        """Remove the temporary folders (after a commit they hold only links and backups; a
        folder renamed into place is no longer at its temporary path)."""
        for stage, _ in self._stages.values():
            shutil.rmtree(stage, ignore_errors=True)
        self._stages.clear()


def _link_new(src: Path, dst: Path) -> None:
    """Give file ``src`` the name ``dst`` too, refusing an existing ``dst`` (never clobber)."""
    try:
        os.link(src, dst)  # fails if dst appeared meanwhile
    except FileExistsError:
        raise FileExistsError(
            f"{dst}: exists; pass overwrite=True (--overwrite) to replace it"
        ) from None
    except OSError:  # a file system without hard links
        os.replace(src, dst)


def _rename_folder(stage: Path, folder: Path) -> None:
    try:
        os.rename(stage, folder)  # replaces nothing but an empty folder
    except OSError as err:
        raise FileExistsError(
            f"{folder}: cannot create it ({err.strerror}); did it appear while multireg ran?"
        ) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, overwrite: bool = False, protect: Iterable[Any] = ()
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it becomes ``path`` atomically.

    The temporary file keeps the output's extension (writers choose formats by it). On any
    exception, KeyboardInterrupt included, it is removed and ``path`` is left as it was.
    """
    path = check_output(path, overwrite=overwrite, protect=protect)
    path.parent.mkdir(parents=True, exist_ok=True)
    # named .multireg-tmp-<pid>-<host>-<random>-<name>: recognisable, and the extension (which
    # chooses the writer's format) is kept
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(), suffix=f"-{path.name}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    overwrite: bool = False,
    protect: Iterable[Any] = (),
) -> Path:
    """Write ``obj`` as indented JSON, atomically.

    NumPy arrays and scalars become lists and numbers, enums their values, paths strings,
    dataclasses dicts; NaN and ±Inf become null (JSON has no such numbers).
    """
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    with atomic_path(path, overwrite=overwrite, protect=protect) as tmp:
        _write_text(tmp, text)
    return path


def _write_text(tmp: Path, text: str) -> None:
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def to_jsonable(obj: Any) -> Any:
    """``obj`` with NumPy values, enums, paths and dataclasses turned into plain JSON types."""
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # a framework's array
        from multireg._checks import to_host

        return to_jsonable(np.asarray(to_host(obj)))
    return str(obj)
