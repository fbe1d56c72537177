"""The optional dependencies: ``pip install ".[test]"`` skips no test for want of a package."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed by their own extras (the README's test command names them)
OWN_EXTRA = {"torch", "jax"}
# module → distribution, where the names differ
DISTRIBUTION = {"PIL": "pillow", "distributed": "dask"}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0].lower()


def test_the_test_extra_installs_every_package_a_test_may_skip_without():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    provided = {_requirement_name(r) for r in extras["test"]}
    used = set()
    for path in (ROOT / "tests").rglob("*.py"):
        for module in re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", path.read_text()):
            top = module.partition(".")[0]
            if top not in {"multireg", *OWN_EXTRA, *sys.stdlib_module_names}:
                used.add(DISTRIBUTION.get(top, top.replace("_", "-").lower()))
    assert "tqdm" in used  # the progress-bar test (tests/cli/test_cli.py)
    assert sorted(used - provided) == []
