"""bench/real.py: the quick path's table and the metrics against the known truth."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import real

from multireg import Domain
from multireg.workflow.metrics import dice, tre


def _tiny_case() -> real.Case:
    """A 24×20 image (two discs on a ramp) warped by a known map, labels by the same."""
    domain = Domain((0.0, 24.0, 0.0, 20.0), (24, 20))
    x = domain.cell_centers().reshape(24, 20, 2)
    d1 = np.hypot(x[..., 0] - 8, x[..., 1] - 10)
    d2 = np.hypot(x[..., 0] - 16, x[..., 1] - 9)
    labels = np.where(d1 < 4, 1, np.where(d2 < 3.5, 2, 0)).astype(np.int16)
    image = np.exp(-((d1 / 4) ** 2)) + 0.7 * np.exp(-((d2 / 3) ** 2))
    rng = np.random.default_rng(0)
    return real._warped_case(
        "tiny", image, labels, labels > 0, domain.omega, "mm", rng, amp=1.0, note="test",
        n_points=20,
    )  # fmt: skip


def test_truth_scores_perfectly_and_identity_scores_the_initial_overlap():
    case = _tiny_case()
    assert case.u_true is not None
    truth = real.score(case, case.u_true, None)
    # labels_R is the template's labels at y*(x) (nearest): the true map reproduces it
    assert truth["dice"] == 1.0
    assert truth["tre"] < 1e-9
    ident = real.score(case, np.zeros_like(case.u_true), None)
    assert ident["dice"] == pytest.approx(dice(case.labels_T, case.labels_R).mean)
    assert ident["dice"] < 1.0
    assert ident["tre"] == pytest.approx(tre(case.points_R, case.points_T).mean)
    assert ident["tre"] > 0.1
    assert ident["folded"] == 0.0 and ident["sdlogj"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_quick_path_table_for_multireg(tmp_path):
    case = _tiny_case()
    args = real.parse_args(["--quick", "--methods", "multireg-affine-torch", "--threads", "1"])
    args.no_warm = True
    rows = real.run_case(case, ["multireg-affine-torch"], args, tmp_path, lambda msg: None)
    assert [r["method"] for r in rows] == ["identity", "truth", "multireg-affine-torch"]
    ours = rows[-1]
    assert ours["status"] in ("converged", "max_iter"), ours.get("traceback", ours["status"])
    assert ours["cold"] > 0 and ours["max_rss_mb"] > 0
    # the registration improves on the identity, scored from the same known truth
    assert ours["dice"] > rows[0]["dice"] and ours["tre"] < rows[0]["tre"]
    text = real.markdown([case], [("mni-cross", "why")], rows, args)
    header = next(line for line in text.splitlines() if line.startswith("| case"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(real.COLUMNS)
    body = [line for line in text.splitlines() if line.startswith("| tiny")]
    assert len(body) == 3
    assert "`mni-cross`: not run: why" in text


# A stand-in worker: sleeps COLD s, says its cold run is complete, sleeps WARM s, says done
# (the protocol of real.worker: "phase" in the json file), or exits with CODE before any result.
_FAKE_WORKER = """
import json, os, sys, time
path, cold, warm, code = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
if code:
    sys.exit(code)
def write(info):
    with open(path + ".part", "w") as f:
        json.dump(info, f)
    os.replace(path + ".part", path)
time.sleep(cold)
write({"phase": "warm", "status": "converged", "cold": cold})
time.sleep(warm)
write({"phase": "done", "status": "converged", "cold": cold, "warm": warm})
"""


def _fake(tmp_path, cold, warm, timeout, code=0):
    out = tmp_path / "w.json"
    cmd = [sys.executable, "-c", _FAKE_WORKER, str(out), str(cold), str(warm), str(code)]
    return real.run_worker(cmd, out, timeout, cwd=tmp_path)


@pytest.mark.slow
def test_each_run_has_its_own_time_limit(tmp_path):
    # cold and warm each stay under the limit, together they exceed it: both complete
    info = _fake(tmp_path, cold=3.0, warm=3.0, timeout=5.0)
    assert info["phase"] == "done" and info["warm"] == 3.0
    assert "warm_timeout" not in info and "cold_timeout" not in info


def test_a_warm_run_past_its_limit_keeps_the_cold_run_and_says_it_timed_out(tmp_path):
    info = _fake(tmp_path, cold=0.0, warm=120.0, timeout=1.5)
    assert info["warm_timeout"] == 1.5 and info["status"] == "converged" and info["cold"] == 0.0
    assert "warm" not in info
    row = {"case": "tiny", "method": "m", **info}
    assert real._time_cell(row, "warm") == "timed out at 1.5 s"
    assert real._time_cell(row, "cold") == "0"


def test_a_cold_run_past_its_limit_is_reported_as_timed_out(tmp_path):
    info = _fake(tmp_path, cold=120.0, warm=0.0, timeout=1.5)
    assert info["cold_timeout"] == 1.5
    assert info["status"] == "timed out: the cold run had not finished after 1.5 s"
    assert real._time_cell(info, "cold") == "timed out at 1.5 s"


def test_a_worker_that_dies_is_not_reported_as_timed_out(tmp_path):
    info = _fake(tmp_path, cold=0.0, warm=0.0, timeout=30.0, code=3)
    assert info["status"] == "failed: the worker died (exit 3; see --verbose)"
    assert "cold_timeout" not in info


def test_the_table_lists_time_outs(tmp_path):
    case = _tiny_case()
    args = real.parse_args(["--quick"])
    rows = [
        {"case": "tiny", "method": "a", "status": "converged", "cold": 2.0, "warm_timeout": 9.0},
        {"case": "tiny", "method": "b", "status": "timed out: the cold run had not finished "
         "after 9 s", "cold_timeout": 9.0},
    ]  # fmt: skip
    text = real.markdown([case], [], rows, args)
    assert "| timed out at 9 s |" in text.replace("  ", " ")
    assert "* `tiny` / `a`: the warm run had not finished after 9 s" in text
    assert "* `tiny` / `b`: timed out: the cold run had not finished after 9 s" in text


@pytest.mark.slow
def test_jax_rows_time_a_restart_that_finds_the_compiled_programs(tmp_path):
    pytest.importorskip("jax")
    case = _tiny_case()
    args = real.parse_args(["--methods", "multireg-affine-jax", "--no-warm"])
    rows = real.run_case(case, ["multireg-affine-jax"], args, tmp_path, lambda msg: None)
    ours = rows[-1]
    assert ours["status"] in ("converged", "max_iter"), ours.get("traceback", ours["status"])
    assert ours.get("restart_error") is None, ours["restart_error"]
    assert ours["cold"] > 0 and ours["restart"] > 0 and ours.get("restart_timeout") is None
    # the worker's own cache folder, empty before its cold run, holds the compiled programs
    assert any((tmp_path / "cache" / "tiny-multireg-affine-jax").rglob("*"))
    args.no_restart = True
    rows = real.run_case(case, ["multireg-affine-jax"], args, tmp_path, lambda msg: None)
    assert "restart" not in rows[-1]


def _stand_in_template(resolution):
    """A 3-D volume on the template's grid convention (2 mm, the origin inside), labels by level:
    the seed test needs the case's geometry, not nilearn's template."""
    from multireg.data import blobs

    omega = (-40.0, 40.0, -48.0, 48.0, -40.0, 40.0)
    T, _ = blobs((40, 48, 40), omega, n_blobs=6, seed=2)
    T = (T - T.min()) / (T.max() - T.min())
    labels = np.where(T > 0.6, 2, np.where(T > 0.3, 1, 0)).astype(np.int16)
    return T, labels, omega, np.array([2.0, 2.0, 2.0])


def test_warp_seed_changes_the_known_map_and_not_the_template(monkeypatch):
    monkeypatch.setattr(real, "_mni", _stand_in_template)
    reported = real.case_mni2d(True, False)
    other = real.case_mni2d(True, False, seed=116)
    assert np.array_equal(reported.T, other.T) and np.array_equal(reported.labels_T, other.labels_T)
    assert np.max(np.abs(reported.u_true - other.u_true)) > 1.0  # mm: another map
    assert "(seed 16)" in reported.note and "(seed 116)" in other.note
    assert real.parse_args(["--warp-seed", "116"]).warp_seed == 116
