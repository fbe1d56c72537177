"""The adapters' boundary: any NumPy layout converts, and the thread setting takes effect."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from multireg import _threads
from multireg._backend import _instance
from tests.conftest import BACKENDS

# ------------------------------------------------------------------ any NumPy layout (issue 12.9)

DTYPES = ["f8", "f4", "i4", "i8", "u1", "i2"]


@st.composite
def layouts(draw):
    """A NumPy array as users hand one over: any dtype and byte order, then a view of it with
    reversed or stepped axes, transposed, Fortran-ordered and/or read-only. Returns the array and
    a copy of its (untouched) base, to check afterwards that the adapter wrote nothing."""
    kind = draw(st.sampled_from(DTYPES))
    order = draw(st.sampled_from("<>"))
    dtype = np.dtype(order + kind)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    if dtype.kind == "f":
        elements = st.floats(-1e3, 1e3, width=8 * dtype.itemsize)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(int(info.min), -1000), min(int(info.max), 1000))
    base = draw(hnp.arrays(dtype, shape, elements=elements))
    if draw(st.booleans()):
        base = np.asfortranarray(base)
    steps = draw(st.tuples(*[st.sampled_from([1, -1, 2, -2])] * base.ndim))
    view = base[tuple(slice(None, None, s) for s in steps)]
    view = view.transpose(draw(st.permutations(range(view.ndim))))
    if draw(st.booleans()):
        view.flags.writeable = False
    return view, base.copy()


def _expected_dtype(a: np.ndarray) -> str:
    return {"f8": "float64", "f4": "float32"}.get(a.dtype.kind + str(a.dtype.itemsize), "float64")


def _adapter(name: str):
    if name == "array_api_strict":  # the NumPy backend on the strict namespace
        from multireg_numpy import NumpyBackend

        return NumpyBackend(xp=pytest.importorskip("array_api_strict"))
    return _instance(name)


@pytest.mark.parametrize("name", [*BACKENDS, "array_api_strict"])
@given(case=layouts())
def test_asarray_accepts_every_numpy_layout_and_never_writes_to_it(name, case):
    bk = _adapter(name)
    a, pristine = case
    writeable = a.flags.writeable
    x = bk.asarray(a)
    out = bk.to_numpy(x)
    assert str(x.dtype).rpartition(".")[2] == _expected_dtype(a)
    assert out.shape == a.shape
    np.testing.assert_array_equal(out, a.astype(_expected_dtype(a)))
    # the converted array computes like any other
    # (float32 sums of terms that cancel: the error scales with Σ|a|, not with the sum)
    scale = 2.0 * float(np.sum(np.abs(a), dtype=np.float64))
    np.testing.assert_allclose(
        float(bk.to_numpy(bk.xp.sum(x * 2.0))), 2.0 * float(np.sum(a, dtype=np.float64)),
        rtol=1e-6, atol=1e-6 * scale,
    )  # fmt: skip
    # and the user's array is as it was: values, flags
    base = a.base if a.base is not None else a
    np.testing.assert_array_equal(base, pristine)
    assert a.flags.writeable == writeable


def test_asarray_fair_orientation_on_every_backend(bk):
    """FAIR reads a picture as flipud(img).T: negative strides, a transposed view."""
    img = np.arange(12.0).reshape(3, 4)
    fair = img[::-1].T
    np.testing.assert_array_equal(bk.to_numpy(bk.asarray(fair)), fair)
    np.testing.assert_array_equal(bk.to_numpy(bk.asarray(fair, dtype="float32")), fair)


# ------------------------------------------------------------------ threads (issue 12.13)


def _python(code: str, **env: str | None) -> str:
    environ = dict(os.environ)
    # every variable that sets a thread count: torch also follows MKL_NUM_THREADS (1 with
    # OMP_NUM_THREADS=2 gives 1 thread), and a full run once had it set in this process
    for key in ("MULTIREG_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MULTIREG_BACKEND", "XLA_FLAGS"):  # fmt: skip
        environ.pop(key, None)
    environ.update({k: v for k, v in env.items() if v is not None})
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environ
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


TORCH_THREADS = """
    import multireg
    multireg.get_backend("torch")
    import torch
    print(torch.get_num_threads())
"""


def _needs(name: str) -> None:
    if name not in BACKENDS:
        pytest.skip(f"needs {name}")


def test_torch_uses_the_default_thread_count():
    _needs("torch")
    expected = _threads.default_threads()
    assert 1 <= expected <= _threads.MAX_DEFAULT
    assert _python(TORCH_THREADS) == str(expected)


def test_multireg_threads_sets_torch_threads():
    _needs("torch")
    assert _python(TORCH_THREADS, MULTIREG_THREADS="3") == "3"


def test_omp_num_threads_is_respected_when_multireg_threads_is_unset():
    _needs("torch")
    if _threads._cpus() < 2:
        pytest.skip("torch caps OMP_NUM_THREADS at the CPU count")
    assert _python(TORCH_THREADS, OMP_NUM_THREADS="2") == "2"  # not the default: the user's
    assert _python(TORCH_THREADS, OMP_NUM_THREADS="2", MULTIREG_THREADS="3") == "3"


def test_cli_threads_option_sets_torch_threads():
    _needs("torch")
    code = 'from multireg.cli import parse_command\nparse_command(["demo", "--threads", "3"])\n'
    assert _python(code + textwrap.dedent(TORCH_THREADS)) == "3"


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_multireg_threads_is_a_clear_error(bad, monkeypatch):
    monkeypatch.setenv("MULTIREG_THREADS", bad)
    with pytest.raises(ValueError, match="MULTIREG_THREADS must be a positive integer"):
        _threads.threads()


def test_jax_one_thread_turns_off_xla_multithreading():
    _needs("jax")
    code = """
        import os
        import multireg
        bk = multireg.get_backend("jax")
        print(float(bk.xp.sum(bk.asarray([1.0, 2.0]))), os.environ.get("XLA_FLAGS"))
    """
    assert _python(code, MULTIREG_THREADS="1") == "3.0 --xla_cpu_multi_thread_eigen=false"
    assert _python(code, MULTIREG_THREADS="2") == "3.0 None"  # XLA sizes its own pool


# ------------------------------------------------------------- torch's derivatives (issue 13.5)


def _torch_example(bk):
    """x, v, a function f with a constant factor (a plain tensor) and a scalar J of it."""
    import torch

    x = bk.asarray(np.linspace(0.5, 1.5, 6))
    v = bk.asarray(np.linspace(-1.0, 1.0, 6))
    c = bk.asarray(np.linspace(2.0, 3.0, 6))

    def f(z):
        return c * torch.sin(z) * z

    def J(z):
        return torch.sum(f(z) * z)

    return x, v, f, J


def test_torch_derivatives_run_no_python_decompositions():
    """torch's forward mode runs an operation between a dual tensor and a plain one (here the
    constant c) through Python reference decompositions (``prims::`` operations, ~250 µs each
    instead of ~3 µs); the adapter's jvp, hvp, jacobian and Hessian avoid it (reverse mode only).
    Counted with torch's profiler, not timed."""
    _needs("torch")
    import torch
    from torch.profiler import profile

    bk = _instance("torch")
    x, v, f, J = _torch_example(bk)

    with profile() as prof:
        out, jv = bk.jvp(f, x, v)
        hv = bk.hvp(J, x, v)
        jac = bk.jacobian(f)(x)
        hess = bk.hessian(J)(x)
    decomposed = {e.name for e in prof.events() if e.name.startswith("prims::")}
    assert not decomposed, sorted(decomposed)
    # and the values are those of forward mode
    ref_out, ref_jv = torch.func.jvp(f, (x,), (v,))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(jv, ref_jv)
    ref_hess = torch.func.hessian(J)(x)
    torch.testing.assert_close(hess, ref_hess)
    torch.testing.assert_close(hv, ref_hess @ v)
    torch.testing.assert_close(jac, torch.func.jacfwd(f)(x))


def test_compiled_kernels_receive_varying_numbers_as_arrays():
    """torch.compile specialises a Python float argument and compiles the kernel anew for each
    value: the line search's step lengths 1, ½, ¼, … hit its recompile limit of 8 on the
    homotopy (seen with TorchBackend(compile=True)). Step lengths and θ are therefore passed to
    compiled kernels as 0-d arrays (issue 13.2); checked by recording what the kernels get."""
    _needs("torch")
    from multireg_torch import TorchBackend

    from multireg.optimize.linesearch import armijo
    from multireg.problems.homotopy import homotopy

    floats = []

    class Recording(TorchBackend):
        def jit(self, f):
            def kernel(*args):
                floats.extend(a for a in args if isinstance(a, float))
                return f(*args)

            return kernel

    bk = Recording(threads=1)
    x, d = bk.asarray([1.0, 1.0]), bk.asarray([-10.0, -10.0])
    ls = armijo(bk, lambda z: bk.xp.sum(z * z), x, d, fun=2.0, slope=-40.0)
    assert ls.success and ls.trials > 3  # backtracked through several step lengths
    T = np.zeros((12, 12))
    T[3:7, 4:8] = 1.0
    R = np.roll(T, 2, axis=0)
    for predictor, step in (("tangent", "adaptive"), ("secant", "fixed")):
        homotopy(
            T, R, (0.0, 1.0, 0.0, 1.0), transform="translation", backend=bk,
            theta_range=(10.0, 0.1), n_steps=4, predictor=predictor, step=step,
        )  # fmt: skip
    assert floats == []
