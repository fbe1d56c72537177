"""bench/scale.py (issue 16.4): its two cases' series and its argument checks (the benchmark's
timings themselves are never asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scale


@pytest.mark.parametrize("m", [(16, 16), (8, 8, 8)])
def test_series_moves_one_reference_per_pair(m):
    pairs, omega = scale.series(3, m)
    assert len(pairs) == 3 and len(omega) == 2 * len(m)
    R = pairs[0][1]
    for T, Ri in pairs:
        assert T.shape == m and Ri is R
        assert np.all(np.isfinite(T)) and not np.allclose(T, R)
    assert not np.allclose(pairs[0][0], pairs[1][0])  # each pair its own motion


@pytest.mark.parametrize("flag", ["--pairs", "--pairs-3d", "--workers"])
def test_counts_below_one_are_refused_before_any_work(flag, capsys):
    with pytest.raises(SystemExit) as stop:
        scale.main([flag, "0"])
    assert stop.value.code == 2
    assert f"{flag} must be at least 1" in capsys.readouterr().err


def test_help_documents_the_3d_case(capsys):
    with pytest.raises(SystemExit):
        scale.main(["--help"])
    text = capsys.readouterr().out
    assert "3-D 64³" in text and "--pairs-3d" in text and "--no-3d" in text
