"""The demo runs on built-in data, recovers what it claims to, and writes its figures."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from multireg.__main__ import main
from multireg.workflow import demo
from multireg.workflow.demo import RTOL, W_TRUE, run
from tests.conftest import AD_BACKENDS


@pytest.mark.slow
def test_demo_recovers_the_truth_the_backends_agree_and_figures_are_written(tmp_path):
    if not AD_BACKENDS:
        pytest.skip("needs torch or JAX")
    lines: list[str] = []
    folder = run(AD_BACKENDS, out=tmp_path / "demo", small=True, echo=lines.append)
    assert folder == tmp_path / "demo"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["backends"] == AD_BACKENDS
    for name in AD_BACKENDS:
        affine = summary["affine"]["backends"][name]
        assert affine["error"] < 1e-8
        assert np.allclose(affine["w"], W_TRUE, atol=1e-8)
        elastic = summary["elastic"]["backends"][name]
        assert elastic["reduction"] < 0.05 and elastic["det_min"] > 0.5
        assert elastic["det_range"][1] - elastic["det_range"][0] > 0.2  # visibly not affine
        assert elastic["status"] == "converged"
        homotopy = summary["homotopy"]["backends"][name]
        assert homotopy["error"] < 1e-3 and homotopy["status"] == "converged"
        superres = summary["superres"]["backends"][name]
        assert superres["w_error"] < superres["w_error_initial"]
        assert superres["f_error"] < superres["f_error_initial"]
    # the single-scale run stops in a local minimum: the homotopy is what finds the truth
    assert summary["homotopy"]["single_scale_error"] > 0.5
    assert summary["dynamics"]["status"] in ("ok", "skipped"), summary["dynamics"]
    # the printed agreement, per capability, is within the demo's tolerance
    agree = [line for line in lines if "backends agree to" in line]
    if len(AD_BACKENDS) > 1:
        expected = 5 if summary["dynamics"]["status"] == "ok" else 4
        assert len(agree) == expected, lines
        for line in agree:
            numbers = [float(v) for v in re.findall(r"(\d\.\d+e[+-]\d+) \(", line)]
            assert numbers and max(numbers) <= RTOL, line
            assert "PASS" in line
        for key in ("affine", "elastic", "homotopy", "superres"):
            assert summary[key]["ok"] and max(summary[key]["agreement"].values()) <= RTOL
    else:
        assert not agree
    # one figure per capability, when matplotlib is installed
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for key in ("affine", "elastic", "homotopy", "superres"):
        figure = folder / summary[key]["figure"]
        assert figure.suffix == ".png" and figure.stat().st_size > 10_000
    if summary["dynamics"]["status"] == "ok":
        assert (folder / "dynamics.png").is_file()
    assert str(folder) in lines[-1]


def test_the_elastic_demo_shows_a_non_affine_deformation(tmp_path, monkeypatch):
    """The elastic step must show what elastic registration adds to an affine one: a det ∇y
    that varies across the image (it was 0.986 ± 1e-4 on a problem an affine map solves)."""
    if not AD_BACKENDS:
        pytest.skip("needs torch or JAX")
    from multireg import gridops

    name = "torch" if "torch" in AD_BACKENDS else AD_BACKENDS[0]  # torch compiles nothing
    reports = []
    validate = demo._Demo.validate
    monkeypatch.setattr(
        demo._Demo,
        "validate",
        lambda self, *a, **k: reports.append(validate(self, *a, **k)) or reports[-1],
    )
    lines: list[str] = []
    run = demo._Demo([name], tmp_path, lines.append, small=True)
    demo._elastic(run)
    result = reports[0].results[name]
    domain = result.levels[-1].domain
    y = np.asarray(result.y)
    det = np.asarray(
        gridops.jacobian_determinant(np.concatenate([y[:, 0], y[:, 1]]), domain, "cell-centered")
    )
    assert det.max() - det.min() > 0.2 and det.std() > 0.02, (det.min(), det.max(), det.std())
    assert det.min() > 0.5  # and no fold
    assert result.reduction < 0.05 and result.status.value == "converged"
    entry = run.summary["elastic"]
    assert entry["backends"][name]["det_range"] == pytest.approx([det.min(), det.max()])
    lo, hi = entry["true_det"]
    assert lo < det.min() + 0.1 and hi > det.max() - 0.1  # the truth's spread, roughly found
    assert any("det ∇y from" in line for line in lines)


def test_demo_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = demo._folder(None, overwrite=False)
    second = demo._folder(None, overwrite=False)
    assert first.parent == tmp_path and first.is_dir() and second.is_dir() and first != second
    assert re.fullmatch(r"multireg-demo-\d{8}-\d{6}(-\d+)?", first.name)
    (first / "summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds demo output"):
        demo._folder(first, overwrite=False)
    assert demo._folder(first, overwrite=True) == first
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        demo._folder(tmp_path / "file", overwrite=False)
    assert demo._folder(tmp_path / "new" / "deep", overwrite=False).is_dir()


def test_demo_rejects_bad_arguments():
    with pytest.raises(TypeError, match="backend names"):
        run([1])
    with pytest.raises(RuntimeError, match="needs torch or JAX"):
        run(["numpy"])


def test_cli_rejects_unknown_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
