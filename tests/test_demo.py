"""The demo runs on built-in data and recovers what it claims to."""

from __future__ import annotations

import numpy as np
import pytest

from multireg.__main__ import main
from multireg.demo import W_TRUE, run

from .conftest import AD_BACKENDS


@pytest.mark.slow
def test_demo_recovers_the_truth_and_the_backends_agree():
    if not AD_BACKENDS:
        pytest.skip("needs torch or JAX")
    lines = []
    summary = run(AD_BACKENDS, out=lines.append)
    for name in AD_BACKENDS:
        assert summary["affine"][name]["error"] < 1e-8
        assert np.allclose(summary["affine"][name]["w"], W_TRUE, atol=1e-8)
        assert summary["elastic"][name]["reduction"] < 0.05
        assert summary["elastic"][name]["det_min"] > 0.5
    if len(AD_BACKENDS) > 1:
        assert summary["affine_agreement"] < 1e-10
        assert summary["elastic_agreement"] < 1e-8
    assert any("backends agree" in line for line in lines) == (len(AD_BACKENDS) > 1)


def test_cli_rejects_unknown_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
