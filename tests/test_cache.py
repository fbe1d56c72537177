"""The persistent compilation cache (issue 13): reused by a new process, movable, can be turned off.

Compilations and traces are counted with JAX's own monitoring events, never timed. A
registration's programs are kept whole (``jax-programs``: loaded without tracing or lowering);
what JAX's own cache (``jax``) keeps is what is compiled apart from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import multireg

pytest.importorskip("jax")

# A small registration in a new process; prints the counts of XLA compilations, of JAX cache
# hits and misses, of jaxprs traced, and the folder JAX used.
CHILD = r"""
import collections, json, sys
import numpy as np
from jax import monitoring
import multireg

counts = collections.Counter()
monitoring.register_event_listener(lambda name, **kw: counts.update([name]))
monitoring.register_event_duration_secs_listener(lambda name, d, **kw: counts.update([name]))
if len(sys.argv) > 1:
    multireg.set_cache_dir(None if sys.argv[1] == "None" else sys.argv[1])
x = np.linspace(-1, 1, 16)
T = np.exp(-8 * ((x[:, None] - 0.2) ** 2 + (x[None, :] + 0.1) ** 2))
R = np.exp(-8 * (x[:, None] ** 2 + x[None, :] ** 2))
multireg.register(T, R, (-1, 1, -1, 1), transform="translation", levels=1, backend="jax")
import jax
print(json.dumps({
    "compiles": counts["/jax/core/compile/backend_compile_duration"],
    "hits": counts["/jax/compilation_cache/cache_hits"],
    "misses": counts["/jax/compilation_cache/cache_misses"],
    "traces": counts["/jax/core/compile/jaxpr_trace_duration"],
    "folder": jax.config.jax_compilation_cache_dir,
    "enabled": jax.config.jax_enable_compilation_cache,
}))
"""


def _run(env_cache: str | None, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "MULTIREG_CACHE"))}
    if env_cache is not None:
        env["MULTIREG_CACHE_DIR"] = env_cache
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(folder: Path) -> list[Path]:
    """The kept programs and JAX's cache entries under a multireg cache folder."""
    jax_cache = sorted((folder / "jax").rglob("*-cache")) if (folder / "jax").is_dir() else []
    programs = folder / "jax-programs"
    kept = sorted(p for p in programs.iterdir() if p.suffix != ".tmp") if programs.is_dir() else []
    return jax_cache + kept


def test_a_second_process_reuses_the_cache(tmp_path):
    first = _run(str(tmp_path))
    assert first["folder"] == str(tmp_path / "jax")
    assert first["compiles"] > 0 and first["hits"] == 0
    assert len(_entries(tmp_path)) == first["compiles"]  # every program compiled was kept
    second = _run(str(tmp_path))
    # nothing compiled anew, and nothing traced or lowered either: the programs were loaded
    # whole (JAX's own cache alone traced and lowered each of them again in every process)
    assert second["compiles"] == 0 and second["misses"] == 0
    assert second["traces"] == 0


@pytest.mark.slow
def test_the_environment_turns_it_off_and_set_cache_dir_overrides_the_environment(tmp_path):
    off = _run("off")
    assert not off["enabled"] and off["hits"] == 0 and off["misses"] == 0
    chosen = _run("off", str(tmp_path))  # set_cache_dir(tmp_path) after MULTIREG_CACHE_DIR=off
    assert chosen["enabled"] and chosen["folder"] == str(tmp_path / "jax")
    assert _entries(tmp_path)


@pytest.mark.slow
def test_set_cache_dir_moves_it_in_process_and_none_turns_it_off(tmp_path):
    moved = _run(None, str(tmp_path / "moved"))
    assert moved["folder"] == str(tmp_path / "moved" / "jax") and moved["compiles"] > 0
    assert _entries(tmp_path / "moved")
    off = _run(str(tmp_path / "env"), "None")
    assert not off["enabled"] and off["misses"] == 0
    assert not (tmp_path / "env").exists()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MULTIREG_CACHE_DIR", raising=False)
    assert multireg.cache_dir() == multireg._cache.default_cache_dir()
    monkeypatch.setenv("MULTIREG_CACHE_DIR", str(tmp_path))
    assert multireg.cache_dir("jax") == tmp_path / "jax"
    for off in ("", "off", "None", "0"):
        monkeypatch.setenv("MULTIREG_CACHE_DIR", off)
        assert multireg.cache_dir() is None
    with pytest.raises(TypeError, match="path"):
        multireg.set_cache_dir(3)


def _files(folder: Path, sizes_ages: dict[str, tuple[int, float]]) -> None:
    now = time.time()
    for name, (size, age) in sizes_ages.items():
        path = folder / name
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age, now - age))


def test_trim_deletes_the_least_recently_used_files_first(tmp_path):
    _files(tmp_path, {"old": (400, 300), "mid": (300, 200), "new": (200, 100)})
    (tmp_path / "sub").mkdir()  # a folder is not a file of the cache: left alone
    assert multireg._cache.trim(tmp_path, 600) == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid", "new", "sub"]
    os.utime(tmp_path / "mid", (time.time(), time.time() - 200))  # read just now: recent
    assert multireg._cache.trim(tmp_path, 300) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid", "sub"]
    assert multireg._cache.trim(tmp_path / "missing", 10) == 0


def test_a_bounded_folder_is_scanned_once_then_counted(tmp_path, monkeypatch):
    scans = []
    real = multireg._cache.trim
    monkeypatch.setattr(multireg._cache, "trim", lambda f, b: scans.append(f) or real(f, b))
    _files(tmp_path, {"a": (500, 300), "b": (400, 200)})
    bound = multireg._cache.Bounded(1000)
    bound.wrote(tmp_path, 0)  # the first write scans: 900 bytes kept
    (tmp_path / "c").write_bytes(b"x" * 50)
    bound.wrote(tmp_path, 50)  # 950: counted, not scanned
    assert len(scans) == 1
    (tmp_path / "d").write_bytes(b"x" * 100)
    bound.wrote(tmp_path, 100)  # 1050 > 1000: scanned, the oldest file goes
    assert len(scans) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c", "d"]


BOUNDED = r"""
import sys
import numpy as np
import multireg, multireg._cache
multireg._cache.MAX_BYTES = int(sys.argv[1])
import jax
multireg.get_backend("jax")
assert jax.config.jax_compilation_cache_max_size == -1  # JAX's per-write scan is off
for n in range(1, 5):  # four programs into JAX's own cache
    jax.jit(lambda a: a * 2.0 + 1.0)(np.ones(n))
"""


@pytest.mark.slow
def test_the_jax_cache_is_trimmed_to_its_bound_when_the_process_ends(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "MULTIREG_CACHE"))}
    env["MULTIREG_CACHE_DIR"] = str(tmp_path)

    def run(bound: int) -> int:
        out = subprocess.run([sys.executable, "-c", BOUNDED, str(bound)], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return sum(p.stat().st_size for p in (tmp_path / "jax").iterdir() if p.is_file())

    kept = run(2**40)
    assert kept > 0
    assert run(kept // 2) <= kept // 2


@pytest.mark.parametrize(
    "setting", ["jax_disable_most_optimizations", "jax_exec_time_optimization_effort"]
)
def test_the_compiler_settings_name_the_kept_programs(setting):
    """A program compiled with other optimisation settings (the test suite's, a user's quick
    setting) is not loaded in their place: the settings are part of the program's name."""
    jax = pytest.importorskip("jax")
    bk = multireg.get_backend("jax")
    before = bk._environment()
    old = jax.config.values[setting]
    value = (not old) if isinstance(old, bool) else (-0.5 if old != -0.5 else 0.0)
    jax.config.update(setting, value)
    try:
        changed = bk._environment()
    finally:
        jax.config.update(setting, old)
    assert changed != before
    assert bk._environment() == before


# What a new process imports for `multireg register` (JAX): the framework and what the images
# and the computation need (SciPy included: JAX's CPU LAPACK calls, the spline's solve, come
# from it), nothing that only other commands, formats or displays use.
IMPORTS = r"""
import sys
import numpy as np
from multireg.__main__ import main
folder = sys.argv[1]
x = np.linspace(-1, 1, 16)
np.save(folder + "/T.npy", np.exp(-8 * ((x[:, None] - 0.2) ** 2 + (x[None, :] + 0.1) ** 2)))
np.save(folder + "/R.npy", np.exp(-8 * (x[:, None] ** 2 + x[None, :] ** 2)))
code = main(["register", folder + "/T.npy", folder + "/R.npy", "--transform", "translation",
             "--backend", "jax", "--quiet", "--out", folder + "/out"])
print(code, *sorted({m.partition(".")[0] for m in sys.modules}))
"""
NOT_NEEDED = {"matplotlib", "SimpleITK", "nibabel", "torch", "skimage", "pandas", "tqdm", "PIL"}


def test_register_on_the_command_line_imports_only_what_it_uses(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "MULTIREG_CACHE"))}
    env["MULTIREG_CACHE_DIR"] = str(tmp_path / "cache")
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    code, *modules = out.stdout.split()
    assert code in ("0", "3")
    assert "jax" in modules  # the check sees the process's imports
    assert not NOT_NEEDED & set(modules), sorted(NOT_NEEDED & set(modules))
