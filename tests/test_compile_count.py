"""How many programs JAX traces for a registration (issue 13): hyper-parameters are data.

α, μ, λ (regulariser), θ (image model), NGF's edge and MI's ranges are passed to the compiled
kernels as arrays, so a second registration of the same shapes with other values traces and
compiles nothing new; only shapes, dtypes and the kind of transformation, image model, distance
and regulariser key a program. Counted with JAX's monitoring events (a trace is
``/jax/core/compile/jaxpr_trace_duration``, also for an eager operation, which JAX compiles
as a program of its own), never with seconds.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from multireg import register
from multireg.data import blobs

jax = pytest.importorskip("jax")

from jax import monitoring  # noqa: E402

TRACE = "/jax/core/compile/jaxpr_trace_duration"
_active: list[collections.Counter] = []


def _listener(name, seconds, fun_name=None, **kwargs):
    if name == TRACE:
        for counter in _active:
            counter[fun_name] += 1


monitoring.register_event_duration_secs_listener(_listener)


class traces:
    """``with traces() as c:``: c counts the jaxprs traced inside, by function name."""

    def __enter__(self) -> collections.Counter:
        self.counter = collections.Counter()
        _active.append(self.counter)
        return self.counter

    def __exit__(self, *exc) -> None:
        _active.remove(self.counter)


# Shapes of their own, so that the first registration here traces its programs afresh.
OMEGA = (0.0, 1.0, 0.0, 1.25)
T, DOMAIN = blobs((20, 24), OMEGA, n_blobs=5, seed=11)
R = np.roll(T, (1, -1), axis=(0, 1))


def _close(a, b):
    return np.allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_changing_alpha_mu_lam_traces_nothing_new():
    options = dict(transform="nonparametric", regularizer="elastic", levels=2, backend="jax")
    first = register(T, R, OMEGA, alpha=10.0, **options)
    with traces() as counted:
        other = register(T, R, OMEGA, alpha=40.0, mu=2.0, lam=0.5, **options)
        again = register(T, R, OMEGA, alpha=10.0, **options)
    assert sum(counted.values()) == 0, dict(counted)
    # the values reach the kernels: another α gives another map, the first α the first one
    assert not _close(other.y_grid, first.y_grid)
    assert _close(again.y_grid, first.y_grid)


def test_changing_theta_traces_nothing_new():
    options = dict(transform="affine", levels=2, backend="jax")
    first = register(T, R, OMEGA, theta=0.1, **options)
    with traces() as counted:
        other = register(T, R, OMEGA, theta=0.5, **options)
        zero = register(T, R, OMEGA, theta=0.0, **options)
        again = register(T, R, OMEGA, theta=0.1, **options)
    assert sum(counted.values()) == 0, dict(counted)
    assert not _close(other.w, first.w)
    assert not _close(zero.w, first.w)
    assert _close(again.w, first.w)


def test_changing_the_ngf_edge_traces_nothing_new():
    from multireg.distances import NGF

    options = dict(transform="rigid", levels=1, backend="jax")
    first = register(T, R, OMEGA, distance=NGF(edge=0.5), **options)
    with traces() as counted:
        other = register(T, R, OMEGA, distance=NGF(edge=5.0), **options)
    assert sum(counted.values()) == 0, dict(counted)
    assert other.distance != first.distance


@pytest.fixture
def no_kept_programs():
    """Cache off for the test (every program is traced in this process, none loaded), restored
    afterwards."""
    import multireg
    from multireg import _backend, _cache

    saved = _cache._override
    multireg.set_cache_dir(None)
    yield
    _cache._override = saved
    for bk in list(_backend._instances.values()):  # as set_cache_dir tells the live backends
        if hasattr(bk, "configure_cache"):
            bk.configure_cache()


def test_a_registration_runs_few_programs(no_kept_programs):
    """Every program is one more for a new process to load (or trace, lower and compile):
    a 2-level elastic registration runs, per level, its own kernels (set-up, J, ∇J with
    [J, ‖∇J‖], the GN pieces, the result) and three CG kernels, and no eager operation of
    its own (each of those is a program too). It ran 49 before issue 13.3's cuts, now 32."""
    shape = (18, 22)  # shapes no other test here uses: traced afresh
    T, _ = blobs(shape, OMEGA, n_blobs=5, seed=3)
    R = np.roll(T, (1, -1), axis=(0, 1))
    options = dict(transform="nonparametric", regularizer="elastic", alpha=10.0, backend="jax")
    with traces() as counted:
        register(T, R, OMEGA, levels=2, **options)
    eager = {"convert_element_type", "_identity_fn", "broadcast_in_dim", "diagonal", "negative"}
    assert not eager & set(counted), dict(counted)
    helpers = {"value_and_norm", "norm", "_jacobi", "_multiply"}  # fused into other kernels
    assert not helpers & set(counted), dict(counted)
    assert sum(counted.values()) <= 34, dict(counted)


def test_an_eager_spline_call_is_one_program_and_another_theta_is_none():
    """Called outside any compiled function, the interpolation functions run as one program
    each (an eager JAX call traced each of ~100 operations as a program of its own), and a
    second smoothing weight traces nothing new."""
    from multireg.grid import Domain
    from multireg.interpolation import linear_interpolate, spline_coefficients, spline_interpolate

    domain = Domain((0.0, 1.0, 0.0, 1.0, 0.0, 1.0), (5, 4, 3))
    rng = np.random.default_rng(3)
    data = jax.numpy.asarray(rng.standard_normal(domain.m))
    x = jax.numpy.asarray(rng.uniform(-0.1, 1.1, (17, 3)))
    with traces() as first:
        coef = spline_coefficients(data, 0.5)
        values = spline_interpolate(coef, domain, x)
        linear = linear_interpolate(data, domain, x)
    assert sum(first.values()) <= 8, first  # three programs and a few conversions
    with traces() as again:
        coef2 = spline_coefficients(data, 2.0)
        spline_interpolate(coef2, domain, x)
    assert sum(again.values()) == 0, again
    # the programs compute what NumPy's eager operations do
    data_np, x_np = np.asarray(data), np.asarray(x)
    reference = spline_interpolate(spline_coefficients(data_np, 0.5), domain, x_np)
    assert _close(values, reference)
    assert _close(linear, linear_interpolate(data_np, domain, x_np))
