"""register_many (issue 16): the same results as a loop, each pair once, failures reported, the
backend passed explicitly; on a process pool and on a Dask LocalCluster started here."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import warnings

import numpy as np
import pytest

import multireg
from multireg.data import blobs
from multireg.workflow import many
from multireg.workflow.many import DASK_WORKERS, Job, PairResult, register_many

OPTIONS = dict(transform="translation", levels=1)


def _pairs(n=4):
    T, domain = blobs((24, 24), (0, 1, 0, 1))
    return [(T, np.roll(T, s, axis=s % 2)) for s in range(1, n + 1)], domain.omega


def _loop(pairs, omega, backend):
    return [
        multireg.register(T, R, omega, backend=backend, **OPTIONS) for T, R in pairs
    ]  # fmt: skip


def _same(results, loop, bk):
    assert [r.status for r in results] == [x.status.value for x in loop]
    for r, x in zip(results, loop):
        np.testing.assert_allclose(r.w, bk.to_numpy(x.w), rtol=0, atol=1e-10)
        assert r.distance == pytest.approx(x.distance, rel=1e-10)
        assert r.iterations == x.iterations


def test_in_a_thread_pool_equals_the_loop_and_reports_a_bad_pair(ad_bk):
    pairs, omega = _pairs()
    bad = (pairs[0][0], np.full((24, 24), np.nan))
    seen = []
    with cf.ThreadPoolExecutor(2) as ex:
        results = register_many(
            [*pairs[:2], bad, *pairs[2:]], omega=omega, executor=ex, backend=ad_bk.name,
            progress=lambda done, total, r: seen.append((done, total, r.name)), **OPTIONS,
        )  # fmt: skip
    assert [r.name for r in results] == ["0", "1", "2", "3", "4"]
    assert results[2].status == "failed" and "NaN" in results[2].error
    assert results[2].w is None
    good = [r for r in results if r.ok]
    _same(good, _loop(pairs, omega, ad_bk.name), ad_bk)
    assert sorted(s[0] for s in seen) == [1, 2, 3, 4, 5] and {s[1] for s in seen} == {5}
    assert sorted(s[2] for s in seen) == ["0", "1", "2", "3", "4"]  # each pair once


def test_a_process_pool_gets_the_backend_explicitly(monkeypatch):
    """The workers inherit MULTIREG_BACKEND=jax; the pairs must still run on torch."""
    pytest.importorskip("torch")
    monkeypatch.setenv("MULTIREG_BACKEND", "jax")
    pairs, omega = _pairs(2)
    spawn = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(2, mp_context=spawn) as ex:
        results = register_many(pairs, omega=omega, executor=ex, backend="torch", **OPTIONS)
    assert {r.backend for r in results} == {"torch"}
    assert len({r.worker for r in results}) >= 1 and all(":" in r.worker for r in results)
    bk = multireg.get_backend("torch")
    _same(results, _loop(pairs, omega, "torch"), bk)


def test_outputs_are_written_by_the_worker_and_results_are_small(tmp_path, ad_bk):
    import pickle

    pairs, omega = _pairs(2)
    jobs = [Job(T, R, f"pair{i}", omega) for i, (T, R) in enumerate(pairs)]
    with cf.ThreadPoolExecutor(1) as ex:
        results = register_many(jobs, executor=ex, backend=ad_bk.name, out=tmp_path, **OPTIONS)
    for r, x in zip(results, _loop(pairs, omega, ad_bk.name)):
        warped = np.load(r.outputs["warped"])
        np.testing.assert_allclose(warped, ad_bk.to_numpy(x.warped), rtol=0, atol=1e-12)
        assert len(pickle.dumps(r)) < 2000  # no image travels back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair0", "pair1"]


def _note_writer(folder, result, *, job, backend, inputs, seconds):
    """A writer: one file naming what it was given (module level: it pickles to a worker)."""
    from multireg import io

    folder.mkdir(parents=True, exist_ok=True)
    note = folder / "note.txt"
    kinds = ",".join(type(x).__name__ for x in inputs)
    note.write_text(f"{job.name} {backend.name} {result.status.value} {kinds} {seconds > 0}")
    assert isinstance(inputs[1], io.Image) and inputs[1].m == tuple(result.warped.shape)
    return {"note": str(note)}


def test_a_writer_writes_each_pair_s_folder_in_the_worker(tmp_path):
    pairs, _ = _pairs(2)
    for i, (T, R) in enumerate(pairs):
        np.save(tmp_path / f"T{i}.npy", T)
        np.save(tmp_path / f"R{i}.npy", R)
    jobs = [Job(str(tmp_path / f"T{i}.npy"), str(tmp_path / f"R{i}.npy"), f"p{i}") for i in (0, 1)]
    backend = "torch" if "torch" in multireg.available_backends() else "jax"
    # a thread pool for speed; the CLI's writer crosses to spawned workers in test_cli.py
    with cf.ThreadPoolExecutor(1) as ex:
        results = register_many(jobs, executor=ex, backend=backend, out=tmp_path / "out",
                                writer=_note_writer, **OPTIONS)  # fmt: skip
    for r in results:
        assert r.ok, r.error
        assert sorted(p.name for p in (tmp_path / "out" / r.name).iterdir()) == ["note.txt"]
        assert r.outputs == {"note": str(tmp_path / "out" / r.name / "note.txt")}
        text = (tmp_path / "out" / r.name / "note.txt").read_text()
        assert text == f"{r.name} {backend} {r.status} Image,Image True"


def test_paths_are_read_in_the_worker(tmp_path):
    pairs, _ = _pairs(1)
    T, R = pairs[0]
    np.save(tmp_path / "T.npy", T)
    np.save(tmp_path / "R.npy", R)
    jobs = [
        {"template": str(tmp_path / "T.npy"), "reference": str(tmp_path / "R.npy")},
        {"template": str(tmp_path / "missing.npy"), "reference": str(tmp_path / "R.npy")},
    ]
    with cf.ThreadPoolExecutor(1) as ex:
        results = register_many(jobs, executor=ex, backend="jax", **OPTIONS)
    assert results[0].ok and results[1].status == "failed"
    assert "missing.npy" in results[1].error


def test_bad_arguments_fail_before_any_work():
    pairs, omega = _pairs(1)
    with pytest.raises(ValueError, match="omega"):
        register_many(pairs, backend="jax")
    with pytest.raises(ValueError, match="jobs is empty"):
        register_many([], omega=omega, backend="jax")
    with pytest.raises(TypeError, match=r"jobs\[0\]"):
        register_many([pairs[0][0]], omega=omega, backend="jax")
    with pytest.raises(ValueError, match="backend"):
        register_many(pairs, omega=omega, backend="nope")
    with pytest.raises(TypeError, match="executor"):
        register_many(pairs, omega=omega, backend="jax", executor=object())
    with pytest.raises(ValueError, match="distinct names"):
        register_many([Job(*pairs[0], "a", omega)] * 2, backend="jax")
    with pytest.raises(ValueError, match="threads"):
        register_many(pairs, omega=omega, backend="jax", threads=0)
    with pytest.raises(TypeError, match="writer"):
        register_many(pairs, omega=omega, backend="jax", out="x", writer="write")
    with pytest.raises(ValueError, match="writer needs out"):
        register_many(pairs, omega=omega, backend="jax", writer=_note_writer)


@pytest.mark.slow
def test_on_a_dask_local_cluster_each_pair_runs_once(restored_environ):
    distributed = pytest.importorskip("distributed")
    import dask

    pairs, omega = _pairs(3)
    jobs = [*pairs, pairs[0]]  # two equal pairs: two tasks, not one (no deduplication)
    with (
        dask.config.set(DASK_WORKERS),  # else register_many warns (filterwarnings: error)
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        results = register_many(jobs, omega=omega, executor=client, backend="torch", **OPTIONS)
    assert [r.name for r in results] == ["0", "1", "2", "3"]
    assert all(isinstance(r, PairResult) and r.backend == "torch" for r in results)
    bk = multireg.get_backend("torch")
    _same(results, _loop(jobs, omega, "torch"), bk)


def test_an_interrupt_stops_the_workers_and_leaves_no_partial_folder(tmp_path):
    """Ctrl-C while a pair runs in the default pool: the workers are ended before the
    interrupt reaches the caller (a running pair must not go on and write its folder after
    the caller was told that everything was cancelled), and no temporary is left."""
    T, domain = blobs((48, 48), (0, 1, 0, 1))
    jobs = [Job(T, np.roll(T, s, axis=0), f"p{s}", domain.omega) for s in range(1, 5)]

    def interrupt(done, total, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        register_many(
            jobs, workers=1, backend="torch" if "torch" in multireg.available_backends()
            else "jax", out=tmp_path, progress=interrupt, transform="affine",
        )  # fmt: skip
    assert multiprocessing.active_children() == []  # no worker still computing a pair
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["p1"]  # the pair that completed; nothing hidden, nothing partial
    assert sorted(p.name for p in (tmp_path / "p1").iterdir()) == ["warped.npy"]


class _Workers:
    """A stand-in Dask client: ``run`` answers each worker's MALLOC_TRIM_THRESHOLD_."""

    def __init__(self, values):
        self.values = values

    def run(self, function):
        assert function() == os.environ.get("MALLOC_TRIM_THRESHOLD_")  # what a worker runs
        return dict(enumerate(self.values))


def test_dask_workers_that_trim_memory_are_warned_about():
    with pytest.warns(RuntimeWarning, match="MALLOC_TRIM_THRESHOLD_=65536.*DASK_WORKERS"):
        many._warn_if_trimming(_Workers([None, "65536"]))
    for fine in ([None, None], [str(64 * 1024**2)]):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            many._warn_if_trimming(_Workers(fine))
    many._warn_if_trimming(object())  # not a client: no advice, no error
    pytest.importorskip("distributed")
    import dask
    from distributed.nanny import _get_env_variables  # what a Nanny gives its worker

    key = "distributed.nanny.pre-spawn-environ"
    assert "MALLOC_TRIM_THRESHOLD_" in _get_env_variables(key)  # Dask's default
    with dask.config.set(DASK_WORKERS):
        assert "MALLOC_TRIM_THRESHOLD_" not in _get_env_variables(key)
