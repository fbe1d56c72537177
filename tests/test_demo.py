"""The demo runs on built-in data, recovers what it claims to, and writes its figures."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from multireg import demo
from multireg.__main__ import main
from multireg.demo import RTOL, W_TRUE, run

from .conftest import AD_BACKENDS


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
