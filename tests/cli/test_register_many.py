"""``multireg register-many`` (multireg.cli.register_many)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import multireg.workflow.many
from multireg import cli
from multireg.cli import main
from tests.cli._helpers import (
    FAST,
    _capture_register,
    _into_a_closed_pipe,
    _manifest,
    _one_line_error,
    _result,
    _run,
    _subparsers,
    _summary_csv,
)
from tests.conftest import AD_BACKENDS

pytestmark = pytest.mark.skipif(not AD_BACKENDS, reason="the commands need torch or JAX")


def test_fair_exact_options_reach_register_many(tmp_path, capsys, monkeypatch):
    import concurrent.futures as cf

    from multireg.distances import MIGaussNewton

    monkeypatch.setattr(
        multireg.workflow.many, "_default_executor", lambda n: cf.ThreadPoolExecutor(n)
    )
    calls = _capture_register(monkeypatch)
    manifest = _manifest(tmp_path, n=1)
    code, _, err = _run(
        capsys, "register-many", manifest, "--transform", "nonparametric", "--alpha", "1",
        "--distance", "mi-gn", "--fair-compat", "--linear-solver", "direct",
        "--prolongation", "constant", "--det-method", "fair", "--backend", FAST,
        "--workers", "1", "--out", tmp_path / "out", "--quiet",
    )  # fmt: skip
    assert code == cli.EXIT_PAIRS_FAILED, err
    assert "recorded" in (tmp_path / "out" / "summary.csv").read_text()
    (kwargs,) = calls
    assert isinstance(kwargs["distance"], MIGaussNewton)
    assert kwargs["distance"] == MIGaussNewton()  # FAIR's bins and ranges: the class defaults
    assert (kwargs["fair_compat"], kwargs["linear_solver"]) == (True, "direct")
    assert (kwargs["prolongation"], kwargs["det_method"]) == ("constant", "fair")


@pytest.mark.slow
def test_register_many_into_a_closed_stdout_finishes_every_pair(tmp_path):
    """A batch is not cancelled because the reader of its progress lines left."""
    manifest = _manifest(tmp_path, n=2)
    run = _into_a_closed_pipe("register-many", manifest, "--transform", "translation",
                              "--levels", "1", "--backend", FAST, "--workers", "1",
                              "--out", tmp_path / "out", tmp_path=tmp_path)  # fmt: skip
    assert (run.returncode, run.stderr) == (cli.EXIT_OK, "")
    rows = _summary_csv(tmp_path / "out" / "summary.csv")
    assert [r["status"] for r in rows] == ["converged", "converged"]
    assert all((tmp_path / "out" / r["id"] / "result.json").exists() for r in rows)


def test_register_many_shares_register_s_options_and_documents_exit_5(capsys):
    commands = _subparsers(cli.build_parser())
    dests = {
        name: {a.dest for g in sub._action_groups if g.title in ("model", "solver")
               for a in g._group_actions}
        for name, sub in commands.items() if name in ("register", "register-many")
    }  # fmt: skip
    assert dests["register"] and dests["register"] == dests["register-many"]
    with pytest.raises(SystemExit):
        main(["register-many", "--help"])
    text = capsys.readouterr().out
    for word in ("summary.csv", "--scheduler", "--workers", "template_labels", "5 ", "Ctrl-C"):
        assert word in text, word
    flat = " ".join(text.split())
    for words in (
        "result.json",
        "displacement.npz",
        "a pair already running on a Dask worker "
        "cannot be stopped from here: it may still complete and write its folder",
    ):
        assert words in flat, words  # fmt: skip


def test_register_many_writes_each_pair_and_a_summary(tmp_path, capsys, monkeypatch):
    import concurrent.futures as cf

    import multireg.workflow.many

    # threads instead of spawned processes: this test is about the command, not the pool (the
    # process pool is exercised by the Ctrl-C test below and in test_many.py)
    monkeypatch.setattr(
        multireg.workflow.many, "_default_executor", lambda n: cf.ThreadPoolExecutor(n)
    )
    manifest = _manifest(tmp_path, bad=True, labels=True)
    out = tmp_path / "out"
    argv = ["register-many", manifest, "--transform", "translation", "--levels", "1",
            "--backend", FAST, "--workers", "1", "--out", out]  # fmt: skip
    code, stdout, err = _run(capsys, *argv)
    assert code == cli.EXIT_PAIRS_FAILED, err  # one pair failed: the others are written
    rows = {r["id"]: r for r in _summary_csv(out / "summary.csv")}
    assert sorted(rows) == ["s0", "s1", "s2"]
    assert rows["s1"]["status"] == "failed" and "NaN" in rows["s1"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["s0", "s2", "summary.csv"]
    assert len([line for line in stdout.splitlines() if line.startswith("[")]) == 3
    assert "1 of 3 pairs failed" in err
    for i in (0, 2):  # the same numbers as one `register` call per pair
        T, R = (np.load(tmp_path / f"{k}{i}.npy") for k in "TR")
        ref = multireg.register(T, R, (0, 24, 0, 24), transform="translation", levels=None,
                                backend=FAST)  # fmt: skip
        row = rows[f"s{i}"]
        assert row["status"] == ref.status.value and row["backend"] == FAST
        assert float(row["distance"]) == pytest.approx(ref.distance, rel=1e-8)
        warped = np.load(out / f"s{i}" / "warped.npy")
        np.testing.assert_allclose(warped, multireg.get_backend(FAST).to_numpy(ref.warped),
                                   rtol=0, atol=1e-12)  # fmt: skip
        assert float(row["dice"]) > float(row["dice_before"])  # the labels moved into place
    # an existing summary is not replaced without --overwrite, before any work
    code, _, err = _run(capsys, *argv)
    assert code == 2 and "--overwrite" in _one_line_error(err)


def test_register_many_bad_manifest_fails_before_any_work(tmp_path, capsys, monkeypatch):

    def no_work(*args, **kwargs):
        raise AssertionError("register_many was called")

    monkeypatch.setattr(multireg.workflow.many, "register_many", no_work)
    manifest = _manifest(tmp_path, n=2)
    out = tmp_path / "out"

    def error_of(text: str, *extra) -> str:
        path = tmp_path / "m.csv"
        path.write_text(text)
        code, _, err = _run(capsys, "register-many", path, "--out", out, *extra)
        assert code == 2 and not out.exists()
        return _one_line_error(err)

    error = error_of("")
    assert "m.csv" in error and "empty" in error
    assert "empty" in error_of("template,reference\n")
    assert "'reference'" in error_of("template,refrence\nT0.npy,R0.npy\n")
    assert "'extra'" in error_of("template,reference,extra\nT0.npy,R0.npy,1\n")
    error = error_of("template,reference\nT0.npy,R0.npy\nT1.npy,nope.npy\n")
    assert "line 3" in error and "nope.npy" in error
    assert "repeat" in error_of("template,reference,id\nT0.npy,R0.npy,a\nT1.npy,R1.npy,a\n")
    assert "folder" in error_of("template,reference,id\nT0.npy,R0.npy,../a\n")
    assert "together" in error_of("template,reference,template_labels\nT0.npy,R0.npy,T1.npy\n")
    code, _, err = _run(capsys, "register-many", tmp_path / "missing.csv", "--out", out)
    assert code == 2 and "missing.csv" in _one_line_error(err)
    code, _, err = _run(capsys, "register-many", manifest, "--workers", "1", "--scheduler", "x")
    assert code == 2 and "not allowed with" in _one_line_error(err)
    code, _, err = _run(capsys, "register-many", manifest, "--transform", "bspline", "--out", out)
    assert code == 2 and "--p" in _one_line_error(err) and not out.exists()  # not N failed rows
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "summary.csv").write_text("old")
    code, _, err = _run(capsys, "register-many", manifest, "--out", tmp_path / "o2")
    assert code == 2 and "--overwrite" in _one_line_error(err)
    assert (tmp_path / "o2" / "summary.csv").read_text() == "old"
    (tmp_path / "o2" / "s0").mkdir()  # an earlier nonparametric run's pair folder
    np.savez(tmp_path / "o2" / "s0" / "displacement.npz", displacement=np.zeros(3))
    code, _, err = _run(capsys, "register-many", manifest, "--out", tmp_path / "o2", "--overwrite")
    assert code == 2 and "displacement.npz" in _one_line_error(err)  # not a folder of two runs
    (tmp_path / "o2" / "s0" / "displacement.npz").unlink()
    np.save(tmp_path / "o2" / "s0" / "y_grid.npy", np.zeros(3))  # an older multireg's
    code, _, err = _run(capsys, "register-many", manifest, "--out", tmp_path / "o2", "--overwrite")
    assert code == 2 and "y_grid.npy" in _one_line_error(err)


def test_register_many_ctrl_c_cancels_and_leaves_no_partial_folder(tmp_path, capsys, monkeypatch):
    import multireg.workflow.many

    real = multireg.register_many

    def interrupted_after_the_first_pair(jobs, *, progress, **kwargs):
        def then_interrupt(done, total, result):
            progress(done, total, result)
            raise KeyboardInterrupt

        return real(jobs, progress=then_interrupt, **kwargs)

    monkeypatch.setattr(multireg.workflow.many, "register_many", interrupted_after_the_first_pair)
    manifest = _manifest(tmp_path, n=4)
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys, "register-many", manifest, "--transform", "affine", "--backend", FAST,
        "--workers", "1", "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 130 and "interrupted" in err and stdout == ""
    rows = _summary_csv(out / "summary.csv")
    done = [r["id"] for r in rows if r["status"] != "cancelled"]
    assert len(done) == 1 and [r["status"] for r in rows].count("cancelled") == 3
    assert sorted(p.name for p in out.iterdir()) == sorted([*done, "summary.csv"])
    assert sorted(p.name for p in (out / done[0]).iterdir()) == ["result.json", "warped.npy"]


@pytest.mark.parametrize(
    "model", [["--transform", "translation"], ["--transform", "nonparametric", "--alpha", "10"]]
)
def test_register_many_pair_folders_hold_what_register_writes(tmp_path, capsys, monkeypatch, model):
    import concurrent.futures as cf

    from multireg.workflow.apply import Map

    monkeypatch.setattr(
        multireg.workflow.many, "_default_executor", lambda n: cf.ThreadPoolExecutor(n)
    )
    manifest = _manifest(tmp_path, n=1, labels=True)
    options = [*model, "--levels", "1", "--max-iter", "5", "--backend", FAST, "--quiet"]
    many, one = tmp_path / "many", tmp_path / "one"
    code, _, err = _run(capsys, "register-many", manifest, *options, "--workers", "1",
                        "--out", many)  # fmt: skip
    assert code in (cli.EXIT_OK, cli.EXIT_NOT_CONVERGED), err
    code, _, err = _run(capsys, "register", tmp_path / "T0.npy", tmp_path / "R0.npy", *options,
                        "--out", one)  # fmt: skip
    assert code in (cli.EXIT_OK, cli.EXIT_NOT_CONVERGED), err
    pair = many / "s0"
    assert sorted(p.name for p in pair.iterdir()) == sorted(p.name for p in one.iterdir())
    a, b = _result(pair), _result(one)
    assert a.keys() == b.keys()
    assert set(a["settings"]) == set(b["settings"]) - {"allow_oblique"}  # register's own option
    assert a["command"] == "register" and a["status"] == b["status"]
    assert a["distance"] == pytest.approx(b["distance"], rel=1e-10)
    assert a["outputs"] == {k: str(pair / Path(v).name) for k, v in b["outputs"].items()}
    np.testing.assert_allclose(np.load(pair / "warped.npy"), np.load(one / "warped.npy"),
                               rtol=0, atol=1e-12)  # fmt: skip
    Map.load(pair)  # 'multireg apply' reads a pair's folder as it reads register's
    (row,) = _summary_csv(many / "summary.csv")
    assert row["dice"] and not row["error"]  # the labels were warped with the written map


@pytest.mark.slow
def test_register_many_on_a_dask_scheduler(tmp_path, capsys, restored_environ):
    distributed = pytest.importorskip("distributed")
    import dask

    from multireg.workflow.many import DASK_WORKERS

    manifest = _manifest(tmp_path, n=2)
    out = tmp_path / "out"
    with (
        dask.config.set(DASK_WORKERS),
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
    ):
        code, _, err = _run(
            capsys, "register-many", manifest, "--transform", "translation", "--levels", "1",
            "--backend", FAST, "--scheduler", cluster.scheduler_address, "--out", out,
        )  # fmt: skip
    assert code == 0, err
    rows = _summary_csv(out / "summary.csv")
    assert [r["status"] for r in rows] == ["converged", "converged"]
    assert {r["backend"] for r in rows} == {FAST} and (out / "s1" / "warped.npy").exists()
