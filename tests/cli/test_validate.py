"""``multireg validate`` (multireg.cli.validate): a computing command run on every backend and
compared by multireg.validate, which takes the callable the command line builds."""

from __future__ import annotations

import os

import numpy as np
import pytest

from multireg import cli
from multireg.cli import validate as cli_validate
from multireg.cli.validate import run_command
from multireg.optimize import Status
from multireg.workflow.demo import affine_pair
from tests.cli._helpers import (
    _digests,
    _inputs,
    _one_line_error,
    _run,
)
from tests.conftest import AD_BACKENDS, BACKENDS

pytestmark = pytest.mark.skipif(not AD_BACKENDS, reason="the commands need torch or JAX")


def test_validate_report_obeys_the_output_rules(data, tmp_path, capsys, monkeypatch):
    """--report FILE: never over an input (even a read-only one), never over an existing file
    without --overwrite, never through a symbolic link, checked before any work."""
    calls = []

    def register(args, backend=None):  # the command, cheaply: validate's wiring is tested
        calls.append(backend)
        return cli.CommandResult({"objective": 1.0, "iterations": 1}, info={}), Status.CONVERGED

    monkeypatch.setitem(cli.COMMANDS, "register", register)
    T, R = _inputs(data, tmp_path)
    R.chmod(0o444)
    existing = tmp_path / "existing.md"
    existing.write_text("keep me")
    target = tmp_path / "target.md"
    target.write_text("precious")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    (tmp_path / "file").write_text("a file")
    digests = _digests(T, R)
    base = ("validate", "register", T, R, "--levels", "1", "-q")
    for report, message in (
        (R, "over an input"),
        (existing, "--overwrite"),
        (link, "--overwrite"),
        (tmp_path / "file" / "report.md", "file"),
    ):
        code, _, err = _run(capsys, *base, "--report", report)
        assert code == 2, (report, err)
        assert message in _one_line_error(err) and str(report.parent) in err
    assert calls == []  # refused before any work
    code, _, err = _run(capsys, *base, "--report", R, "--overwrite")  # an input, even so
    assert code == 2 and "over an input" in _one_line_error(err)
    assert _digests(T, R) == digests and existing.read_text() == "keep me"
    code, _, err = _run(capsys, *base, "--report", link, "--overwrite")
    assert code == 0, err
    assert target.read_text() == "precious" and not link.is_symlink()
    assert "| " in link.read_text()
    code, _, err = _run(capsys, "validate", "--overwrite", "--report", existing, *base[1:])
    assert code == 0, err
    assert existing.read_text().startswith(link.read_text()[:20]) and "| " in existing.read_text()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporaries left
    assert _digests(T, R) == digests


def test_validate_compares_the_backends(data, tmp_path, capsys):
    if len(AD_BACKENDS) < 2:
        pytest.skip("needs two differentiating backends")
    argv = ("validate", "register", data["T.npy"], data["R.npy"], "--transform",
            "translation", "--levels", "1", "-q")  # fmt: skip
    code, stdout, err = _run(capsys, *argv, "--rtol", "1e-6")
    assert code == 0, err
    assert all(name in stdout for name in AD_BACKENDS) and "parameters" in stdout
    code, _, err = _run(capsys, *argv, "--rtol", "1e-300")
    assert code == 4 and "disagree" in err


# ------------------------------------------------------------------ run_command

TWO = BACKENDS[:2]


def test_run_command_runs_a_cli_command_per_backend(monkeypatch, tmp_path):
    if len(TWO) < 2:
        pytest.skip("needs two installed backends")
    seen = []

    def parse_validated(argv):
        assert argv[0] == "fake"
        return "fake", {"scale": float(argv[1])}

    def run_fake(namespace, backend):
        seen.append(backend)
        value = namespace["scale"] * (1.0 if backend == TWO[0] else 1.5)
        return {"parameters": np.array([value, 2.0]), "iterations": 4}, Status.CONVERGED

    monkeypatch.setattr(cli_validate, "parse_validated", parse_validated)
    monkeypatch.setattr(cli_validate, "COMMANDS", {"fake": run_fake})
    lines = []
    report = run_command(["fake", "2"], backends=TWO, out=lines.append)
    assert seen == list(TWO)
    assert not report.ok and report.worst.name == "parameters"
    assert report["status"].kind == "enum" and report["iterations"].abs_diff == 0
    assert lines and "parameters" in lines[0] and "fake 2" in lines[0]
    out = tmp_path / "table.md"
    run_command(["fake", "0"], backends=TWO, out=out)  # 0 * anything agrees
    assert "PASS" in out.read_text()
    with pytest.raises(ValueError, match="cannot be validated"):
        monkeypatch.setattr(cli_validate, "parse_validated", lambda argv: ("demo", {}))
        run_command(["demo"], backends=TWO)
    with pytest.raises(TypeError, match="argv"):
        run_command("register T.png R.png")


@pytest.mark.parametrize("argv", [["demo"], ["apply", "out"], ["validate", "register", "a"]])
def test_run_command_refuses_a_command_that_does_not_compute(argv):
    with pytest.raises(ValueError, match=r"cannot be validated.*register, homotopy"):
        run_command(argv, backends=AD_BACKENDS[:1])


@pytest.mark.parametrize(
    "argv",
    [
        ["register", "T.npy", "R.npy", "--transform", "affine", "--levels", "2"],
        ["homotopy", "T.npy", "R.npy", "--n-steps", "5"],
        ["superres", "--synthetic", "--max-iter", "3"],
        ["dynamics", "--phantom", "--init", "identity"],
    ],
)
def test_the_validated_command_is_parsed_as_the_command_line_parses_it(argv):
    """validate parses the inner command with the command's own parser (not the whole command
    line's, which holds validate itself): the same namespace, the same usage errors."""
    assert vars(cli_validate.parse_validated(argv)[1]) == vars(cli.parse_command(argv)[1])
    for wrong in ([*argv, "--no-such-option"], [argv[0], "--max-iter", "-1"]):
        with pytest.raises(cli.UsageError) as expected:
            cli.parse_command(wrong)
        with pytest.raises(cli.UsageError) as got:
            cli_validate.parse_validated(wrong)
        assert str(got.value) == str(expected.value)
        assert f"'multireg {argv[0]} --help'" in str(got.value)


def test_run_command_validates_a_real_registration(tmp_path):
    """The real command line on two .npy images, on every AD backend."""
    if len(AD_BACKENDS) < 2:
        pytest.skip("needs torch and JAX")
    T, R, _ = affine_pair((32, 28))
    np.save(tmp_path / "T.npy", T)
    np.save(tmp_path / "R.npy", R + 0.01 * np.random.default_rng(1).normal(size=R.shape))
    argv = ["register", str(tmp_path / "T.npy"), str(tmp_path / "R.npy"),
            "--transform", "affine", "--levels", "2"]  # fmt: skip
    report = run_command(argv, backends=AD_BACKENDS)
    assert report.ok, report.table()
    names = {r.name for r in report.rows}
    assert "parameters" in names and "iterations" in names and "status" in names
    assert report["parameters"].diff < 1e-10
