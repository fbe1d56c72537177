"""The benchmark report: fake bench scripts (the real benchmarks never run in tests)."""

from __future__ import annotations

import importlib.util
import os
import re
import textwrap
import time
from pathlib import Path

import pytest

from multireg.workflow import report

GOOD = """
import sys
from pathlib import Path
out = Path(__file__).resolve().parent / "out"
out.mkdir(exist_ok=True)
args = " ".join(sys.argv[1:]) or "none"  # --quick
(out / "good.md").write_text(
    "# Good benchmark\\n\\nargs: " + args + "\\n\\n| size | time |\\n|---|---|\\n| 64 | 1 ms |\\n"
    "\\n## Details\\n\\n```\\n# not a heading\\n```\\n"
)
print("good done")
"""
BAD = """
import sys
print("started the bad benchmark")
print("Traceback: something broke", file=sys.stderr)
sys.exit(3)
"""
PLAIN = """
print("| a | b |")
print("|---|---|")
print("| 1 | 2 |")
"""
SLOW = """
import time
time.sleep(30)
"""


def titles(markdown: str) -> list[str]:
    """Level-1 headings outside code fences."""
    out, fenced = [], False
    for line in markdown.splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("# "):
            out.append(line)
    return out


def make_bench(tmp_path: Path, **scripts: str) -> Path:
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "_harness.py").write_text("# helper, not a benchmark\n")
    for name, text in scripts.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return folder


def test_report_collects_tables_and_reports_failures(tmp_path):
    folder = make_bench(tmp_path, good=GOOD, bad=BAD, plain=PLAIN)
    (folder / "out").mkdir()
    stale = folder / "out" / "bad.md"
    stale.write_text("# Bad benchmark\n\n| stale | table |\n")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    path = report.write_bench_report(
        tmp_path / "REPORT.md", bench_dir=folder, quick=True, quiet=True
    )
    assert path == tmp_path / "REPORT.md"
    text = path.read_text()
    # one title; the header names the machine and the software
    assert titles(text) == ["# multireg benchmark report"]
    for key in ("CPU", "cores", "memory", "load average", "Python", "NumPy", "torch", "JAX"):
        assert f"| {key}" in text
    assert "--quick" in text
    # contents link to the sections, scripts in name order (none of them is in ORDER)
    toc = re.findall(r"^- \[(.+?)\]\(#(.+?)\): (.+)$", text, flags=re.M)
    assert [t[0].split(":")[0] for t in toc] == ["1. bad", "2. good", "3. plain"]
    for heading, anchor, _ in toc:
        assert f"## {heading}" in text
        assert anchor == report._slug(heading)
    statuses = {t[0].split(":")[0]: t[2] for t in toc}
    assert statuses == {"1. bad": "failed (exit code 3)", "2. good": "ok", "3. plain": "no table"}
    # the good table, its headings one level down, fenced text untouched, quick option passed
    assert "| 64 | 1 ms |" in text and "args: --quick" in text
    assert "### Details" in text and "\n# not a heading\n" in text
    # the failure is reported with its output; the stale table is not passed off as a result
    assert "something broke" in text and "started the bad benchmark" in text
    assert "| stale | table |" not in text
    # a script that printed a table but wrote none: its output is kept
    assert "wrote no table" in text and "| 1 | 2 |" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_assemble_without_running(tmp_path):
    folder = make_bench(tmp_path, good=GOOD, other="raise SystemExit(1)\n")
    (folder / "out").mkdir()
    (folder / "out" / "good.md").write_text("# Good benchmark\n\n| x |\n|---|\n| 1 |\n")
    path = report.write_bench_report(bench_dir=folder, run=False, quiet=True)
    assert path == folder / "out" / "REPORT.md"
    text = path.read_text()
    assert "assembled from the tables already in bench/out/" in text
    assert "| 1 |" in text
    assert "No table yet: run `python bench/other.py`" in text


def test_scripts_option_and_order(tmp_path):
    folder = make_bench(tmp_path, good=GOOD, bad=BAD, kernels=GOOD.replace("good", "kernels"))
    assert report._scripts(folder, None) == ["kernels", "bad", "good"]
    path = report.write_bench_report(
        tmp_path / "r.md", bench_dir=folder, scripts=["good.py"], quiet=True
    )
    text = path.read_text()
    assert "1. good" in text and "bad" not in text and "args: none" in text
    with pytest.raises(ValueError, match="no bench script 'nope'"):
        report.write_bench_report(tmp_path / "r.md", bench_dir=folder, scripts=["nope"])
    with pytest.raises(TypeError, match="scripts"):
        report.write_bench_report(tmp_path / "r.md", bench_dir=folder, scripts="good")


def test_timeout_is_reported(tmp_path):
    folder = make_bench(tmp_path, slow=SLOW)
    path = report.write_bench_report(tmp_path / "r.md", bench_dir=folder, timeout=0.5, quiet=True)
    assert "timed out" in path.read_text()


def test_bad_paths(tmp_path, monkeypatch):
    folder = make_bench(tmp_path, good=GOOD)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.write_bench_report(tmp_path / "no" / "r.md", bench_dir=folder, quiet=True)
    with pytest.raises(IsADirectoryError):
        report.write_bench_report(tmp_path, bench_dir=folder, quiet=True)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        report.write_bench_report(bench_dir=tmp_path / "nothing")
    with pytest.raises(ValueError, match="timeout"):
        report.write_bench_report(tmp_path / "r.md", bench_dir=folder, timeout=0)
    # installed without the repository, run outside a clone: no bench/ anywhere
    fake = tmp_path / "site-packages" / "multireg" / "report.py"
    monkeypatch.setattr(report, "__file__", str(fake))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="bench/ folder of a clone"):
        report.write_bench_report()


def fake_clone(tmp_path: Path) -> Path:
    """A clone of the repository, with a benchmark whose table is already written."""
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "pyproject.toml").write_text('[project]\nname = "multireg"\n')
    folder = make_bench(clone, good=GOOD)
    (folder / "out").mkdir()
    (folder / "out" / "good.md").write_text("# Good benchmark\n\n| x |\n|---|\n| 1 |\n")
    (clone / "docs").mkdir()
    return clone


def test_bench_after_a_non_editable_install_finds_the_clone(tmp_path, monkeypatch, capsys):
    """pip install ".[...]" puts the package in site-packages without bench/: multireg bench,
    run inside the clone (or a folder of it), takes the clone's scripts."""
    from multireg.__main__ import main

    clone = fake_clone(tmp_path)
    site = tmp_path / "site-packages" / "multireg" / "report.py"
    monkeypatch.setattr(report, "__file__", str(site))
    monkeypatch.chdir(clone / "docs")
    assert report.find_bench_dir() == (clone / "bench").resolve()
    assert main(["bench", "--no-run", "--quiet"]) == 0
    assert "| 1 |" in (clone / "bench" / "out" / "REPORT.md").read_text()
    # elsewhere, one line says where the scripts are
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["bench", "--no-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bench/ folder of a clone of the multireg repository" in err
    # a folder named bench in some other project is not taken for multireg's
    (clone / "pyproject.toml").write_text('[project]\nname = "other"\n')
    monkeypatch.chdir(clone)
    with pytest.raises(FileNotFoundError):
        report.find_bench_dir()


def test_the_checkout_has_its_bench_folder():
    folder = report.find_bench_dir()
    assert (folder / "_harness.py").is_file()
    assert report._scripts(folder, None)[:2] == ["kernels", "registration"]


def test_harness_refreshes_the_report(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "_harness_under_test", report.find_bench_dir() / "_harness.py"
    )
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    folder = make_bench(tmp_path, alpha="print('hi')\n", beta="print('hi')\n")
    monkeypatch.setattr(harness, "OUT", folder / "out")
    harness.write_report("alpha", "# Alpha bench\n\n| n |\n|---|\n| 7 |\n")
    assert (folder / "out" / "alpha.md").is_file()
    text = (folder / "out" / "REPORT.md").read_text()
    assert "1. alpha: Alpha bench" in text and "| 7 |" in text
    assert "No table yet: run `python bench/beta.py`" in text
    # the helpers the bench scripts use still work
    assert harness.fmt_time(2e-3) == "2.00 ms"
    assert "| a |" in harness.table([{"a": 1}], ["a"])
