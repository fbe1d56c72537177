"""Backend discovery, selection precedence, the protocol, and the import-time promise."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import multireg
from multireg import _backend
from multireg._backend import Backend, infer_backend, resolve_backend
from tests.conftest import AD_BACKENDS, BACKENDS


def _run(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "MULTIREG_BACKEND"}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environ
    )
    return out.stdout.strip() + out.stderr.strip()


def test_import_pulls_in_no_framework():
    out = _run("import multireg, sys; print('torch' in sys.modules, 'jax' in sys.modules)")
    assert out == "False False"


def test_listing_backends_pulls_in_no_framework():
    code = """
        import multireg, sys
        names = multireg.available_backends()
        print('torch' in sys.modules, 'jax' in sys.modules, 'numpy' in names)
    """
    assert _run(code) == "False False True"


def test_environment_variable_sets_the_default():
    name = BACKENDS[-1]
    out = _run("import multireg; print(multireg.get_backend().name)", MULTIREG_BACKEND=name)
    assert out == name


def test_unknown_environment_backend_fails_when_first_needed_not_at_import():
    code = """
        import multireg
        print("imported")
        print(multireg.get_backend("numpy").name)  # an explicit choice needs no default
        try:
            multireg.get_backend()
        except ValueError as err:
            print(err)
    """
    out = _run(code, MULTIREG_BACKEND="tensorflow")
    assert "Traceback" not in out
    lines = out.splitlines()
    assert lines[:2] == ["imported", "numpy"]
    assert "MULTIREG_BACKEND='tensorflow' is not a registered backend" in lines[2]
    assert all(name in lines[2] for name in ("jax", "numpy", "torch"))


def test_bad_environment_backend_never_breaks_the_command_line(tmp_path):
    """--help works, and a command that needs the default says what is wrong in one line."""
    env = {k: v for k, v in os.environ.items() if k != "MULTIREG_BACKEND"}
    env.update(MULTIREG_BACKEND="tensorflow", OMP_NUM_THREADS="1")

    def run(*argv):
        return subprocess.run(
            [sys.executable, "-m", "multireg", *map(str, argv)],
            capture_output=True, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip

    for argv in (["--help"], ["register", "--help"], ["validate", "--help"]):
        done = run(*argv)
        assert done.returncode == 0 and "usage: multireg" in done.stdout, done.stderr
        assert done.stderr == ""
    np.save(tmp_path / "T.npy", np.arange(64.0).reshape(8, 8))
    np.save(tmp_path / "R.npy", np.arange(64.0).reshape(8, 8).T)
    done = run("register", "T.npy", "R.npy", "--out", "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("multireg: error: ")
    assert "MULTIREG_BACKEND='tensorflow'" in done.stderr and "torch" in done.stderr
    assert not (tmp_path / "out").exists()


def test_default_prefers_jax_then_torch():
    out = _run("import multireg; print(multireg.get_backend().name)")
    assert out == multireg.available_backends()[0]


def test_entry_points_register_the_three_adapters():
    assert {"torch", "jax", "numpy"} <= set(_backend._entry_points())


def test_adapters_satisfy_the_protocol(bk):
    assert isinstance(bk, Backend)
    assert bk.name in BACKENDS


def test_missing_framework_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(_backend, "_instances", {})
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r'pip install "multireg\[torch\]"'):
        multireg.get_backend("torch")
    assert "torch" not in multireg.available_backends()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'"):
        multireg.get_backend("tensorflow")
    with pytest.raises(TypeError, match="backend must be a backend name"):
        multireg.get_backend(3)


def test_precedence_explicit_over_arrays_over_context_over_default(monkeypatch):
    if len(AD_BACKENDS) < 2:
        pytest.skip("needs torch and jax")
    torch, jax = multireg.get_backend("torch"), multireg.get_backend("jax")
    monkeypatch.setattr(_backend, "_default", None)
    np_array = np.ones(3)
    t = torch.asarray(np_array)
    # default: first installed
    assert resolve_backend(None, np_array) is multireg.get_backend(multireg.available_backends()[0])
    multireg.set_backend("torch")
    assert resolve_backend(None, np_array) is torch
    with multireg.use_backend("jax") as active:
        assert active is jax
        assert resolve_backend(None, np_array) is jax  # context beats the default
        assert resolve_backend(None, t) is torch  # array type beats the context
        assert resolve_backend("numpy", t).name == "numpy"  # explicit beats everything
        with multireg.use_backend("numpy"):
            assert multireg.get_backend().name == "numpy"
        assert multireg.get_backend() is jax
    assert multireg.get_backend() is torch


def test_mixed_frameworks_are_refused():
    if len(AD_BACKENDS) < 2:
        pytest.skip("needs torch and jax")
    t = multireg.get_backend("torch").asarray(np.ones(2))
    j = multireg.get_backend("jax").asarray(np.ones(2))
    assert infer_backend(t, np.ones(2), None, 1.0) == "torch"
    assert infer_backend(j) == "jax"
    assert infer_backend(np.ones(2)) is None
    with pytest.raises(TypeError, match="different frameworks"):
        infer_backend(t, j)


@pytest.mark.parametrize("dtype", [None, "float32", "float64", np.float32])
def test_asarray_dtype_rules(bk, dtype):
    x = bk.asarray(np.arange(4), dtype=dtype)
    expected = "float64" if dtype is None else np.dtype(dtype).name
    assert str(x.dtype).rpartition(".")[2] == expected
    np.testing.assert_array_equal(bk.to_numpy(x), np.arange(4.0))
    x32 = bk.asarray(np.ones(2, np.float32))
    assert str(x32.dtype).rpartition(".")[2] == "float32"  # floating input keeps its precision
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        bk.asarray(np.ones(2), dtype="int32")


def test_asarray_does_not_alias_user_data_in_a_way_we_write(bk):
    data = np.arange(6.0)
    x = bk.asarray(data)
    y = x * 2.0
    np.testing.assert_array_equal(data, np.arange(6.0))
    np.testing.assert_array_equal(bk.to_numpy(y), 2 * np.arange(6.0))


def _f(xp):
    return lambda x: xp.sum(xp.sin(x) * x**2)


def test_autodiff_transforms_agree_with_calculus(ad_bk):
    bk, xp = ad_bk, ad_bk.xp
    x0 = np.array([0.3, -1.2, 2.0])
    v0 = np.array([1.0, 0.5, -2.0])
    x, v = bk.asarray(x0), bk.asarray(v0)
    f = _f(xp)
    grad = np.sin(x0) * 2 * x0 + np.cos(x0) * x0**2
    hdiag = 2 * np.sin(x0) + 4 * x0 * np.cos(x0) - x0**2 * np.sin(x0)
    val, g = bk.value_and_grad(f)(x)
    np.testing.assert_allclose(float(bk.to_numpy(val)), np.sum(np.sin(x0) * x0**2), rtol=1e-14)
    np.testing.assert_allclose(bk.to_numpy(g), grad, rtol=1e-13)
    np.testing.assert_allclose(bk.to_numpy(bk.hvp(f, x, v)), hdiag * v0, rtol=1e-13)
    np.testing.assert_allclose(bk.to_numpy(bk.hessian(f)(x)), np.diag(hdiag), atol=1e-13)

    def g_vec(x):
        return xp.sin(x) * x**2

    _, jv = bk.jvp(g_vec, x, v)
    np.testing.assert_allclose(bk.to_numpy(jv), grad * v0, rtol=1e-13)
    _, pullback = bk.vjp(g_vec, x)
    np.testing.assert_allclose(bk.to_numpy(pullback(v)), grad * v0, rtol=1e-13)
    np.testing.assert_allclose(bk.to_numpy(bk.jacobian(g_vec)(x)), np.diag(grad), atol=1e-13)
    jitted = bk.jit(f)
    np.testing.assert_allclose(float(bk.to_numpy(jitted(x))), float(bk.to_numpy(f(x))), rtol=1e-15)
    assert bk.sync(x) is x or bk.name == "jax"


def test_vmap_maps_over_the_leading_axis(bk):
    xp = bk.xp
    a = bk.asarray(np.arange(6.0).reshape(3, 2))
    b = bk.asarray(np.array([1.0, 10.0]))
    out = bk.vmap(lambda r, s: xp.sum(r * s), in_axes=(0, None))(a, b)
    np.testing.assert_allclose(bk.to_numpy(out), [10.0, 32.0, 54.0])


def test_numpy_backend_refuses_derivatives_clearly(np_bk):
    with pytest.raises(NotImplementedError, match="forward-only"):
        np_bk.value_and_grad(lambda x: x)
    with pytest.raises(NotImplementedError, match="backend='torch' or backend='jax'"):
        np_bk.hvp(lambda x: x, 1.0, 1.0)


def test_strict_namespace_backend(strict_bk):
    x = strict_bk.asarray(np.arange(3.0))
    assert type(x).__module__.startswith("array_api_strict")
    np.testing.assert_array_equal(strict_bk.to_numpy(x), np.arange(3.0))
