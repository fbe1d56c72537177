"""The project's promises about itself: CI runs the README's commands."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_opens_with_the_two_setup_commands():
    demo, tests = _readme_commands()
    assert demo.endswith("multireg demo")
    assert "pytest" in tests


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    ci = (ROOT / ".ci" / "run").read_text()
    _, tests = _readme_commands()
    # the README's test command is "<make venv> && <install> && <run tests>"; CI makes its own venv
    install, run = tests.split(" && ")[-2:]
    assert install in ci
    assert run in ci


def test_public_entry_points_are_where_the_issues_put_them():
    import multireg

    assert callable(multireg.register)
    assert callable(multireg.homotopy)  # multireg.homotopy(T, R, omega, ...)
    assert callable(multireg.superres.solve) and callable(multireg.superres.make_problem)
    assert callable(multireg.validate)  # multireg.validate(fn, *args, backends=...)
    assert callable(multireg.io.read_image) and callable(multireg.io.write_image)
    from multireg.cli.validate import run_command

    assert callable(run_command)
    assert set(multireg.__all__) <= set(dir(multireg))


def test_the_core_never_imports_a_framework():
    """torch and JAX are reached through the adapters in backends/, never imported by the core."""
    import re
    from pathlib import Path

    import multireg

    pattern = re.compile(r"^\s*(import|from)\s+(torch|jax|jaxlib)\b", re.MULTILINE)
    found = [
        f"{path.name}:{text[: m.start()].count(chr(10)) + 1}"
        for path in Path(multireg.__file__).parent.rglob("*.py")
        for text in [path.read_text(encoding="utf-8")]
        for m in pattern.finditer(text)
    ]
    assert found == []
