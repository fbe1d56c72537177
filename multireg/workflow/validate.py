"""Cross-framework validation: run one problem on every backend and compare the results.

``validate(fn, *args, backends=...)`` calls ``fn(*args, backend=name, **kwargs)`` once (or
``repeat`` times) per backend, turns each result into named leaves and compares every leaf with
the first backend's (the reference):

* float arrays and floats: the maximum relative difference ‖a − b‖∞ / max(‖a‖∞, tiny), a the
  reference (NaN in the same places counts as equal); a leaf passes when it is at most ``rtol``
  (or its absolute difference is at most ``atol``);
* integers (iteration and evaluation counts): the absolute difference, which passes when it is at
  most ``int_tol`` (default 0: counts must be equal; None: reported, never judged);
* enums and booleans (a solver's ``status``): equality;
* shapes: a leaf whose shape differs between backends fails.

Leaves that measure how far a run got rather than what it found (gradient norms, step norms and
lengths, predictor errors: roundoff-sized at a converged point, so their relative difference is
noise) are shown but not judged; ``informational=`` changes the list. Timings, messages, backend
names, settings (strings), domains, transformation objects and iteration histories (whose last
rows repeat the results' own fields) are not leaves.

The flattening is generic: dataclass fields, mapping items and tuple/list items, recursively; a
tuple of plain numbers is one array leaf; a tuple of records of one kind (an optimiser's levels, a
homotopy path) is stacked field by field into one leaf per field (``path[:].w``) where the shapes
allow, else indexed (``levels[2].result.x``). Arrays of any framework are brought to the host with
the backend's ``to_numpy``.

Time per backend: the first run (with compilation, where the backend compiles) and, with
``repeat ≥ 2``, the median of the others (warm). Timing protocol as in bench/_harness.py: wall
clock around the call, the backend's ``sync`` on every array of the result before the clock stops.

The comparison is the practice of SciPy's array-API backend tests (one problem, every backend,
relative error against a reference run); the tolerance semantics follow ``numpy.testing``'s
``assert_allclose`` measured in the max norm.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["Leaf", "ValidationReport", "validate"]

TINY = 1e-300
INFORMATIONAL = (
    "grad_norm", "grad_norms", "step_norm", "step_length", "predictor_error", "nfev",
)  # fmt: skip
"""Leaf names (the last component) shown but not judged by default: quantities at round-off
level (a gradient norm at the optimum), and ``nfev``, which counts line-search trials whose
acceptance near the optimum is decided by rounding noise (the demo's affine run: the same
iterates to 7e-17 with 18 and 11 evaluations). Iteration counts, statuses and values stay
judged."""
_SKIP_NAMES = frozenset({"timings", "time", "message", "backend", "history"})
_MAX_DEPTH = 12


# ------------------------------------------------------------------------------ flattening


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or hasattr(x, "__array_namespace__") or hasattr(x, "detach")


def _skipped_type(x: Any) -> bool:
    from multireg._backend import Backend
    from multireg.grid import Domain
    from multireg.transforms import Transform

    return isinstance(x, (Domain, Transform, ModuleType, str, bytes)) or (
        not isinstance(x, type) and isinstance(x, Backend)
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _children(x: Any) -> list[tuple[str, Any]] | None:
    """Named children of a container, or None for a leaf."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [(f.name, getattr(x, f.name)) for f in dataclasses.fields(x)]
    if isinstance(x, Mapping):
        return [(str(k), v) for k, v in x.items()]
    return None


def _leaves(x: Any, convert: Callable[[Any], Any], name: str = "", depth: int = 0) -> dict:
    """Named leaves of a result (see the module docstring), each passed through ``convert``;
    an unnamed top-level leaf is called ``""``."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"result is nested more than {_MAX_DEPTH} levels deep at {name!r}")
    if x is None or isinstance(x, (enum.Enum, bool, np.bool_)) or _is_number(x) or _is_array(x):
        return {name: convert(x)}
    if _skipped_type(x) or callable(x):
        return {}
    kids = _children(x)
    if kids is not None:
        out: dict[str, Any] = {}
        for key, value in kids:
            if key not in _SKIP_NAMES:
                out.update(_leaves(value, convert, f"{name}.{key}" if name else key, depth + 1))
        return out
    if isinstance(x, (tuple, list)) and x:
        if all(_is_number(v) for v in x):
            return {name: np.asarray(x)}
        return _stack_items(name, [_leaves(v, convert, "", depth + 1) for v in x])
    return {}  # anything else (objects without fields, empty sequences) has no comparable value


def _stack_items(name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """A sequence of records: one stacked leaf per field where every item has it with the same
    shape and kind, else one leaf per item."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for item in items for k in item):
        suffix = f".{key}" if key else ""
        values = [item.get(key, _MISSING) for item in items]
        stacked = _try_stack(values) if len(items) > 1 else _MISSING
        if stacked is not _MISSING:
            out[f"{name}[:]{suffix}"] = stacked
        else:
            for i, v in enumerate(values):
                if v is not _MISSING:
                    out[f"{name}[{i}]{suffix}"] = v
    return out


_MISSING = object()


def _try_stack(values: list[Any]) -> Any:
    if any(v is _MISSING for v in values) or all(v is None for v in values):
        return _MISSING
    present = [v for v in values if v is not None]
    if len(present) < len(values):  # None among floats or float arrays of one shape: NaN there
        if all(isinstance(v, float) for v in present):
            return np.asarray([math.nan if v is None else v for v in values])
        if all(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in present):
            if len({v.shape for v in present}) == 1:
                fill = np.full_like(present[0], math.nan)
                return np.stack([fill if v is None else v for v in values])
        return _MISSING
    if all(isinstance(v, enum.Enum) for v in values):
        return tuple(values)
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return np.asarray(values, dtype=bool)
    if all(_is_number(v) for v in values):
        return np.asarray(values)
    if all(isinstance(v, np.ndarray) for v in values):
        if len({v.shape for v in values}) == 1 and len({v.dtype.kind for v in values}) == 1:
            return np.stack(values)
    return _MISSING


def _to_host(bk: Any, x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.copy()
    if _is_array(x):
        if bk is None:
            from multireg._checks import to_host

            return np.array(to_host(x))
        return np.asarray(bk.to_numpy(x)).copy()
    if isinstance(x, np.generic):
        return x.item()
    return x


def flatten(result: Any, bk: Any = None) -> dict[str, Any]:
    """The named leaves of ``result``, arrays as NumPy copies (``bk.to_numpy``, or a generic
    host copy without ``bk``); an unnamed top-level value is called ``"result"``."""
    leaves = _leaves(result, lambda x: _to_host(bk, x))
    return {k or "result": v for k, v in leaves.items()}


# ------------------------------------------------------------------------------ comparison


def _kind(values: Iterable[Any]) -> str:
    values = list(values)
    if all(v is None for v in values):
        return "none"
    if all(isinstance(v, enum.Enum) for v in values) or all(
        isinstance(v, tuple) and v and isinstance(v[0], enum.Enum) for v in values
    ):
        return "enum"
    arrays = [np.asarray(v) for v in values if v is not None and not isinstance(v, tuple)]
    if len(arrays) != len(values):
        return "mixed"
    kinds = {a.dtype.kind for a in arrays}
    if kinds <= {"b"}:
        return "bool"
    if kinds <= {"i", "u"}:
        return "int"
    if kinds <= {"i", "u", "f"}:
        return "float"
    if kinds <= {"i", "u", "f", "c"}:
        return "complex"
    return "other"


def _rel_diff(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max relative difference, max absolute difference); NaN/Inf in the same places agree."""
    ref = np.asarray(ref, dtype=np.result_type(ref, np.float64))
    other = np.asarray(other, dtype=np.result_type(other, np.float64))
    if ref.size == 0:
        return 0.0, 0.0
    same = (ref == other) | (np.isnan(ref) & np.isnan(other))
    if not np.all(np.isfinite(ref[~same])) or not np.all(np.isfinite(other[~same])):
        return math.inf, math.inf
    abs_diff = float(np.max(np.where(same, 0.0, np.abs(ref - other))))
    finite = np.abs(ref[np.isfinite(ref)])
    scale = float(np.max(finite)) if finite.size else 0.0
    return abs_diff / max(scale, TINY), abs_diff


def _shape(v: Any) -> tuple[int, ...] | None:
    if v is None or isinstance(v, (enum.Enum, tuple)):
        return None
    return tuple(np.shape(v))


def _show(v: Any) -> str:
    """A short text for a table cell."""
    if v is None:
        return "None"
    if isinstance(v, enum.Enum):
        return str(v.value)
    if isinstance(v, tuple):
        values = [str(e.value) if isinstance(e, enum.Enum) else str(e) for e in v]
        uniq = list(dict.fromkeys(values))
        return uniq[0] + f" ×{len(values)}" if len(uniq) == 1 else ", ".join(values[:4]) + " …"
    a = np.asarray(v)
    if a.ndim == 0:
        if a.dtype.kind in "iub":
            return str(a.item())
        return f"{float(a):.6g}"
    if a.size <= 4 and a.dtype.kind in "iub":
        return str(a.tolist())
    if a.size <= 6 and a.ndim == 1:
        return "[" + ", ".join(f"{float(e):.4g}" for e in a) + "]"
    return "×".join(map(str, a.shape)) + " array"


@dataclass(frozen=True)
class Leaf:
    """One compared leaf: its values per backend (host copies) and the verdict."""

    name: str
    kind: str
    """``"float"``, ``"int"``, ``"bool"``, ``"enum"``, ``"none"``, ``"complex"`` or ``"mixed"``."""
    values: Mapping[str, Any]
    shapes: Mapping[str, tuple[int, ...] | None]
    diff: float
    """Max relative difference to the reference (arrays, floats); the max absolute difference for
    integers; 0 or 1 (equal or not) for enums and booleans; inf for a shape mismatch."""
    abs_diff: float
    judged: bool
    """False for informational leaves (shown, never failing)."""
    ok: bool
    note: str = ""


@dataclass(frozen=True)
class ValidationReport:
    """What :func:`validate` returns. ``rows``: one :class:`Leaf` per compared leaf; ``times``:
    per backend, ``{"first": s, "warm": s (NaN unless repeat ≥ 2), "runs": n}``; ``results``:
    the last raw result per backend (its arrays on that backend)."""

    backends: tuple[str, ...]
    rows: tuple[Leaf, ...]
    times: Mapping[str, Mapping[str, float]]
    rtol: float
    atol: float
    int_tol: int | None
    title: str = ""
    errors: Mapping[str, str] = field(default_factory=dict)
    """Backends whose run raised (the error's one-line text); such a backend fails the report."""
    results: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def reference(self) -> str:
        return self.backends[0]

    @property
    def compared(self) -> bool:
        """At least two backends ran, so something was compared."""
        return len([b for b in self.backends if b not in self.errors]) >= 2

    @property
    def ok(self) -> bool:
        """Every judged leaf within tolerance and every backend ran."""
        return not self.errors and all(r.ok for r in self.rows)

    @property
    def failures(self) -> tuple[Leaf, ...]:
        return tuple(r for r in self.rows if not r.ok)

    @property
    def worst(self) -> Leaf | None:
        """The failing leaf with the largest difference, else the judged float leaf with the
        largest relative difference (None when there is none)."""
        pool = list(self.failures) or [r for r in self.rows if r.judged and r.kind == "float"]
        return max(pool, key=lambda r: r.diff) if pool else None

    def __getitem__(self, name: str) -> Leaf:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no leaf {name!r}; leaves: {', '.join(r.name for r in self.rows)}")

    def max_diff(self, *names: str) -> float:
        """The largest relative difference among the named leaves (all judged float leaves if
        none are named)."""
        rows = [self[n] for n in names] if names else [r for r in self.rows if r.kind == "float"]
        return max((r.diff for r in rows if r.judged or names), default=0.0)

    def table(self) -> str:
        """The report as Markdown: one row per leaf, then the time per backend."""
        names = self.backends
        lines = []
        if self.title:
            lines.append(f"Validation of {self.title}")
        judged = "equal integers" if self.int_tol == 0 else f"integers within {self.int_tol}"
        if self.int_tol is None:
            judged = "integers reported only"
        tol = f"rtol {self.rtol:.1e}" + (f", atol {self.atol:.1e}" if self.atol else "")
        lines.append(
            f"Backends {', '.join(names)} (reference {self.reference}); {tol}, {judged}. "
            f"Verdict: {'PASS' if self.ok else 'FAIL'}"
            + ("" if self.compared else " (only one backend ran: nothing was compared)")
        )
        lines.append("")
        header = ["leaf", "kind", "shape", "max rel diff", *names, "result"]
        body = []
        for r in self.rows:
            shapes = set(r.shapes.values())
            first = next(iter(shapes), None)
            if len(shapes) > 1:
                shape = "differ"
            elif first is None:
                shape = "—"
            else:
                shape = "×".join(map(str, first)) or "scalar"
            if r.kind == "int":
                diff = f"{r.abs_diff:g} (abs)"
            elif r.kind in ("enum", "bool", "none"):
                diff = "equal" if r.diff == 0 else "differ"
            else:
                diff = f"{r.diff:.2e}"
            verdict = ("pass" if r.ok else "FAIL") if r.judged else "info"
            if r.note:
                verdict += f" ({r.note})"
            cells = [r.name, r.kind, shape, diff]
            cells += [_show(r.values.get(b)) if b in r.values else "—" for b in names]
            body.append([*cells, verdict])
        lines.append(_markdown(header, body))
        for name, message in self.errors.items():
            lines.append(f"\n{name} raised: {message}")
        lines.append("")
        rows = []
        for name in names:
            t = self.times.get(name, {})
            rows.append(
                [
                    name,
                    _fmt_time(t.get("first", math.nan)),
                    _fmt_time(t.get("warm", math.nan)),
                    str(t.get("runs", 0)),
                ]
            )
        lines.append(_markdown(["backend", "first run (incl. compilation)", "warm", "runs"], rows))
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict:
        """A JSON-ready summary (no arrays)."""
        return {
            "backends": list(self.backends),
            "reference": self.reference,
            "ok": self.ok,
            "rtol": self.rtol,
            "atol": self.atol,
            "int_tol": self.int_tol,
            "errors": dict(self.errors),
            "leaves": [
                {
                    "name": r.name,
                    "kind": r.kind,
                    "max_rel_diff": r.diff,
                    "max_abs_diff": r.abs_diff,
                    "judged": r.judged,
                    "ok": r.ok,
                }
                for r in self.rows
            ],
            "times": {k: dict(v) for k, v in self.times.items()},
        }


def _fmt_time(seconds: float) -> str:
    if seconds != seconds:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    cells = [list(header), *[list(map(str, row)) for row in body]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _compare(
    name: str,
    values: dict[str, Any],
    reference: str,
    *,
    rtol: float,
    atol: float,
    int_tol: int | None,
    informational: tuple[str, ...],
) -> Leaf:
    present = {b: v for b, v in values.items() if v is not _MISSING}
    kind = _kind(present.values())
    shapes = {b: _shape(v) for b, v in present.items()}
    judged = name.rpartition(".")[2].partition("[")[0] not in informational
    missing = [b for b in values if b not in present]
    base = dict(name=name, kind=kind, values=present, shapes=shapes, judged=True)
    if missing:
        note = f"missing on {', '.join(missing)}"
        return Leaf(**base, diff=math.inf, abs_diff=math.inf, ok=False, note=note)
    if len(set(shapes.values())) > 1:
        return Leaf(**base, diff=math.inf, abs_diff=math.inf, ok=False, note="shapes differ")
    ref = present[reference]
    others = [v for b, v in present.items() if b != reference]
    if kind in ("enum", "bool", "none", "mixed", "other"):
        equal = all(_equal(ref, v) for v in others)
        diff = 0.0 if equal else 1.0
        ok = equal or not judged
        return Leaf(**{**base, "judged": judged}, diff=diff, abs_diff=diff, ok=ok)
    diffs = [_rel_diff(np.asarray(ref), np.asarray(v)) for v in others] or [(0.0, 0.0)]
    rel, absolute = max(d[0] for d in diffs), max(d[1] for d in diffs)
    if kind == "int":
        judged = judged and int_tol is not None
        ok = not judged or absolute <= int_tol
    else:
        ok = not judged or rel <= rtol or absolute <= atol
    return Leaf(**{**base, "judged": judged}, diff=rel, abs_diff=absolute, ok=ok)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, (enum.Enum, tuple)) or a is None or b is None:
        return a == b
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


# -------------------------------------------------------------------------------- entry points


def _check_backends(backends: Any) -> list:
    from multireg._backend import Backend, _instance, available_backends

    if backends is None:
        names = [n for n in available_backends() if _instance(n).differentiable]
        if not names:
            raise ValueError(
                "backends: no differentiating backend is installed; "
                'pip install "multireg[torch,jax]"'
            )
        return [_instance(n) for n in names]
    if isinstance(backends, (str, Backend)):
        backends = [backends]
    if not isinstance(backends, (list, tuple)) or not backends:
        raise TypeError(f"backends must be None or a non-empty list of names, not {backends!r}")
    installed = available_backends()
    out = []
    for b in backends:
        if isinstance(b, str):
            if b not in installed:
                raise ValueError(
                    f"backends: unknown or not installed backend {b!r}; installed: "
                    f"{', '.join(installed)}"
                )
            out.append(_instance(b))
        elif isinstance(b, Backend):
            out.append(b)
        else:
            raise TypeError(f"backends must hold backend names, not {type(b).__name__}")
    if len({b.name for b in out}) != len(out):
        raise ValueError(f"backends: each backend once, got {[b.name for b in out]}")
    return out


def _check_options(rtol: Any, atol: Any, repeat: Any, int_tol: Any) -> tuple:
    from multireg import _checks

    rtol = _checks.positive("rtol", rtol)
    atol = _checks.positive("atol", atol, allow_zero=True)
    if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
        raise ValueError(f"repeat must be an integer ≥ 1, got {repeat!r}")
    if int_tol is not None and (
        isinstance(int_tol, bool) or not isinstance(int_tol, (int, np.integer)) or int_tol < 0
    ):
        raise ValueError(f"int_tol must be None or an integer ≥ 0, got {int_tol!r}")
    return rtol, atol, int(repeat), None if int_tol is None else int(int_tol)


def _sync_all(bk: Any, result: Any) -> None:
    def sync(x: Any) -> None:
        if _is_array(x) and not isinstance(x, np.ndarray):
            bk.sync(x)

    _leaves(result, sync)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def validate(
    fn: Callable[..., Any],
    *args: Any,
    backends: Sequence[str] | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    repeat: int = 1,
    int_tol: int | None = 0,
    informational: Sequence[str] = INFORMATIONAL,
    title: str | None = None,
    **kwargs: Any,
) -> ValidationReport:
    """Run ``fn(*args, backend=name, **kwargs)`` on each backend and compare the results.

    ``backends``: names (default: every installed backend that differentiates); the first is the
    reference. ``rtol``/``atol``: tolerance of float leaves; ``int_tol``: of integer leaves
    (None: not judged); ``repeat``: runs per backend (≥ 2 gives warm times); ``informational``:
    leaf names shown but not judged. ``validate``'s own options cannot reach ``fn``: pass a
    ``functools.partial`` for an ``fn`` that takes one of these names.

    A backend whose run raises is reported (``errors``; the report fails); if every backend
    raises, the first error is raised (bad input is the caller's, not a disagreement).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    rtol, atol, repeat, int_tol = _check_options(rtol, atol, repeat, int_tol)
    if isinstance(informational, str) or not all(isinstance(s, str) for s in informational):
        raise TypeError("informational must be a sequence of leaf names")
    bks = _check_backends(backends)
    names = tuple(b.name for b in bks)

    leaves: dict[str, dict[str, Any]] = {}
    times: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    results: dict[str, Any] = {}
    first_exc: BaseException | None = None
    for bk in bks:
        elapsed = []
        try:
            for _ in range(repeat):
                t0 = time.perf_counter()
                result = fn(*args, backend=bk.name, **kwargs)
                _sync_all(bk, result)
                elapsed.append(time.perf_counter() - t0)
        except Exception as exc:
            first_exc = first_exc or exc
            errors[bk.name] = _one_line(exc)
            times[bk.name] = {"first": math.nan, "warm": math.nan, "runs": 0}
            continue
        results[bk.name] = result
        warm = statistics.median(elapsed[1:]) if len(elapsed) > 1 else math.nan
        times[bk.name] = {"first": elapsed[0], "warm": warm, "runs": len(elapsed)}
        for key, value in flatten(result, bk).items():
            leaves.setdefault(key, {})[bk.name] = value
    if len(errors) == len(bks):
        raise first_exc  # type: ignore[misc]
    ran = [n for n in names if n not in errors]
    reference = ran[0]
    rows = []
    for key, per_backend in leaves.items():
        values = {b: per_backend.get(b, _MISSING) for b in ran}
        rows.append(
            _compare(
                key,
                values,
                reference,
                rtol=rtol,
                atol=atol,
                int_tol=int_tol,
                informational=tuple(informational),
            )
        )
    label = title if title is not None else getattr(fn, "__qualname__", repr(fn))
    return ValidationReport(
        backends=(reference, *[n for n in names if n != reference]),
        rows=tuple(rows),
        times=times,
        rtol=rtol,
        atol=atol,
        int_tol=int_tol,
        title=label,
        errors=errors,
        results=results,
    )
