"""The bad-input audit (``python -m multireg.testing.audit``, issue 12).

Two halves: the harness must classify deliberately broken cases correctly (a case that damages
its input is DATA LOSS, one that prints a traceback is TRACEBACK, ...), and the library must pass
the quick audit's API cases and a few command-line cases.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

from multireg.testing import audit
from multireg.testing.audit import Case
from tests.conftest import AD_BACKENDS


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    backend = "torch" if "torch" in AD_BACKENDS else (AD_BACKENDS or ["numpy"])[0]
    return audit.Context(tmp_path_factory.mktemp("audit"), backend)


def _py(name: str, code: str, expect: str = "error", **kw) -> Case:
    """A fake command-line case: ``python -c code`` stands in for ``python -m multireg``."""
    return Case(name, "cli", expect, argv=(code,), prefix=("-c",), **kw)


def _verdict(ctx, case: Case) -> audit.Outcome:
    return audit.run_case(ctx, case)


# ------------------------------------------------------------- the harness classifies right

_SAY = "import sys; print('multireg: error: --levels 0: must be positive', file=sys.stderr); "
_CLEAN_ERROR = _SAY + "sys.exit(2)"
_ERROR_AND_FILE = _SAY + "open('w.npy', 'w'); sys.exit(2)"
_TWO_LINES = _SAY + "print('more', file=sys.stderr); sys.exit(2)"


@pytest.mark.parametrize(
    ("case", "verdict"),
    [
        (_py("fake-clean-error", _CLEAN_ERROR, mentions=("levels",)), "ok"),
        (_py("fake-damages-input", "open(r'{i}/T.npy', 'ab').write(b'x')"), "DATA LOSS"),
        (_py("fake-deletes-input", "import os; os.remove(r'{i}/R.npy')"), "DATA LOSS"),
        (_py("fake-traceback", "raise RuntimeError('boom')"), "TRACEBACK"),
        (_py("fake-exit-1", "import sys; sys.exit(1)"), "TRACEBACK"),
        (_py("fake-stray-temp", "open('.warped.npy.tmp', 'w')", "success"), "PARTIAL OUTPUT"),
        (
            _py("fake-missing-output", "open('result.json', 'w')", "success",
                outputs=("result.json", "warped.npy")),
            "PARTIAL OUTPUT",
        ),
        (
            _py("fake-output-on-error", _ERROR_AND_FILE, mentions=("levels",)),
            "PARTIAL OUTPUT",
        ),
        (_py("fake-success-on-bad-input", "pass"), "WRONG VERDICT"),
        (_py("fake-error-on-good-input", _CLEAN_ERROR, "success"), "WRONG VERDICT"),
        (_py("fake-exit-3", "import sys; sys.exit(3)", "success"), "WRONG VERDICT"),
        (
            _py("fake-wrong-result", "pass", "success", check=lambda c, f, out: "not the identity"),
            "WRONG VERDICT",
        ),
        (_py("fake-vague-error", _CLEAN_ERROR, mentions=("alpha",)), "POOR ERROR"),
        (
            _py("fake-two-line-error", _TWO_LINES, mentions=("levels",)),
            "POOR ERROR",
        ),
    ],
    ids=lambda v: v.name if isinstance(v, Case) else v,
)  # fmt: skip
def test_harness_classifies_command_line_cases(ctx, case, verdict):
    outcome = _verdict(ctx, case)
    assert outcome.verdict == verdict, outcome.problems


def test_data_loss_is_reported_with_both_hashes_and_the_inputs_restored(ctx):
    damaged = _verdict(ctx, _py("fake-damages-T", "open(r'{i}/T.npy', 'ab').write(b'x')"))
    before, after = damaged.hashes["inputs/T.npy"]
    assert before != after and len(before) == len(after) == 64
    clean = _verdict(ctx, _py("fake-clean", _CLEAN_ERROR, mentions=("levels",)))
    assert clean.verdict == "ok", clean.problems  # the next case found its inputs intact


_HALF_WRITTEN = """
import pathlib, signal, sys, time
{on_sigint}
out = pathlib.Path('out'); out.mkdir()
(out / 'a.npy').write_text('a')
time.sleep(60)
(out / 'b.npy').write_text('b')
"""
_LEAVE_IT = "signal.signal(signal.SIGINT, lambda *a: sys.exit(130))"
_ROLL_BACK = (
    "signal.signal(signal.SIGINT, lambda *a: (pathlib.Path('out/a.npy').unlink(), "
    "print('interrupted; nothing written', file=sys.stderr), sys.exit(130)))"
)


@pytest.mark.parametrize(
    ("on_sigint", "verdict"), [(_LEAVE_IT, "PARTIAL OUTPUT"), (_ROLL_BACK, "ok")]
)
def test_interrupt_must_leave_all_outputs_or_none(ctx, on_sigint, verdict):
    code = _HALF_WRITTEN.format(on_sigint=on_sigint)
    case = _py(f"fake-sigint-{verdict[:2]}", code, "interrupt", outputs=("out/a.npy", "out/b.npy"),
               interrupt=(signal.SIGINT, "write"), timeout=60)  # fmt: skip
    outcome = _verdict(ctx, case)
    assert outcome.exit == "130"
    assert outcome.verdict == verdict, outcome.problems


_KILLED_THEN_RERUN = """
import os, pathlib, sys, time
if os.path.exists('.w.tmp'):  # the rerun finishes, but leaves the killed run's temporary
    pathlib.Path('a.npy').write_text('a'); sys.exit(0)
pathlib.Path('.w.tmp').write_text('x')
time.sleep(60)
"""


def test_kill_then_rerun_that_leaves_a_stale_temporary_is_partial_output(ctx):
    case = _py("fake-kill9", _KILLED_THEN_RERUN, "success", outputs=("a.npy",),
               interrupt=(signal.SIGKILL, "write"), rerun=True, timeout=60)  # fmt: skip
    outcome = _verdict(ctx, case)
    assert outcome.exit == "0"
    assert outcome.verdict == "PARTIAL OUTPUT", outcome.problems
    assert any(".w.tmp" in p for p in outcome.problems)


def _modifies_its_input(c, folder):
    T = c.array("T.npy")
    T[0, 0] += 1.0


def _fails_after_work(c, folder):
    from multireg.optimize import _loop

    _loop.axpy(1.0, 2.0, 3.0)  # an optimiser's step: work has started
    raise ValueError("levels must be positive")


def _raise(exc):
    def call(c, folder):
        raise exc

    return call


@pytest.mark.parametrize(
    ("name", "call", "expect", "verdict"),
    [
        ("clear-error", _raise(ValueError("levels must be positive")), "error", "ok"),
        ("in-place", _modifies_its_input, "success", "DATA LOSS"),
        ("runtime-error", _raise(RuntimeError("levels")), "error", "TRACEBACK"),
        ("index-error", _raise(IndexError("levels")), "error", "TRACEBACK"),
        ("numpy-error", lambda c, f: np.ptp(np.array([True, False])), "error", "TRACEBACK"),
        ("returns-on-bad-input", lambda c, f: None, "error", "WRONG VERDICT"),
        ("raises-on-good-input", _raise(ValueError("levels")), "success", "WRONG VERDICT"),
        ("vague-error", _raise(ValueError("something is off")), "error", "POOR ERROR"),
        ("error-after-work", _fails_after_work, "error", "POOR ERROR"),
        ("error-before-work", _raise(ValueError("levels must be positive")), "error", "ok"),
    ],
)
def test_harness_classifies_api_cases(ctx, name, call, expect, verdict):
    case = Case(f"fake-api-{name}", "api", expect, call=call, mentions=("levels",), fast=1.0)
    outcome = _verdict(ctx, case)
    assert outcome.verdict == verdict, outcome.problems


def test_case_list_covers_both_sides():
    every = audit.cases()
    quick = audit.cases(quick=True)
    names = [c.name for c in every]
    assert len(every) >= 60 and len(set(names)) == len(names)
    assert {c.kind for c in quick} == {"api", "cli"}
    assert {c.name for c in quick} < set(names)


def test_out_file_obeys_the_output_rules(tmp_path, capsys):
    report = tmp_path / "audit.md"
    report.write_text("keep me\n")
    assert audit.main(["--cases", "cli-help", "--out", str(report)]) == 2
    assert report.read_text() == "keep me\n"
    assert "exists" in capsys.readouterr().err


# ------------------------------------------------------------------- the library passes it

_needs_ad = pytest.mark.skipif(not AD_BACKENDS, reason="needs a differentiating backend")

_QUICK_API = audit.cases(quick=True, cli=False)
_SOME_CLI = [
    c
    for c in audit.cases(quick=True, api=False)
    if c.name
    in (
        "cli-help-bad-env",
        "cli-import-bad-env",
        "cli-unknown-option",
        "cli-existing-outputs",
        "cli-validate-report-over-input",
    )
]


@_needs_ad
@pytest.mark.parametrize("case", _QUICK_API, ids=lambda c: c.name)
def test_quick_api_case(ctx, case):
    if "torch" in case.needs and ctx.backend != "torch":
        pytest.skip("a torch-tensor case")
    ctx.warm()
    outcome = _verdict(ctx, case)
    assert outcome.verdict == "ok", (outcome.error, outcome.problems)


@_needs_ad
@pytest.mark.parametrize("case", _SOME_CLI, ids=lambda c: c.name)
def test_command_line_case(ctx, case):
    outcome = _verdict(ctx, case)
    assert outcome.verdict == "ok", (outcome.error, outcome.problems)


@pytest.mark.parametrize(
    ("message", "verdict"),
    [("T contains NaN or Inf", "ok"), ("j_stop must be finite, got inf", "POOR ERROR")],
)
def test_a_short_argument_name_must_appear_as_a_word(ctx, message, verdict):
    case = Case(
        "fake-api-names-T", "api", "error", call=_raise(ValueError(message)), mentions=("T",)
    )
    assert _verdict(ctx, case).verdict == verdict
