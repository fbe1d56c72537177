"""Shared fixtures: every test runs on every installed backend.

The README's command runs the suite on two worker processes (pytest-xdist, ``-n 2``): JAX's
compilations are single-threaded and dominate a run on an empty cache.

``MULTIREG_BACKENDS=torch,jax`` narrows the set. Hypothesis runs derandomised under CI (the
``ci`` profile, chosen when ``CI`` is set) so that a CI failure reproduces exactly.
"""

from __future__ import annotations

import os

# The suite compiles ~7000 JAX programs and runs each for milliseconds: XLA's backend optimisation
# (LLVM -O3) is compile time the tests never win back (7 % of the registration tests' cold time).
# Kept programs are named with this setting (JaxBackend._environment): a user's are never used.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import multireg
from multireg._backend import _instance

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _selected() -> list[str]:
    names = list(multireg.available_backends())
    wanted = os.environ.get("MULTIREG_BACKENDS")
    if wanted:
        names = [n for n in names if n in {w.strip() for w in wanted.split(",")}]
    return names


@pytest.fixture
def restored_environ():
    """``os.environ`` put back as it was after the test. Starting a dask.distributed
    ``LocalCluster(processes=True)`` sets OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS
    to 1 in the *calling* process (each Nanny updates ``os.environ`` with its pre-spawn
    environment, config ``distributed.nanny.pre-spawn-environ``); without this, every test after
    a Dask test ran its subprocesses' torch and BLAS on one thread."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


BACKENDS = _selected()
AD_BACKENDS = [n for n in BACKENDS if _instance(n).differentiable]


@pytest.fixture(scope="session", params=BACKENDS)
def bk(request):
    """Every installed backend (forward-only ones included)."""
    return _instance(request.param)


@pytest.fixture(scope="session", params=AD_BACKENDS)
def ad_bk(request):
    """Every installed backend that differentiates."""
    return _instance(request.param)


@pytest.fixture(scope="session")
def one_ad_bk():
    """One differentiating backend, torch first (it compiles nothing): for the long algorithm
    tests whose agreement across backends other tests check on smaller problems."""
    if not AD_BACKENDS:
        pytest.skip("needs a differentiating backend")
    return _instance("torch" if "torch" in AD_BACKENDS else AD_BACKENDS[0])


@pytest.fixture(scope="session")
def strict_bk():
    """The NumPy reference backend running on array_api_strict (proves standard-only code)."""
    strict = pytest.importorskip("array_api_strict")
    from multireg_numpy import NumpyBackend

    return NumpyBackend(xp=strict)


@pytest.fixture(scope="session")
def np_bk():
    return _instance("numpy")


@pytest.fixture(scope="session")
def all_ad():
    """All differentiating backends at once, for cross-framework agreement tests."""
    if len(AD_BACKENDS) < 2:
        pytest.skip("needs two differentiating backends (torch and jax)")
    return [_instance(n) for n in AD_BACKENDS]


def rtol(dtype) -> float:
    """Default relative tolerance for a dtype: 4 sqrt(eps) (array-api-extra's default)."""
    name = str(dtype).rpartition(".")[2]
    return 4.0 * float(np.sqrt(np.finfo(name).eps))


def assert_close(bk, actual, expected, *, rtol=1e-10, atol=0.0):
    """Compare a backend array with a NumPy reference (relative to the reference's max norm)."""
    a = bk.to_numpy(actual) if not isinstance(actual, np.ndarray) else actual
    e = np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    scale = max(float(np.max(np.abs(e))) if e.size else 0.0, 1e-300)
    err = float(np.max(np.abs(a - e))) if e.size else 0.0
    assert err <= atol + rtol * scale, (
        f"max abs error {err:.3e} > {atol:.1e} + {rtol:.1e}*{scale:.3e}"
    )
