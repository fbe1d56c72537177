"""The command line as a whole: help, one-line usage errors and the documented exit codes, safe
outputs, interruption, progress bars, the default backend, stdout closed by its reader."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import multireg
from multireg import cli, io
from multireg.cli import _common, main
from tests.cli._helpers import (
    FAST,
    _digests,
    _inputs,
    _into_a_closed_pipe,
    _one_line_error,
    _result,
    _run,
    _subparsers,
)
from tests.conftest import AD_BACKENDS
from tests.io.test_io import _tree

pytestmark = pytest.mark.skipif(not AD_BACKENDS, reason="the commands need torch or JAX")


def test_help_documents_every_option_and_the_exit_codes(capsys):
    parser = cli.build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {
        "register", "register-many", "homotopy", "superres", "dynamics", "demo", "validate",
        "bench", "apply", "evaluate",
    }  # fmt: skip
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
        assert "exit codes" in sub.epilog and "3 " in sub.epilog
    for flag in ("--backend", "--dtype", "--device", "--quiet", "--overwrite", "--out"):
        assert any(flag in a.option_strings for a in commands["register"]._actions), flag
    with pytest.raises(SystemExit) as exc:
        main(["register", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--transform", "--levels", "--allow-oblique", "130", "not converge"):
        assert word in text


def test_unknown_option_and_bad_values_are_one_line_usage_errors(capsys):
    code, _, err = _run(capsys, "register", "a.png", "b.png", "--frobnicate")
    assert code == 2
    assert "--frobnicate" in _one_line_error(err) and "multireg register --help" in err
    code, _, err = _run(capsys, "register", "a.png", "b.png", "--transform", "warp")
    assert code == 2 and "invalid choice" in _one_line_error(err)
    code, _, err = _run(capsys, "register", "a.png", "b.png", "--alpha", "-1")
    assert code == 2 and "positive" in _one_line_error(err)
    code, _, err = _run(capsys, "register", "a.png")
    assert code == 2 and "REFERENCE" in _one_line_error(err)


def test_progress_bars_on_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    import io as stdio

    class Terminal(stdio.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    domains = [multireg.Domain((0, 1, 0, 1), m) for m in ((12, 10), (24, 20))]
    progress = _common._Progress(quiet=False, total=10)
    for d in domains:
        for k in range(3):
            progress.registration("parametric", d, _Record(k, 10.0 / (k + 1)))
    progress.close()
    for k in range(2):
        progress.step("superres", _Record(k, 1.5))
    progress.close()
    text = terminal.getvalue()
    assert "parametric 12x10" in text and "parametric 24x20" in text and "2/10" in text
    assert "J=3.333" in text and "superres" in text
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    silent = _common._Progress(quiet=True, total=10)
    silent.registration("parametric", domains[0], _Record(1, 1.0))
    silent.close()
    assert quiet.getvalue() == ""


class _Record:
    def __init__(self, iteration, fun):
        self.iteration, self.fun = iteration, fun


# ---------------------------------------------------------------------------- bad input


def test_bad_inputs_exit_2_with_one_line(data, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        ((tmp_path / "missing.png", data["R.png"]), "missing.png: no such file"),
        ((data["garbage"], data["R.png"]), "garbage.png: cannot read"),
        ((data["T.png"], data["R.nii.gz"]), "shape"),  # 2D against 3D
        ((data["nan"], data["R.npy"]), "nan.npy: contains 1 NaN"),
        ((data["oblique"], data["R.nii.gz"]), "oblique"),
    ]
    for (T, R), message in cases:
        code, _, err = _run(capsys, "register", T, R, "--backend", FAST, "--out", out)
        assert code == 2, (T, R, err)
        assert message in _one_line_error(err)
    assert not out.exists()  # nothing was written
    code, _, err = _run(
        capsys, "register", data["T.npy"], data["R.npy"], "--device", "abacus", "--out", out
    )
    assert code == 2 and "abacus" in _one_line_error(err)
    code, _, err = _run(
        capsys, "register", data["T.npy"], data["R.npy"], "--transform", "nonparametric"
    )
    assert code == 2 and "--alpha" in _one_line_error(err)


def test_outputs_are_never_clobbered_nor_written_over_an_input(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("keep me")
    base = ("register", data["T.npy"], data["R.npy"], "--backend", FAST, "--out", out, "-q")
    code, _, err = _run(capsys, *base)
    assert code == 2 and "--overwrite" in _one_line_error(err)
    assert (out / "result.json").read_text() == "keep me" and not (out / "warped.npy").exists()
    reference = data["R.npy"].read_bytes()
    code, _, err = _run(capsys, *base, "--warped", data["R.npy"], "--overwrite")
    assert code == 2 and "over an input" in _one_line_error(err)
    assert data["R.npy"].read_bytes() == reference


def test_interruption_leaves_the_old_outputs_intact(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    base = ("register", data["T.png"], data["R.png"], "--transform", "translation",
            "--max-iter", "2", "--backend", FAST, "--out", out, "-q")  # fmt: skip
    assert _run(capsys, *base)[0] in (0, 3)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(old) == {"warped.png", "result.json"}

    def interrupted(tmp, *args):
        Path(tmp).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setitem(io._WRITERS, "png", interrupted)
    code, _, err = _run(capsys, *base, "--overwrite")
    assert code == 130 and "interrupted" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # no temp file either


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_run_leaves_nothing_of_itself(data, tmp_path, capsys, monkeypatch, existing):
    """Ctrl-C while the outputs are written: all of the run's outputs or none of them."""
    T, R = _inputs(data, tmp_path)
    out = tmp_path / "runs" / "out"
    base = ("register", T, R, "--transform", "translation", "--levels", "1", "--max-iter", "3",
            "--backend", FAST, "--out", out, "-q")  # fmt: skip
    if existing:  # an earlier run's complete outputs, to be replaced with --overwrite
        assert _run(capsys, *base)[0] in (0, 3)
        assert sorted(os.listdir(out)) == ["result.json", "warped.npy"]
    before, digests = _tree(tmp_path), _digests(T, R)

    def interrupted(*args, **kwargs):  # warped.npy is written, result.json is next
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "write_json", interrupted)
    # fewer iterations than the earlier run: a new warped.npy would differ from the old one
    code, _, err = _run(capsys, *base, "--max-iter", "1", "--overwrite")
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert _tree(tmp_path) == before  # not one file of the run, not one temporary
    assert _digests(T, R) == digests


def test_a_killed_run_s_temporaries_are_removed_by_the_next_run(data, tmp_path, capsys):
    """kill -9 while writing leaves recognisable temporaries; the next run removes them, and
    nothing else."""
    T, R = _inputs(data, tmp_path)
    out = tmp_path / "out"
    argv = ["register", str(T), str(R), "--transform", "translation", "--levels", "1",
            "--max-iter", "2", "--backend", FAST, "--out", str(out), "-q"]  # fmt: skip
    code = f"""
        import os, signal
        from multireg import cli, io
        def killed(*args, **kwargs):
            print(os.getpid(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        io.write_json = killed  # after warped.npy, before result.json
        cli.main({argv!r})
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env
    )
    assert done.returncode == -9, done.stderr
    pid = int(done.stdout)
    left = sorted(set(os.listdir(tmp_path)) - {"in"})
    assert not out.exists() and left, left
    assert all(re.match(rf"\.multireg-tmp-{pid}-[0-9a-f]{{8}}-", name) for name in left), left
    decoys = [".multireg-tmp-notapid-out", ".out.tmp", "multireg-tmp-1-out"]
    for name in decoys:
        (tmp_path / name).write_text("not multireg's to remove")
    code, _, err = _run(capsys, *argv)
    assert code in (0, 3), err
    assert sorted(os.listdir(tmp_path)) == sorted(["in", "out", *decoys])
    assert sorted(os.listdir(out)) == ["result.json", "warped.npy"]


def test_an_unwritable_out_is_reported_before_any_work(
    data, tmp_path, capsys, monkeypatch, unwritable_folder
):
    calls = []

    def register(args, backend=None):
        calls.append(args)
        raise AssertionError("computed before checking the outputs")

    monkeypatch.setitem(cli.COMMANDS, "register", register)
    (tmp_path / "file").write_text("a file")
    before, digests = _tree(tmp_path), _digests(data["T.npy"], data["R.npy"])
    base = ("register", data["T.npy"], data["R.npy"], "--backend", FAST, "-q")
    cases = [
        (("--out", tmp_path / "file" / "out"), tmp_path / "file" / "out"),  # under a file
        (("--out", tmp_path / "file"), tmp_path / "file"),  # a file
        (("--out", unwritable_folder), unwritable_folder),  # read-only
        (("--out", unwritable_folder / "new" / "out"), unwritable_folder / "new" / "out"),
        (("--out", tmp_path / "ok", "--warped", tmp_path / "file" / "w.npy"), tmp_path / "file"),
    ]
    for options, named in cases:
        code, _, err = _run(capsys, *base, *options)
        assert code == 2, (options, err)
        assert str(named) in _one_line_error(err), (options, err)
    assert calls == []
    assert _tree(tmp_path) == before and _digests(data["T.npy"], data["R.npy"]) == digests


def test_backend_choices_offer_only_what_works(data, capsys):
    """Every command computes with derivatives: a backend without them is not offered."""
    commands = _subparsers(cli.build_parser())
    for name in ("register", "homotopy", "superres", "dynamics", "demo"):
        (action,) = [a for a in commands[name]._actions if "--backend" in a.option_strings]
        assert set(action.choices) >= set(AD_BACKENDS) and "numpy" not in action.choices, name
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    assert "numpy" not in capsys.readouterr().out
    code, _, err = _run(capsys, "register", data["T.npy"], data["R.npy"], "--backend", "numpy")
    assert code == 2 and "invalid choice: 'numpy'" in _one_line_error(err)
    argv = ("validate", "--backends", "torch,numpy", "register", data["T.npy"], data["R.npy"])
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "--backends: cannot validate on 'numpy'" in _one_line_error(err)


def test_unexpected_error_exits_1_and_debug_shows_the_traceback(data, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(multireg, "register", broken)
    argv = ("register", data["T.npy"], data["R.npy"], "--backend", FAST, "--out", "unused")
    code, _, err = _run(capsys, *argv)
    assert code == 1 and "boom" in _one_line_error(err) and "--debug" in err
    code, _, err = _run(capsys, *argv, "--debug")
    assert code == 1 and "Traceback" in err and "RuntimeError: boom" in err


def test_bench_and_demo_are_wired(tmp_path, capsys, monkeypatch):
    report = pytest.importorskip("multireg.workflow.report")
    demo = pytest.importorskip("multireg.workflow.demo")
    calls = {}

    def fake_report(path=None, *, quick=False, scripts=None, **kw):
        calls["bench"] = (path, quick, scripts)
        Path(path).write_text("# report")
        return Path(path)

    def fake_demo(backends=None, out=None, quiet=False):
        calls["demo"] = (backends, out, quiet)
        return Path(out)

    monkeypatch.setattr(report, "write_bench_report", fake_report)
    monkeypatch.setattr(demo, "run", fake_demo)
    target = tmp_path / "REPORT.md"
    code, stdout, _ = _run(capsys, "bench", "--quick", "--scripts", "kernels", "--out", target)
    assert code == 0 and calls["bench"] == (target, True, ["kernels"]) and str(target) in stdout
    code, _, err = _run(capsys, "bench", "--out", target)
    assert code == 2 and "--overwrite" in _one_line_error(err)
    calls.clear()
    code, _, err = _run(capsys, "bench", "--out", target / "REPORT.md")  # under a file
    assert code == 2 and str(target) in _one_line_error(err) and "bench" not in calls
    code, _, _ = _run(capsys, "demo", "--backend", FAST, "--out", tmp_path / "d", "-q")
    assert code == 0 and calls["demo"] == ([FAST], tmp_path / "d", True)


# ---------------------------------------------------------------------------- console script


def test_console_script_end_to_end(data, tmp_path):
    script = shutil.which("multireg", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the multireg console script is not installed")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run(
        [script, "register", data["T.npy"], data["R.npy"], "--backend", FAST, "--out", out],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "status converged" in ok.stdout and (out / "warped.npy").exists()
    bad = subprocess.run(
        [script, "register", tmp_path / "nope.npy", data["R.npy"], "--out", out],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("multireg: error: ") and "nope.npy" in bad.stderr


def test_a_closed_stdout_stops_quietly(data, tmp_path):
    out = tmp_path / "out"
    run = _into_a_closed_pipe("register", data["T.npy"], data["R.npy"], "--transform",
                              "translation", "--levels", "1", "--backend", FAST, "--out", out,
                              tmp_path=tmp_path)  # fmt: skip
    assert (run.returncode, run.stderr) == (cli.EXIT_STDOUT_CLOSED, "")
    assert sorted(os.listdir(out)) == ["result.json", "warped.npy"]  # written before the summary
    run = _into_a_closed_pipe("register", "--help", tmp_path=tmp_path)
    assert (run.returncode, run.stderr) == (0, "")  # argparse ignores a failed write of its help


def test_a_broken_pipe_elsewhere_is_still_an_error(data, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):  # a worker's or a socket's pipe, not stdout's
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "stdout_closed", lambda: False)
    monkeypatch.setattr(multireg, "register", broken)
    code, _, err = _run(capsys, "register", data["T.npy"], data["R.npy"], "--out", tmp_path)
    assert code == cli.EXIT_ERROR and "BrokenPipeError" in _one_line_error(err)


def test_an_interrupt_before_the_command_line_handler_exits_130(monkeypatch, capsys):
    import multireg.__main__ as entry

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    assert entry.main(["register", "a.npy", "b.npy"]) == 130
    assert "interrupted" in capsys.readouterr().err


# ---------------------------------------------------------------------------- default backend


def test_the_cli_default_backend_is_the_documented_one(data, tmp_path, capsys, monkeypatch):
    """Without --backend and MULTIREG_BACKEND a command runs on the first installed of
    CLI_BACKEND_PREFERENCE (torch: faster for a one-off process, issue 13), as --help says;
    MULTIREG_BACKEND and --backend override it."""
    monkeypatch.delenv("MULTIREG_BACKEND", raising=False)
    installed = [n for n in cli.CLI_BACKEND_PREFERENCE if n in AD_BACKENDS]
    expected = installed[0]
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"else the first installed of {', '.join(cli.CLI_BACKEND_PREFERENCE)}" in text
    assert cli.CLI_BACKEND_PREFERENCE[0] == "torch" and "API's default stays JAX" in text
    out = tmp_path / "default"
    code, _, err = _run(capsys, "register", data["T.npy"], data["R.npy"], "--transform",
                        "translation", "--out", out, "-q")  # fmt: skip
    assert code in (0, 3), err
    assert _result(out)["backend"] == expected
    if len(installed) < 2:
        return
    other = installed[1]
    _, args = cli.parse_command(["register", "a.npy", "b.npy"])
    monkeypatch.setenv("MULTIREG_BACKEND", other)
    assert _common._backend(None, args).name == other
    monkeypatch.setenv("MULTIREG_BACKEND", expected)
    _, args = cli.parse_command(["register", "a.npy", "b.npy", "--backend", other])
    assert _common._backend(None, args).name == other
